"""Run a Python script in this process and write its peak memory (MB) to a file, as JSON:

    python3 bench/peak_rss.py OUT.json test.py --data ...

  main_mb  peak resident memory of this process (VmHWM, counted from its own exec)
  tree_mb  peak of the proportional set size (PSS) of this process plus all its descendants (the
           data loader's processes), sampled every 0.1 s: what the run as a whole takes, pages
           shared between parent and forked workers counted once

Why not ru_maxrss from the parent: a child forked from a large process (the benchmark, with torch
and models loaded) inherits that process's high-water mark through the fork, so every child
reports at least the parent's size. And the sum of the processes' RSS would count the pages a
forked worker shares with its parent twice.
"""
import json
import os
import runpy
import sys
import threading
from pathlib import Path


def vm_hwm_mb():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024  # kB
    raise RuntimeError("/proc/self/status has no VmHWM")


def descendants(pid):
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    todo += [int(c) for c in f.read().split()]
        except OSError:  # gone meanwhile
            pass
    return out


def pss_mb(pid):
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


class TreeSampler(threading.Thread):
    """Peak over time of the PSS summed over this process and its descendants."""

    def __init__(self, every_s=0.1):
        super().__init__(daemon=True)
        self.every_s, self.peak, self.stop = every_s, 0.0, threading.Event()

    def run(self):
        me = os.getpid()
        while not self.stop.wait(self.every_s):
            self.peak = max(self.peak, sum(pss_mb(p) for p in descendants(me)))


if __name__ == "__main__":
    out, script, *args = sys.argv[1:]
    out = out.replace("{rank}", os.environ.get("RANK", "0"))  # under torchrun: one file per process
    sys.argv = [script, *args]
    sys.path[0] = str(Path(script).resolve().parent)  # as `python3 script` would have it
    sampler = TreeSampler()
    sampler.start()
    try:
        runpy.run_path(script, run_name="__main__")
    finally:
        sampler.stop.set()
        sampler.join()
        Path(out).write_text(json.dumps({"main_mb": round(vm_hwm_mb(), 1), "tree_mb": round(sampler.peak, 1)}) + "\n")
