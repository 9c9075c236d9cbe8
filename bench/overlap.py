"""Cost of the train / val overlap check (fgvc.overlap.find_overlap) on synthetic files.

    python3 bench/overlap.py --dir /tmp/overlap --train 100000 --val 10000

Writes TRAIN + VAL random files of 5,000 to 9,999 bytes under --dir (kept for the next run), so
that every val size is shared by about TRAIN / 5,000 train files: the worst case, where the head of
every file is read. No file overlaps. Prints the seconds of one check with a warm page cache
(run it twice for that: the first run also writes the files).
"""
import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]; sys.path.insert(0, str(ROOT))

import numpy as np

from fgvc.annotations import Split
from fgvc.overlap import find_overlap


def synthetic_split(root, name, n, rng):
    names = [f"{name}/{i // 1000}/{i}.jpg" for i in range(n)]
    for file_name in names:
        path = root / file_name
        if not path.is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(rng.bytes(int(rng.integers(5000, 10000))))
    return Split(name, root / f"{name}2019.json", root, np.arange(n), names, None, np.full((n, 2), -1))


def main(args):
    root = Path(args.dir) / f"{args.train}_{args.val}"
    rng = np.random.default_rng(0)
    train, val = synthetic_split(root, "train", args.train, rng), synthetic_split(root, "val", args.val, rng)
    t0 = time.perf_counter()
    found = find_overlap(train, [val])
    print(f"{args.train} train, {args.val} val files: {time.perf_counter() - t0:.2f} s, {len(found['val'])} overlaps "
          f"({os.cpu_count()} CPUs)", flush=True)


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dir", required=True, help="where the synthetic files are written (and kept)")
    p.add_argument("--train", type=int, default=100_000, help="train files (default: 100000)")
    p.add_argument("--val", type=int, default=10_000, help="val files (default: 10000)")
    main(p.parse_args())
