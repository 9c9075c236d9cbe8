"""Peak memory of test.py as the test split grows, run as users run it: it must stream.

Datasets in the iNat layout, identical but for the number of test images: the test images are
copies of the benchmark's 800 px JPEGs in turn (each its own file, as in a real dataset: the
page cache sees every one), a 3-class train split of 12 images for the prior, and the coarse
stage's masks file for the test split (`fgvc.masks.save_masks`, 64 x 64 masks, the default).
Checkpoints of randomly initialised models of each kind (`fgvc.checkpoint.save_checkpoint`).
test.py runs as a subprocess with data loader processes (`--workers`, default 2), `--model coarse`
on whole images or `--model fine` on crops. Reported:
  main_mb    peak resident memory of the main process (VmHWM; bench/peak_rss.py)
  tree_mb    peak PSS of the main process plus its loader processes, sampled (bench/peak_rss.py)
  cached_mb  the test images' pages left in the page cache after the run (`fincore`; the test
             files are dropped from the cache before it): what a container's memory accounting
             (cgroups) charges to the run besides the processes
  total_mb   tree_mb + cached_mb
"""
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from fgvc.checkpoint import save_checkpoint
from fgvc.masks import save_masks
from fgvc.stages import build_model, model_args

ROOT = Path(__file__).resolve().parents[1]
CATEGORY_IDS = (3, 7, 11)
TEST_ID0 = 268243  # the first test id of iNat 2019
MASK = (64, 64)


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


def make_checkpoint(out_dir, kind, img_size, arch="resnet18"):
    """A checkpoint of a randomly initialised `kind` model in `out_dir`; returns the directory."""
    model = build_model(kind, arch, len(CATEGORY_IDS))
    path = Path(out_dir) / "checkpoint.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(path, model, args={"img_size": img_size, "arch": arch},
                    model_args=model_args(kind, arch, len(CATEGORY_IDS), True), class_ids=CATEGORY_IDS)
    return path.parent


def _link(src, dst):
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:  # another file system: a copy
        shutil.copyfile(src, dst)


def _drop_from_cache(paths):
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def cached_mb(paths, chunk=2000):
    """MB of `paths` resident in the page cache (util-linux `fincore`; None where it is missing)."""
    if shutil.which("fincore") is None:
        return None
    total = 0
    for s in range(0, len(paths), chunk):
        out = subprocess.run(["fincore", "--bytes", "--noheadings", "--output", "RES", *map(str, paths[s : s + chunk])],
                             capture_output=True, text=True, check=True).stdout
        total += sum(int(v) for v in out.split())
    return total / 2**20


def make_dataset(root, coarse, n_test, sources):
    """A dataset root with `n_test` test images (copies of `sources` in turn) and the coarse dir
    with its masks file (made once; a stamp records how). Returns the test images' paths."""
    root, coarse = Path(root), Path(coarse)
    stamp = {"n_test": n_test, "sources": [str(s) for s in sources], "version": 3}
    tests = [root / f"test2019/{i:032x}.jpg" for i in range(n_test)]
    if (root / "stamp.json").is_file() and json.loads((root / "stamp.json").read_text()) == stamp:
        return tests
    shutil.rmtree(root, ignore_errors=True)
    cats = [{"id": c, "name": f"species {c}"} for c in CATEGORY_IDS]
    train, anns = [], []
    for i in range(4 * len(CATEGORY_IDS)):
        cid = CATEGORY_IDS[i % len(CATEGORY_IDS)]
        name = f"train_val2019/Plants/{cid}/{i:032x}.jpg"
        _link(sources[i % len(sources)], root / name)
        train.append({"id": i, "file_name": name, "license": 1})
        anns.append({"id": i, "image_id": i, "category_id": cid})
    (root / "train2019.json").write_text(json.dumps({"images": train, "annotations": anns, "categories": cats}))
    test = []
    for i, path in enumerate(tests):
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(sources[i % len(sources)], path)
        test.append({"id": TEST_ID0 + i, "file_name": str(path.relative_to(root)), "license": 1})
    (root / "test2019.json").write_text(json.dumps({"images": test, "categories": cats}))
    coarse.mkdir(parents=True, exist_ok=True)
    save_masks(coarse / "masks_test.npz", TEST_ID0 + np.arange(n_test), _box_masks(n_test, seed=n_test))
    (root / "stamp.json").write_text(json.dumps(stamp))
    return tests


def peak_rss_mb(cmd, log):
    """Run the Python script `cmd` ([script, args...]) through bench/peak_rss.py; returns (exit
    code, {"main_mb", "tree_mb"}, seconds)."""
    t0 = time.time()
    peak = Path(log).with_suffix(".peak")
    peak.unlink(missing_ok=True)
    # one thread: on a busy machine, OpenMP threads spinning against other processes cost minutes
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with open(log, "w") as f:
        rc = subprocess.run([sys.executable, str(ROOT / "bench" / "peak_rss.py"), str(peak), *map(str, cmd)],
                            stdout=f, stderr=subprocess.STDOUT, cwd=ROOT, env=env).returncode
    nan = {"main_mb": float("nan"), "tree_mb": float("nan")}
    return rc, json.loads(peak.read_text()) if peak.is_file() else nan, time.time() - t0


def test_py_peak_rss(work, n_test, kind, checkpoints, sources, workers=2, batch_size=16, amp="off"):
    """Peak memory ({"main_mb", "tree_mb", "cached_mb", "total_mb"}, module docstring) and wall
    time of `test.py --model kind` on a test split of `n_test` images. checkpoints: {"coarse": dir,
    "fine": dir}. The fine model scores one crop an image (the 16 default crops would only
    multiply the model's time)."""
    work = Path(work)
    root, coarse = work / f"data_{n_test}", work / f"coarse_{n_test}"
    tests = make_dataset(root, coarse, n_test, sources)
    os.sync()  # written pages cannot leave the cache before they reach the disk
    _drop_from_cache(tests)
    ckpt = coarse / "checkpoint.pt"  # test.py reads the coarse checkpoint and the masks from one dir
    ckpt.unlink(missing_ok=True)
    _link(Path(checkpoints["coarse"]) / "checkpoint.pt", ckpt)
    sub = work / f"submission_{kind}_{n_test}.csv"
    cmd = [ROOT / "test.py", "--data", root, "--coarse", coarse, "--fine", checkpoints["fine"], "--model", kind,
           "--device", "cpu", "--workers", workers, "--batch-size", batch_size, "--amp", amp,
           "--tta-factors", "1", "--tta-mirror-factors", "--submission", sub]
    log = work / f"test_{kind}_{n_test}.log"
    rc, mb, seconds = peak_rss_mb(cmd, log)
    if rc != 0:
        raise RuntimeError(f"test.py on {n_test} images exited {rc}; see {log}:\n{log.read_text()[-2000:]}")
    rows = sum(1 for _ in open(sub)) - 1
    if rows != n_test:
        raise RuntimeError(f"{sub}: {rows} rows for {n_test} test images")
    cached = cached_mb(tests)
    mb["cached_mb"] = None if cached is None else round(cached, 1)
    mb["total_mb"] = round(mb["tree_mb"] + (cached or 0.0), 1)
    return mb, seconds
