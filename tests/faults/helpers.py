"""Fault injection (tests/faults/): interrupted runs, bad image files, hostile inputs, mismatches,
failed writes and a non-finite loss. Every case ends in a complete result, or in a one-line error
(exit code 2 for bad input, 1 for a failed write) with nothing half-written.

This module is what those tests share beyond tests/harness.py (which has the tiny runs' flags):
killing a run at a chosen moment, limiting how much it may write, and the bad files they are given
(harness.spoil writes the bad images). Their fixtures (`clean`, `spoiled`) are in tests/faults/conftest.py. There is no
__init__.py: pytest imports these files by their base name (tests/ and tests/faults/ on sys.path),
so a test file here must not share a name with one in tests/, and `helpers` is this file alone.

Kills and write limits need a real process: those cases run the stage scripts in a subprocess.
The others call the same entry point in-process (`cli.run(main, parser)` with sys.argv set),
which saves the interpreter start-up of every case.
"""
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from harness import ROOT

# fsync is slowed down in the child so that a checkpoint, masks or submission write lasts long
# enough for the parent to see its temporary file and kill the child in the middle of it.
SLOW_FSYNC = """
import os, runpy, stat, sys, time
_fsync = os.fsync
def _slow_fsync(fd):
    if not stat.S_ISDIR(os.fstat(fd).st_mode):
        time.sleep(0.3)
    _fsync(fd)
os.fsync = _slow_fsync
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def spawn(script, *args, log):
    return subprocess.Popen([sys.executable, "-c", SLOW_FSYNC, str(ROOT / script), *map(str, args)], cwd=ROOT,
                            stdout=log, stderr=subprocess.STDOUT)


def temps(d):
    d = Path(d)
    return {n for n in os.listdir(d) if n.endswith(".tmp")} if d.is_dir() else set()


def signature(path):
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_mtime_ns


def when_writing(d, n):
    """True once the n-th temporary file of this run has appeared in `d` (a write in progress)."""
    before, seen = temps(d), set()

    def ready():
        seen.update(temps(d) - before)
        return len(seen) >= n

    return ready


def after_save(path, delay):
    """True `delay` seconds after `path` was replaced (a save completed)."""
    first, at = signature(path), []

    def ready():
        if not at and signature(path) not in (first, None):
            at.append(time.monotonic())
        return bool(at) and time.monotonic() - at[0] >= delay

    return ready


def kill_when(proc, ready, log, timeout=180):
    """SIGKILL `proc` as soon as ready() holds; True if killed, False if it exited first."""
    t0 = time.monotonic()
    while proc.poll() is None:
        if ready():
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return True
        if time.monotonic() - t0 > timeout:
            proc.kill()
            proc.wait()
            raise AssertionError(f"no kill point within {timeout}s\n{Path(log.name).read_text()[-2000:]}")
        time.sleep(0.001)
    return False


def limited_writes(max_bytes):
    """preexec_fn: files cannot grow past max_bytes; the write fails with EFBIG (as on a full disk)."""

    def pre():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (max_bytes, max_bytes))

    return pre


def run_limited(script, *args, max_bytes):
    return subprocess.run([sys.executable, str(ROOT / script), *map(str, args)], cwd=ROOT, capture_output=True,
                          text=True, timeout=300, preexec_fn=limited_writes(max_bytes))


def masks_of(path):
    with np.load(path, allow_pickle=False) as f:
        return f["image_ids"], f["masks"]


def copy_dir(src, dst, names):
    dst.mkdir(parents=True)
    for n in names:
        shutil.copy2(src / n, dst / n)
    return dst


# ---------------------------------------------------------------- bad image files (harness.spoil writes them)

BAD_TRAIN = {0: "truncated", 9: "empty", 17: "text", 20: "directory"}
ODD_TRAIN = {1: "gray", 2: "gray16_png", 10: "cmyk", 18: "rgba_png", 21: "png_bytes"}
BAD_VAL, ODD_VAL = {0: "truncated"}, {4: "cmyk"}
BAD_TEST, ODD_TEST = {1: "empty", 5: "directory"}, {2: "png_bytes", 7: "gray16_png"}


# ---------------------------------------------------------------- hostile files

class RunsCode:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


# ---------------------------------------------------------------- bad dataset json

def edit_json(root, split, fn):
    path = Path(root) / f"{split}2019.json"
    doc = json.loads(path.read_text())
    fn(doc)
    path.write_text(json.dumps(doc))


def first_image_id(doc):
    return doc["images"][0]["id"]
