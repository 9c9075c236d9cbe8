"""Run a Python script in this process and write its peak resident memory (VmHWM, MB) to a file.

    python3 bench/peak_rss.py OUT.txt test.py --data ... 

Why not ru_maxrss from the parent: a child forked from a large process (the benchmark, with torch
and models loaded) inherits that process's high-water mark through the fork, so every child
reports at least the parent's size. VmHWM of this process is counted from its own exec.
"""
import runpy
import sys
from pathlib import Path


def vm_hwm_mb():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024  # kB
    raise RuntimeError("/proc/self/status has no VmHWM")


if __name__ == "__main__":
    out, script, *args = sys.argv[1:]
    sys.argv = [script, *args]
    sys.path[0] = str(Path(script).resolve().parent)  # as `python3 script` would have it
    try:
        runpy.run_path(script, run_name="__main__")
    finally:
        Path(out).write_text(f"{vm_hwm_mb():.1f}\n")
