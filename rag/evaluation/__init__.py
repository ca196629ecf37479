"""Evaluation and tuning (`hotline eval`, `hotline tune`, `hotline bench retrieval`): development tooling that the
answer path never imports. The labelled test set is in `evalset/`, the development questions in `devset/`."""

from rag.evaluation.evaluation import (DEFAULT_EVAL_SET, EvalCase, EvalReport, Metrics, evaluate, load_eval_set,
                                       with_asr_noise)
from rag.evaluation.report import eval_document, markdown_table

__all__ = ["DEFAULT_EVAL_SET", "EvalCase", "EvalReport", "Metrics", "eval_document", "evaluate", "load_eval_set",
           "markdown_table", "with_asr_noise"]
