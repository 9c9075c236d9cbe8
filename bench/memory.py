"""Peak memory of test.py as the test split grows: it must stream, never hold all images.

Two datasets in the iNat layout, identical but for the number of test images (48 x 48 JPEGs; a
3-class train split of 12 images for the prior), a fine checkpoint of a randomly initialised
resnet18 (`fgvc.checkpoint.save_checkpoint`) and the coarse stage's masks file for each test split
(`fgvc.cam.save_masks`, 64 x 64 masks, the default). test.py runs as a subprocess with one crop
an image, no loader processes; its peak resident memory is its VmHWM (bench/peak_rss.py).
"""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np

from fgvc.cam import save_masks
from fgvc.checkpoint import save_checkpoint
from fgvc.models import build_model, model_args

ROOT = Path(__file__).resolve().parents[1]
CATEGORY_IDS = (3, 7, 11)
TEST_ID0 = 268243  # the first test id of iNat 2019
IMG_SIZE, MASK = 32, (64, 64)


def _jpegs(n, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        img = cv2.resize(rng.integers(0, 256, (6, 6, 3), dtype=np.uint8), (48, 48), interpolation=cv2.INTER_LINEAR)
        out.append(cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes())
    return out


def _box_masks(n, seed):
    """n masks of one random rectangle each (10-20 % of the image), uint8 0/1."""
    rng = np.random.default_rng(seed)
    h, w = MASK
    cy, cx = rng.integers(16, h - 16, n), rng.integers(16, w - 16, n)
    hy, hx = rng.integers(8, 14, n), rng.integers(8, 14, n)
    yy, xx = np.arange(h)[None, :, None], np.arange(w)[None, None, :]
    masks = np.empty((n, h, w), np.uint8)
    for s in range(0, n, 4096):
        e = slice(s, s + 4096)
        masks[e] = (abs(yy - cy[e, None, None]) < hy[e, None, None]) & (abs(xx - cx[e, None, None]) < hx[e, None, None])
    return masks


def make_fine_checkpoint(out_dir, arch="resnet18"):
    model = build_model("fine", arch, len(CATEGORY_IDS))
    path = Path(out_dir) / "checkpoint.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(path, model, None, None, 0, 0, 0, {"img_size": IMG_SIZE, "arch": arch},
                    model_args("fine", arch, len(CATEGORY_IDS), True), CATEGORY_IDS)
    return path.parent


def make_dataset(root, coarse, n_test):
    """A dataset root with `n_test` test images and the coarse dir with its masks (made once)."""
    root, coarse = Path(root), Path(coarse)
    stamp = {"n_test": n_test, "version": 1}
    if (root / "stamp.json").is_file() and json.loads((root / "stamp.json").read_text()) == stamp:
        return
    jpegs = _jpegs(8)
    cats = [{"id": c, "name": f"species {c}"} for c in CATEGORY_IDS]
    train, anns = [], []
    for i in range(4 * len(CATEGORY_IDS)):
        cid = CATEGORY_IDS[i % len(CATEGORY_IDS)]
        name = f"train_val2019/Plants/{cid}/{i:032x}.jpg"
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(jpegs[i % len(jpegs)])
        train.append({"id": i, "file_name": name, "width": 48, "height": 48, "license": 1})
        anns.append({"id": i, "image_id": i, "category_id": cid})
    (root / "train2019.json").write_text(json.dumps({"images": train, "annotations": anns, "categories": cats}))
    (root / "test2019").mkdir(parents=True, exist_ok=True)
    test = []
    for i in range(n_test):
        name = f"test2019/{i:032x}.jpg"
        (root / name).write_bytes(jpegs[i % len(jpegs)])
        test.append({"id": TEST_ID0 + i, "file_name": name, "width": 48, "height": 48, "license": 1})
    (root / "test2019.json").write_text(json.dumps({"images": test, "categories": cats}))
    coarse.mkdir(parents=True, exist_ok=True)
    save_masks(coarse / "masks_test.npz", TEST_ID0 + np.arange(n_test), _box_masks(n_test, seed=n_test))
    (root / "stamp.json").write_text(json.dumps(stamp))


def peak_rss_mb(cmd, log):
    """Run the Python script `cmd` ([script, args...]) through bench/peak_rss.py; returns (exit
    code, its peak RSS in MB, seconds)."""
    t0 = time.time()
    peak = Path(log).with_suffix(".peak")
    peak.unlink(missing_ok=True)
    # one thread: on a busy machine, OpenMP threads spinning against other processes cost minutes
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with open(log, "w") as f:
        rc = subprocess.run([sys.executable, str(ROOT / "bench" / "peak_rss.py"), str(peak), *map(str, cmd)],
                            stdout=f, stderr=subprocess.STDOUT, cwd=ROOT, env=env).returncode
    return rc, float(peak.read_text()) if peak.is_file() else float("nan"), time.time() - t0


def test_py_peak_rss(work, n_test, fine, amp="off", batch_size=32):
    """Peak RSS (MB) and wall time of test.py on a test split of `n_test` images."""
    root, coarse = Path(work) / f"data_{n_test}", Path(work) / f"coarse_{n_test}"
    make_dataset(root, coarse, n_test)
    sub = Path(work) / f"submission_{n_test}.csv"
    cmd = [ROOT / "test.py", "--data", str(root), "--coarse", str(coarse), "--fine", str(fine),
           "--device", "cpu", "--workers", "0", "--batch-size", str(batch_size), "--amp", amp,
           "--tta-factors", "1", "--tta-mirror-factors", "--submission", str(sub)]
    log = Path(work) / f"test_{n_test}.log"
    rc, mb, seconds = peak_rss_mb(cmd, log)
    if rc != 0:
        raise RuntimeError(f"test.py on {n_test} images exited {rc}; see {log}:\n{log.read_text()[-2000:]}")
    rows = sum(1 for _ in open(sub)) - 1
    if rows != n_test:
        raise RuntimeError(f"{sub}: {rows} rows for {n_test} test images")
    return mb, seconds
