"""Exception root of the retrieval-and-answer package."""


class RetrievalError(Exception):
    """Base class for every retrieval or answering failure."""


class InvalidQuestionError(RetrievalError):
    """The question cannot be answered as given (empty, too long, not text)."""


class CalibrationError(RetrievalError):
    """The calibration file (fusion weights and confidence model) cannot be read or does not fit this code."""
