"""Exception root of the telephony package."""


class TelephonyError(Exception):
    """Base class for every telephony, storage or server failure."""


class StorageError(TelephonyError):
    """The database could not be reached or refused an operation."""


class UnknownConversationError(TelephonyError):
    """A conversation id was given that the database does not hold."""
