"""Exceptions of mia-fast. Every message names the argument, what was expected and what it got."""


class MiaFastError(ValueError):
    """Base class: bad input, a bad file or a bad checkpoint."""


class InputError(MiaFastError):
    """A tensor or file of predictions that the defense cannot take."""


class CheckpointError(MiaFastError):
    """A checkpoint that is missing, corrupt, not ours, or does not fit the data."""
