"""Errors a user can fix: the CLI prints them on one line and exits non-zero."""
import sys


class UserError(Exception):
    """A problem with the input, the flags or the files: printed as one line, exit code 2."""

    code = 2


class DatasetError(UserError):
    """A dataset json file or image list is malformed; the message names the file and the entry."""


class CheckpointError(UserError):
    """A weights or checkpoint file is missing, unsafe, or does not match the command."""


class BadImagesError(UserError):
    """More unreadable images than the --max-bad-images budget allows."""


class NoReadableImages(UserError):
    """predict.py: not one of the given files could be read (each is listed); exit code 1."""

    code = 1


class SampleError(UserError):
    """Reading or transforming one image failed with an error that is not an unreadable file; the
    message names the file. A DataLoader worker's exception reaches the main process as
    `SampleError("Caught SampleError in DataLoader worker process 0.\nOriginal Traceback ...")`,
    whose last line is `fgvc.errors.SampleError: <message>`: only <message> is kept."""

    def __init__(self, message):
        marker = f"{__name__}.SampleError: "
        if "Original Traceback" in message and marker in message:
            message = message.rsplit(marker, 1)[1].strip()
        super().__init__(message)


class NonFiniteLoss(UserError):
    """The training loss became NaN or infinite."""


def fail(message, code):
    """Print `error: <message>` as one line on stderr and exit with `code`."""
    print(f"error: {message}", file=sys.stderr, flush=True)
    sys.exit(code)


def first_line(e, limit=200):
    """The first line of an exception's message (or any text), for one-line errors."""
    return (str(e).strip().splitlines() or [""])[0][:limit]


def last_line(e, limit=200):
    """The last line of an exception's message (or a process's stderr): where OpenCV and a
    failed command put the reason."""
    return (str(e).strip().splitlines() or [""])[-1][:limit]
