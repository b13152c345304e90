"""Errors that reach a user as one line; each names the file, key or command involved."""


class NstdError(Exception):
    """Base for errors shown to the user without a traceback."""


class ConfigError(NstdError):
    pass


class WeightsError(NstdError):
    pass


class ImageError(NstdError):
    """A photo or style image that cannot be used. Deterministic: retrying will not help."""


class JournalError(NstdError):
    """The journal cannot be used as it is (damaged, or not a journal)."""
