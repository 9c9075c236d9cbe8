"""Errors a user can fix: the CLI prints them on one line and exits non-zero."""


class UserError(Exception):
    """A problem with the input, the flags or the files: printed as one line, exit code 2."""


class DatasetError(UserError):
    """A dataset json file or image list is malformed; the message names the file and the entry."""


class CheckpointError(UserError):
    """A weights or checkpoint file is missing, unsafe, or does not match the command."""


class BadImagesError(UserError):
    """More unreadable images than the --max-bad-images budget allows."""


class NonFiniteLoss(UserError):
    """The training loss became NaN or infinite."""


def first_line(e, limit=200):
    """The first line of an exception's message, for one-line errors."""
    return (str(e).strip().splitlines() or [""])[0][:limit]
