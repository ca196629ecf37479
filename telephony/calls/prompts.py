"""Fixed sentences the call flow speaks (Simplified Chinese, written for the ear; the centre's name is settings)."""

GREETING = "您好，这里是{centre}智能语音助手。我是AI助手，不是人工。请直接说出您要咨询的社保业务，需要人工服务请随时说“转人工”。"
ANYTHING_ELSE = "请问还有其他问题吗？"
REPEAT_PLEASE = "抱歉，我没有听清，请您再说一遍。"
SILENCE_REPROMPT = "您还在吗？请直接说出您要咨询的问题。"
SILENCE_GOODBYE = "很久没有听到您的声音，本次通话先结束了。如有需要请再次来电，再见。"
GOODBYE = "感谢您的来电，再见。"
MAX_LENGTH_GOODBYE = "本次通话时间比较长，先为您结束通话。还有问题可以再次来电或说转人工，再见。"
NOTHING_TO_REPEAT = "请直接说出您要咨询的问题。"
# Said (from the prerendered cache) in place of a sentence no speech engine could render, so the caller is never left in
# silence and what follows (the SMS offer, 「还有其他问题吗」) still makes sense.
SPEECH_FAILED = "抱歉，这段回答暂时无法播放。需要的话可以把办事指南发短信给您，或者说转人工。"
HANDOFF_REGISTERED = "已为您登记人工服务，工作人员会按您的来电号码尽快回电，请保持电话畅通。再见。"
# No ASR and no keypad menu to offer (the menu file did not load): the caller goes straight to a person (dialogue.py).
VOICE_UNAVAILABLE = "您好，这里是{centre}。抱歉，语音识别暂时不可用，为您转人工服务。"
# The second reply in a row that would ask the caller to say it again hands off instead (dialogue.py).
MISUNDERSTOOD_HANDOFF = "抱歉，我还是没听明白。为了不耽误您，我帮您转人工服务。"

# A caller in crisis after hours hears these after the engine's reply and before the ticket's closing. National
# numbers only: 110 police, 120 medical emergency, and 12356, the national psychological assistance hotline set up
# by the National Health Commission (国家卫生健康委《关于应用“12356”全国统一心理援助热线电话号码的通知》, announced
# 2024-12-25: in service around New Year 2025, every province connected by 2025-05-01; the notice asks for at least
# 18 hours of service a day, not 24, hence 110 and 120 for danger to life). Sources: docs/handoff.md. Digits are
# written as said (幺 for 1) so every TTS reads them one by one.
CRISIS_SELF_HARM_AFTER_HOURS = ("现在不是上班时间，人工服务暂时没人接听。您要是心里很难受，"
                                "请拨打全国统一的心理援助热线，幺二三五六，幺二三五六。"
                                "如果有生命危险，请马上拨打幺幺零或者幺二零。")
CRISIS_ACCIDENT_AFTER_HOURS = ("现在不是上班时间，人工服务暂时没人接听。有人受伤的，请马上拨打急救电话幺二零；"
                               "现场还有危险的，请拨打报警电话幺幺零。")

# The keypad menu (telephony/calls/keypad.py): its areas, services and labels are kb/keypad_menu.yaml; a prompt is a
# lead sentence followed by the options of the level, each said (and cached) on its own.
GREETING_KEYPAD = "您好，这里是{centre}智能语音助手。语音识别暂时不可用，请用电话按键选择："
MENU_CHOOSE = "请按键选择："
MENU_AREA = "{label}，请按键选择："
MENU_UNHEARD = "抱歉，我没有听清。请用电话按键选择："
MENU_NO_SUCH_KEY = "没有这个选项。请按键选择："
MENU_OPTION = "{key} {label}"
MENU_TOP_END = "0 人工。"
MENU_AREA_END = "9 返回上一级，0 人工。"
MENU_AFTER_SERVICE = "重听请按星号，返回主菜单请按9，人工请按0。"
SMS_OFFER_KEYS = "需要把完整的办事指南和政策依据发到您的手机上吗？需要请按1，不需要请按2。"

# The SMS offer (telephony/calls/sms_offer.py). Numbers are read digit by digit, grouped 3-4-4.
SMS_OFFER = "需要把完整的办事指南和政策依据发到您的手机上吗？需要请说“需要”，或按1。"
SMS_SENT = "好的，短信已发到您尾号{tail}的手机，请注意查收。"
SMS_DECLINED = "好的，不发短信。"
SMS_ASK_NUMBER = "您的来电号码不是手机号码。请说出接收短信的11位手机号码，也可以在键盘上输入，按井号键结束。"
SMS_ASK_NUMBER_AGAIN = "请再说一遍11位手机号码，也可以在键盘上输入，按井号键结束。"
SMS_CONFIRM_NUMBER = "您的手机号码是：{digits}。对吗？对请说“对”或按1，不对请直接说正确的号码。"
SMS_BAD_NUMBER = "这个号码不像手机号码，请再说一遍11位手机号码。"
SMS_NUMBER_GIVE_UP = "抱歉，没有记下您的手机号码，这次先不发短信了。"
SMS_RESENT = "好的，已经重新发到您尾号{tail}的手机。"
SMS_NOTHING_TO_RESEND = "这次通话还没有发过短信。"
SMS_LIMIT = "抱歉，这个号码今天的短信已经达到上限，暂时不能再发。"
SMS_UNAVAILABLE = "抱歉，短信暂时发不出去。完整的办事指南可以拨打{phone}咨询。"
HANDOFF_REGISTERED_SMS = ("已为您登记人工服务，登记号是{ticket}，登记号已用短信发到您的手机。工作人员会按您的来电号码尽快回电，"
                          "请保持电话畅通。再见。")

# Waiting for an agent in office hours (telephony/handoff/acd.py): the place in the queue, refreshed every 30 s.
QUEUE_POSITION = "正在为您转接人工服务，您前面还有{ahead}位来电，请稍候。"
QUEUE_NEXT = "正在为您转接人工服务，马上就到您，请稍候。"
# No agent took the call: what the caller hears before the callback ticket's sentence.
QUEUE_TIMEOUT = "抱歉，工作人员都在忙，暂时无法接听。"
NO_AGENT = "抱歉，现在没有工作人员可以接听。"
AGENT_LOST = "抱歉，和工作人员的通话中断了。"
TRANSFER_FAILED = "抱歉，暂时无法转接。"
# The ticket's sentence when no SMS confirms its number, and when the line gave no caller ID to call back.
HANDOFF_REGISTERED_NUMBER = "已为您登记人工服务，登记号是{ticket}。工作人员会按您的来电号码尽快回电，请保持电话畅通。再见。"
HANDOFF_NO_CALLER_ID = ("已为您登记人工服务，登记号是{ticket}。因为没有获取到您的来电号码，工作人员无法回电，"
                        "请您在工作时间再次来电，并报出登记号。再见。")
