"""Atomic file writes: the target holds either its previous complete content or the new one."""
import os
import tempfile
from pathlib import Path


def atomic_write(path, write, mode="wb"):
    """Call `write(f)` on a temporary file next to `path`, fsync it, then rename it over `path`.

    A crash, a kill or a failed write (e.g. disk full) leaves `path` as it was and no temp file
    behind (unless the process is killed outright; stale `.<name>.*.tmp` files are harmless).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
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
