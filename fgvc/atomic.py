"""Atomic file writes: the target holds either its previous complete content or the new one."""
import os
import tempfile
from pathlib import Path

_UMASK = os.umask(0)
os.umask(_UMASK)


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by someone else
        return True
    return True


def remove_stale_temps(path):
    """Delete `.<name>.<pid>.*.tmp` files next to `path` left by processes that were killed mid-write."""
    path = Path(path)
    prefix = f".{path.name}."
    try:
        names = os.listdir(path.parent)
    except OSError:
        return
    for name in names:
        if not (name.startswith(prefix) and name.endswith(".tmp")):
            continue
        pid = name[len(prefix) :].split(".", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            try:
                os.unlink(path.parent / name)
            except OSError:
                pass


def atomic_write(path, write, mode="wb"):
    """Call `write(f)` on a temporary file next to `path`, fsync it, then rename it over `path`.

    A crash, a kill or a failed write (e.g. disk full) leaves `path` as it was. A failed write
    removes its temporary file and raises OSError naming `path`; the temporary file of a killed
    process (`.<name>.<pid>.*.tmp`) is removed by the next write of the same file. The new file
    gets the mode of the one it replaces, or the usual 0666 & ~umask.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path)
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
        os.replace(tmp, path)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        if isinstance(e, OSError) and e.filename in (None, tmp):
            raise OSError(e.errno, f"cannot write it: {e.strerror or e}", str(path)) from e
        raise
    try:  # make the rename itself durable
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass
    return path
