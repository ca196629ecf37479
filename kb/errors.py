"""Exception root of the knowledge-base package."""


class KbError(Exception):
    """Base class for every knowledge-base failure."""


class KbFileError(KbError):
    """An item file could not be read or does not follow the item format."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path = path
        self.message = message
