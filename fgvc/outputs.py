"""What a run writes: checked against what it reads, and locked for the whole run.

Each stage calls `claim(out_dir, writes, reads, splits)` once, after reading the dataset and
before any other work. It refuses, with one line (exit 2) and nothing written:

- an output that resolves (symlinks followed) to one of the run's inputs: a dataset json file,
  an image of a split it reads, --pretrained, a checkpoint or masks file it reads; or to another
  of its outputs;
- an output that exists and is not a regular file (a FIFO, a device node, a directory; the
  TensorBoard folder must be a folder), or an output directory that is not one;
- an output directory (or file) locked by another run.

Then it holds an exclusive lock (`fcntl.flock`, released by the kernel when the process dies)
until the run ends: on `<out_dir>/.lock`, and on `<dir>/.<name>.lock` for each written file
outside `out_dir` (test.py's --submission, a --figure elsewhere). The lock file names its holder:
pid, host, start time, command. Whoever takes a lock removes the temporary files of killed atomic
writes there (`atomic.remove_temps`): a live run's temporary file is under a lock it holds (the
directory's, or its file's), so it is never touched. Under torchrun only rank 0 writes, so only rank 0 locks; every rank learns
whether it could.
"""
import fcntl
import os
import stat
import sys
import time
from pathlib import Path
from socket import gethostname

from . import dist
from .atomic import kind_of, remove_temps, target
from .errors import UserError
from .paths import resolve

LOCK = ".lock"
_held = []  # (fd, lock file, directories this run created) of this process


def claim(out_dir, writes, reads=(), splits=(), folders=()):
    """Check a run's outputs against its inputs, then lock them for the run (see the module doc).

    out_dir: the run's output directory (None: test.py, which writes single files);
    writes, folders: [(label, path)] of the files and folders it writes;
    reads: [(label, path or None)] of the files it reads besides the splits' json and images;
    splits: the dataset splits it reads.
    """
    release()  # one run per process: an earlier run in this process (in-process tests) is over
    out_dir = resolve(out_dir) if out_dir is not None else None
    writes = [(label, resolve(p)) for label, p in writes]
    folders = [(label, resolve(p)) for label, p in folders]
    check(out_dir, writes, folders, reads, splits)
    error = None
    if dist.is_main():
        try:
            if out_dir is not None:
                _lock(out_dir, out_dir / LOCK, f"--out {out_dir}")
                remove_temps(out_dir, busy=lambda name: _locked_elsewhere(out_dir / f".{name}.lock"))
            for label, p in writes:
                real = target(p)
                if out_dir is None or not _under(real, os.path.realpath(out_dir)):
                    _lock(real.parent, real.parent / f".{real.name}.lock", f"{label} {p}")
                    remove_temps(real.parent, real.name)
        except UserError as e:
            release()
            error = str(e)
    error = dist.broadcast_object(error)
    if error:
        raise UserError(error)


def release():
    """Unlock what this process holds; remove the directories it created for nothing."""
    while _held:
        fd, lock, created = _held.pop()
        try:
            os.unlink(lock)  # while still locked: a waiting run re-checks the file it locked
        except OSError:
            pass
        os.close(fd)
        _remove_dirs(created)


# ---------------------------------------------------------------- the checks

def check(out_dir, writes, folders, reads, splits):
    reads = [(label, resolve(p)) for label, p in reads if p is not None]
    reads += [(f"the dataset file {s.json_path.name}", s.json_path) for s in splits]
    inputs = {}
    for label, p in reads:
        inputs.setdefault(os.path.realpath(p), f"{label} {p}")
    if out_dir is not None and out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"--out {out_dir}: exists and is not a directory")
    images = _Images(splits)
    mine = {}
    for label, p in writes + folders:
        real = os.path.realpath(p)
        via = "" if real == str(p) else f" (resolves to {real})"
        read = inputs.get(real) or images.find(p, real)
        if read:
            raise UserError(f"{label} {p}{via} is an input of this run, {read}: refusing to overwrite it; choose another path")
        if real in mine:
            raise UserError(f"{label} {p}{via} is also {mine[real]}, which this run writes: choose another path")
        mine[real] = f"{label} {p}"
    for label, p in writes:
        try:
            target(p)
        except UserError as e:
            raise UserError(f"{label}: {e}") from None
    for label, p in folders:
        try:
            mode = os.stat(p).st_mode
        except FileNotFoundError:
            continue
        if not stat.S_ISDIR(mode):
            raise UserError(f"{label} {p} is {kind_of(mode) or 'a regular file'}, not a directory")


def _under(path, root):
    """`path` relative to `root` (both strings) as a posix string, or None if outside it."""
    rel = os.path.relpath(path, root)
    return None if rel == ".." or rel.startswith("../") or os.path.isabs(rel) else Path(rel).as_posix()


class _Images:
    """Is a path one of the splits' image files? Compared by name (the path relative to the
    dataset root, resolved or not, or relative to a symlinked top-level folder of it) against the
    json's file names: no system call per image; the names are only indexed (0.6 s for 300,000)
    when an output lies under the root."""

    def __init__(self, splits):
        self.splits = list(splits)
        self.names = {}

    def find(self, path, real):
        for s in self.splits:
            candidates = {_under(os.path.abspath(path), os.path.abspath(s.root)), _under(real, os.path.realpath(s.root))}
            if not any(candidates):  # outside the root: a symlinked folder of it may still lead there
                for top, top_real in self._tops(s).items():
                    rel = _under(real, top_real)
                    candidates.add(None if rel in (None, ".") else f"{top}/{rel}")
            candidates.discard(None)
            if candidates and not candidates.isdisjoint(self._names(s)):
                return f"an image of {s.json_path.name} under {s.root}"
        return None

    def _names(self, split):
        if (split.name, "names") not in self.names:
            self.names[split.name, "names"] = {os.path.normpath(n).replace("\\", "/") for n in split.file_names}
        return self.names[split.name, "names"]

    def _tops(self, split):
        """{name: resolved path} of the symlinks at the top of the dataset root (one listing)."""
        if (split.name, "tops") not in self.names:
            try:
                links = [e.name for e in os.scandir(split.root) if e.is_symlink()]
            except OSError:
                links = []
            self.names[split.name, "tops"] = {t: os.path.realpath(split.root / t) for t in sorted(links)}
        return self.names[split.name, "tops"]


# ---------------------------------------------------------------- the lock

def _make_dirs(path):
    """mkdir -p; returns the directories it created, outermost first."""
    created = []
    for d in [p for p in [Path(path), *Path(path).parents] if not p.exists()][::-1]:
        try:
            os.mkdir(d)
            created.append(d)
        except FileExistsError:
            pass
        except OSError:
            _remove_dirs(created)
            raise
    return created


def _lock(directory, lock, what):
    """Lock `lock` in `directory` (created if need be) for this run, or raise a UserError."""
    try:
        created = _make_dirs(directory)
        try:
            fd = _open_locked(lock, what)
        except BaseException:
            _remove_dirs(created)
            raise
        _held.append((fd, lock, created))  # from here on, release() undoes it all
        started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {gethostname()}, started {started}: {' '.join(sys.argv)[:300]}\n".encode(), 0)
    except OSError as e:
        raise UserError(f"{what}: cannot write into {e.filename or directory} ({e.strerror})") from None


def _remove_dirs(created):
    for d in reversed(created):
        try:
            os.rmdir(d)  # only if empty: the run wrote nothing there
        except OSError:
            break


def _locked_elsewhere(lock):
    """Is `lock` held by another run (test.py writing its submission into this directory)?"""
    try:
        fd = os.open(lock, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


def _open_locked(lock, what):
    """The file descriptor of `lock`, created if need be, under an exclusive flock."""
    for _ in range(100):
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise UserError(f"{what}: its lock file {lock} is not a regular file")
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 4096, 0).decode(errors="replace").strip() or "a run that is starting"
            os.close(fd)
            raise UserError(f"{what} is in use by another run, {holder} (lock {lock}): "
                            "wait for it to end or choose another path") from None
        try:
            st, mine = os.stat(lock, follow_symlinks=False), os.fstat(fd)
            if (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino):
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)  # its previous holder removed it between our open and our lock: again
    raise UserError(f"{what}: could not lock {lock}")
