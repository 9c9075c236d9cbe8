"""One measurement of bench/scale.py, in a process of its own (run through bench/peak_rss.py, which
records its peak memory). Writes {"seconds": ..., ...} to OUT as JSON.

    python3 bench/scale_probe.py OUT json DATA           json.load of the three split files
    python3 bench/scale_probe.py OUT json-dump SRC TMP   json.load + json.dump of SRC's files (prepare.py's floor)
    python3 bench/scale_probe.py OUT load DATA [check]   fgvc.annotations.load_dataset (with the file check: check)
    python3 bench/scale_probe.py OUT masks-write DIR N   N packed masks of 64 x 64 streamed into DIR/masks_train.npz
    python3 bench/scale_probe.py OUT masks-read DIR N    fgvc.masks.load_masks of that file
    python3 bench/scale_probe.py OUT workers DATA ROWS NAMES   the fine stage's dataset over ROWS images of
                                                         DATA's train split, 2 loader processes; NAMES: buffer
                                                         (FileNames, this repo) or list (a list of str, as before)
"""
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]; sys.path.insert(0, str(ROOT))

import numpy as np

from fgvc.annotations import SPLIT_FILES, Split, load_dataset

MASK = (64, 64)


def probe_json(data):
    for name in SPLIT_FILES.values():
        with open(Path(data) / name, "rb") as f:
            doc = json.load(f)
        del doc


def probe_json_dump(src, tmp):
    tmp = Path(tmp)
    tmp.mkdir(parents=True, exist_ok=True)
    for path in sorted(Path(src).glob("*.json")):
        with open(path, "rb") as f:
            doc = json.load(f)
        (tmp / path.name).write_text(json.dumps(doc, separators=(",", ":")))
        del doc


def probe_load(data, check=""):
    _, splits = load_dataset(data, check_files=check == "check")
    return {"images": sum(len(s) for s in splits.values())}


def fake_split(n):
    ids = np.arange(n, dtype=np.int64)
    return Split("train", None, Path("."), ids, [f"{i}.jpg" for i in range(n)], None, np.full((n, 2), -1, np.int64))


def probe_masks_write(out_dir, n):
    from fgvc.atomic import atomic_write
    from fgvc.masks import ROWS_PER_WRITE, packed_size, split_fingerprint, write_npz

    n, (h, w) = int(n), MASK
    from bench.memory import _box_masks

    block = np.packbits(_box_masks(ROWS_PER_WRITE, seed=0).reshape(ROWS_PER_WRITE, h * w), axis=1)  # one box, 10-20 % of the image
    assert block.shape[1] == packed_size(h, w)
    blocks = (block[: min(ROWS_PER_WRITE, n - s)] for s in range(0, n, ROWS_PER_WRITE))
    prov = {"fingerprint": split_fingerprint(fake_split(n)), "split": "train"}
    t0 = time.perf_counter()
    path = Path(out_dir) / "masks_train.npz"
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda f: write_npz(f, np.arange(n), (n, h, w), blocks, prov))
    return {"seconds": time.perf_counter() - t0, "file_mb": path.stat().st_size / 2**20}


def probe_masks_read(out_dir, n):
    from fgvc.masks import load_masks

    split = fake_split(int(n))
    t0 = time.perf_counter()
    masks = load_masks(out_dir, split)
    return {"seconds": time.perf_counter() - t0, "rows": len(masks)}


def private_mb(pid):
    """Private (copied or own) resident memory of a process: Private_Clean + Private_Dirty."""
    total = 0
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            if line.startswith(("Private_Clean:", "Private_Dirty:")):
                total += int(line.split()[1])
    return total / 1024


def probe_workers(data, rows, names):
    """Each loader process's private memory after its first batch and at the end of a pass over
    ROWS random rows of train (the fine stage's CropTransform with packed masks)."""
    import torch

    from fgvc.datasets import ImageDataset, make_loader
    from fgvc.masks import PackedMasks
    from fgvc.crop import CropTransform

    _, splits = load_dataset(data, splits=("train",), check_files=False)
    split = splits["train"]
    if names == "list":
        split.file_names = list(split.file_names)  # what Split held before: a list of str
    h, w = MASK
    masks = PackedMasks(np.packbits(np.ones((len(split), h * w), bool), axis=1), h, w)  # the whole image: a crop
    dataset = ImageDataset(split, CropTransform(32, train=True), 0, masks=masks)
    order = np.random.default_rng(0).permutation(len(split))[: int(rows)].tolist()
    torch.set_num_threads(1)
    it = iter(make_loader(dataset, 64, 2, "cpu", sampler=order))
    seen = len(next(it)[0])
    pids = [w.pid for w in it._workers]
    first = last = [private_mb(p) for p in pids]
    t0 = time.perf_counter()
    for step, batch in enumerate(it):
        seen += len(batch[0])
        if step % 10 == 0 and seen < len(order) - 64 * 4:  # the workers live until the last batches are out
            last = [private_mb(p) for p in pids]
    return {"seconds": time.perf_counter() - t0, "images": seen, "names": names, "split_images": len(split),
            "worker_private_mb_first": [round(v, 1) for v in first], "worker_private_mb_last": [round(v, 1) for v in last],
            "growth_mb": round(max(b - a for a, b in zip(first, last)), 1)}


PROBES = {"json": probe_json, "json-dump": probe_json_dump, "load": probe_load, "masks-write": probe_masks_write,
          "masks-read": probe_masks_read, "workers": probe_workers}

if __name__ == "__main__":
    out, kind, *args = sys.argv[1:]
    t0 = time.perf_counter()
    res = PROBES[kind](*args) or {}
    res.setdefault("seconds", time.perf_counter() - t0)
    Path(out).write_text(json.dumps(res) + "\n")
