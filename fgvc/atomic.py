"""Atomic file writes: the target holds either its previous complete content or the new one.

`atomic_write(path, ...)` writes a temporary file `.<name>.<pid>.<random>.tmp` next to the
target, fsyncs it and renames it over the target. It replaces only what is ours to replace:

- a target that exists and is not a regular file (a device node, a FIFO, a socket, a directory)
  is refused with a one-line UserError before anything is written: `--submission /dev/null` must
  never replace the system's /dev/null with a CSV;
- a symlink is written *through*: the final component is resolved and the same rule applies to
  what it points to (a link to a regular file, or to nothing yet, gets the new content at the
  link's target, and the link stays a link; a link to a FIFO is refused). A symlinked output
  file behaves like a symlinked output folder, as `>` does in the shell.

The temporary file of a process killed mid-write is not removed here: pid numbers cannot tell
a dead writer from a live one across containers and pid namespaces. Whoever holds the lock of the
output directory (or file) removes them at start with `remove_temps` (see outputs.py).
"""
import os
import re
import signal
import stat
import tempfile
from pathlib import Path

from .errors import UserError

_UMASK = os.umask(0)
os.umask(_UMASK)

# `.<name>.<pid>.<mkstemp's random part>.tmp`
TEMP = re.compile(r"^\.(?P<name>.+)\.\d+\.[A-Za-z0-9_]+\.tmp$")

_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"), (stat.S_ISLNK, "a symlink loop"))


def kind_of(mode):
    """'a FIFO', 'a directory', ... for a stat mode that is not a regular file; None for a regular file."""
    if stat.S_ISREG(mode):
        return None
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


def target(path):
    """Where a write to `path` lands: `path` with a symlink in its final component followed.

    Raises UserError if that exists and is not a regular file."""
    path = Path(path)
    real = Path(os.path.realpath(path))
    try:
        mode = os.lstat(real).st_mode
    except FileNotFoundError:
        return real
    except OSError as e:  # ELOOP, EACCES on the way
        raise UserError(f"{path}: cannot write there ({e.strerror})") from None
    kind = kind_of(mode)
    if kind:
        via = f" (via the symlink {path})" if real != Path(os.path.abspath(path)) else ""
        raise UserError(f"{real}{via} is {kind}, not a regular file: refusing to replace it")
    return real


def remove_temps(directory, name=None, busy=lambda name: False):
    """Delete the temporary files of atomic writes in `directory` (only those of target `name`,
    if given; never those of a target for which `busy(target name)` holds). Call it only while
    holding the lock of that directory (or file): a live writer's temporary file is
    indistinguishable from a dead one's by its name alone. Returns their names."""
    removed = []
    try:
        names = os.listdir(directory)
    except OSError:
        return removed
    for n in sorted(names):
        m = TEMP.match(n)
        if m and (name is None or m["name"] == name) and not busy(m["name"]):
            try:
                p = Path(directory) / n
                if stat.S_ISREG(os.lstat(p).st_mode):
                    os.unlink(p)
                    removed.append(n)
            except OSError:
                pass
    return removed


def _write_temp(path, write, mode):
    """Write `write(f)` to a fsynced temporary file next to `path`'s target: (temporary, target)."""
    given, path = path, target(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        perm = path.stat().st_mode & 0o7777
    except OSError:
        perm = 0o666 & ~_UMASK
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode) as f:
            os.fchmod(f.fileno(), perm)
            write(f)
            f.flush()
            os.fsync(f.fileno())
    except BaseException as e:
        _unlink(tmp)
        if isinstance(e, OSError) and e.filename in (None, tmp):
            raise OSError(e.errno, f"cannot write it: {e.strerror or e}", str(given)) from e
        raise
    return tmp, path


def _unlink(tmp):
    try:
        os.unlink(tmp)
    except FileNotFoundError:
        pass


def _sync_dir(directory):
    """Make renames in `directory` durable."""
    try:
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass


def atomic_write(path, write, mode="wb"):
    """Call `write(f)` on a temporary file next to `path`'s target, fsync it, then rename it over.

    A crash, a kill or a failed write (e.g. disk full) leaves the target as it was. A failed write
    removes its temporary file and raises OSError naming `path`. A target that is not a regular
    file is refused (UserError) before anything is written; a symlink is written through. The new
    file gets the mode of the one it replaces, or the usual 0666 & ~umask. Returns the target.
    """
    tmp, path = _write_temp(path, write, mode)
    try:
        os.replace(tmp, path)
    except BaseException:
        _unlink(tmp)
        raise
    _sync_dir(path.parent)
    return path


class AtomicGroup:
    """Files replaced as one: a set of outputs that belong together (the masks of every split).

        with AtomicGroup() as group:
            group.write(path_a, write_a)   # to a temporary file, fsynced
            group.write(path_b, write_b)
        # all renamed over their targets here, only if the block ended without an exception

    An exception (a full disk, a signal turned into an exception) inside the block removes the
    temporary files and leaves every target as it was. The renames at the end run with SIGINT,
    SIGTERM and SIGUSR1 held back (delivered right after), so a signal cannot land between them;
    a SIGKILL or a power cut there can, and readers of such a group check that its files agree
    (e.g. one run id in every masks file, fgvc/masks.py)."""

    def __init__(self):
        self.staged = []  # (temporary, target)

    def write(self, path, write, mode="wb"):
        self.staged.append(_write_temp(path, write, mode))
        return self.staged[-1][1]

    def __enter__(self):
        return self

    def __exit__(self, kind, value, tb):
        if kind is not None:
            for tmp, _ in self.staged:
                _unlink(tmp)
            return False
        held = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)
        old = signal.pthread_sigmask(signal.SIG_BLOCK, held)
        try:
            for n, (tmp, path) in enumerate(self.staged):
                try:
                    os.replace(tmp, path)
                except BaseException:
                    for t, _ in self.staged[n:]:
                        _unlink(t)
                    raise
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)
        for directory in {path.parent for _, path in self.staged}:
            _sync_dir(directory)
        return False
