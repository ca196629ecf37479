"""Fixed caller-facing sentences of the answer layer (Simplified Chinese, written for the ear)."""

HANDOFF_REQUESTED = "好的，马上为您转接人工服务，请稍候。"
NOT_SURE = "抱歉，这个问题我没有把握答准确，为了不耽误您，我帮您转人工服务。"
EMPTY_QUESTION = "抱歉，我没有听清您的问题，请您再说一遍。"
