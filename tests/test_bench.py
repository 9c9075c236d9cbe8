"""The memory side of issue 7 (masks streamed and bit-packed) and the benchmark's own pieces.

No speed is asserted here: speed targets belong to `make bench`.
"""
import math
import time
import zipfile

import cv2
import numpy as np
import pytest
import torch

from fgvc.annotations import Split
from fgvc.crop import MultiCropTransform
from fgvc.datasets import ImageDataset
from fgvc.errors import DatasetError
from fgvc.masks import PackedMasks, load_masks, masks_path, save_masks


def split_of(ids, name="val", root=None):
    ids = np.asarray(ids, np.int64)
    return Split(name=name, json_path=None, root=root, image_ids=ids, file_names=[f"{i}.jpg" for i in ids],
                 labels=None, sizes=np.full((len(ids), 2), -1, np.int64))


def random_masks(n, h=32, w=48, seed=0):
    return (np.random.default_rng(seed).random((n, h, w)) < 0.3).astype(np.uint8)


def test_masks_come_back_aligned_with_the_split(tmp_path):
    ids = np.array([50, 10, 40, 20, 30, 99])  # file order is not the split's; 99 is not in the split
    masks = random_masks(len(ids))
    save_masks(masks_path(tmp_path, "val"), ids, masks)
    split = split_of([10, 20, 30, 40, 50])
    got = load_masks(tmp_path, split)
    assert isinstance(got, PackedMasks) and len(got) == 5 and got.shape == (5, 32, 48)
    for r, i in enumerate(split.image_ids):
        want = masks[list(ids).index(i)]
        assert got[r].dtype == np.uint8 and np.array_equal(got[r], want)
    assert got.packed.nbytes == 5 * 32 * 48 // 8  # one bit a pixel


def test_masks_stream_in_chunks_and_accept_any_nonzero(tmp_path):
    n = 5000  # 32 x 32 masks: 4,096 rows a chunk, so two chunks
    ids = np.arange(1000, 1000 + n)[::-1]
    masks = random_masks(n, 32, 32, seed=1) * 255  # nonzero is "in the mask"
    save_masks(masks_path(tmp_path, "test"), ids, masks)
    got = load_masks(tmp_path, split_of(np.sort(ids), "test"))
    for r in (0, 1, 4095, 4096, 4999):
        assert np.array_equal(got[r], (masks[n - 1 - r] != 0).astype(np.uint8))


def test_fortran_ordered_masks_still_load(tmp_path):
    masks = np.asfortranarray(random_masks(4))
    save_masks(masks_path(tmp_path, "val"), [1, 2, 3, 4], masks)
    got = load_masks(tmp_path, split_of([1, 2, 3, 4]))
    assert all(np.array_equal(got[r], masks[r]) for r in range(4))


def test_mask_errors_are_one_clear_line(tmp_path):
    with pytest.raises(DatasetError, match="masks file not found; run the coarse stage"):
        load_masks(tmp_path, split_of([1]))
    save_masks(masks_path(tmp_path, "val"), [1, 2], random_masks(2))
    with pytest.raises(DatasetError, match=r"masks for 2 of 3 val image ids are missing \(first: \[3, 4\]\)"):
        load_masks(tmp_path, split_of([1, 3, 4]))
    np.savez(masks_path(tmp_path, "val"), image_ids=np.array([1, 2]), masks=np.zeros((2, 5), np.uint8))
    with pytest.raises(DatasetError, match=r"expected image_ids \(N,\) and masks \(N, h, w\)"):
        load_masks(tmp_path, split_of([1]))
    masks_path(tmp_path, "val").write_bytes(b"not a zip")
    with pytest.raises(DatasetError, match="unreadable masks file"):
        load_masks(tmp_path, split_of([1]))
    with zipfile.ZipFile(masks_path(tmp_path, "val"), "w") as z:
        z.writestr("image_ids.npy", b"")
    with pytest.raises(DatasetError, match="unreadable masks file"):
        load_masks(tmp_path, split_of([1]))


def test_truncated_masks_data_is_refused(tmp_path):
    path = masks_path(tmp_path, "val")
    save_masks(path, [1, 2, 3], random_masks(3))
    with zipfile.ZipFile(path) as z:
        ids, data = z.read("image_ids.npy"), z.read("masks.npy")
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("image_ids.npy", ids)
        z.writestr("masks.npy", data[:-100])
    with pytest.raises(DatasetError, match="unreadable masks file.*ends after row"):
        load_masks(tmp_path, split_of([1, 2, 3]))


def test_packed_masks_feed_the_test_time_crops(tmp_path):
    root = tmp_path / "img"
    root.mkdir()
    for i in (7, 8):
        cv2.imwrite(str(root / f"{i}.jpg"), np.full((60, 80, 3), 100, np.uint8))
    masks = np.zeros((2, 32, 32), np.uint8)
    masks[:, 8:24, 8:24] = 1
    save_masks(masks_path(tmp_path, "val"), [7, 8], masks)
    split = split_of([7, 8], root=root)
    ds = ImageDataset(split, MultiCropTransform(24, (1, 2), (1,)), masks=load_masks(tmp_path, split))
    x, _, _, ok = ds[1]
    assert ok and x.shape == (3, 3, 24, 24) and x.dtype == torch.uint8


# ---------------------------------------------------------------- the harness's own pieces

def test_benchmark_pipelines_give_the_same_output_size(tmp_path):
    from bench import pipelines

    path = tmp_path / "a.jpg"
    cv2.imwrite(str(path), np.random.default_rng(0).integers(0, 256, (120, 160, 3), dtype=np.uint8))
    orig = pipelines.original(path, (0, 1), size=64, short=72)
    assert orig.shape == (3, 64, 64) and orig.dtype == torch.float32 and abs(float(orig.mean())) < 3
    for name, make in pipelines.PIPELINES.items():
        out = make()(path, (0, 1))
        if not name.startswith("decode"):
            assert out.shape == (3, pipelines.SIZE, pipelines.SIZE), name


def test_race_times_every_contender():
    from bench.timing import race, race_items

    calls = []
    t0 = time.perf_counter()
    t = race_items({"a": lambda r, i: calls.append(("a", r, i)),
                    "b": lambda r, i: (calls.append(("b", r, i)), time.sleep(0.002))}, 3, 2)
    elapsed = time.perf_counter() - t0
    assert set(t) == {"a", "b"} and len(calls) == 12 and all(v["items"] == 3 for v in t.values())
    # seconds an item: positive and finite, the best no slower than the median pass
    assert all(0 < v["best_s"] <= v["median_s"] < math.inf for v in t.values())
    assert t["b"]["best_s"] >= 0.002  # every call of b sleeps 2 ms: no call is timed short
    # 2 rounds of 3 items each: every timed call lies inside the race, so their bests add up to less
    assert 2 * 3 * (t["a"]["best_s"] + t["b"]["best_s"]) <= elapsed
    t0 = time.perf_counter()
    t = race({"x": lambda r: (time.sleep(0.005), 5)[1]}, 2)
    elapsed = time.perf_counter() - t0
    assert t["x"]["items"] == 5
    # a 5 ms pass of 5 items: at least 1 ms an item, and the 2 passes fit in the race
    assert 0.001 <= t["x"]["best_s"] <= t["x"]["median_s"] and 2 * 5 * t["x"]["best_s"] <= elapsed


def test_peak_rss_of_a_child(tmp_path):
    from bench.memory import peak_rss_mb

    script = tmp_path / "grow.py"
    script.write_text("import sys\nb = bytearray(int(sys.argv[1]) * 2**20)\nb[::4096] = b'x' * len(b[::4096])\n")
    rc, small, _ = peak_rss_mb([script, "10"], tmp_path / "log")
    rc2, large, _ = peak_rss_mb([script, "300"], tmp_path / "log")
    assert rc == rc2 == 0 and small["main_mb"] < 200 and 280 < large["main_mb"] - small["main_mb"] < 310  # 300 - 10 MB


def test_peak_memory_of_the_process_tree_counts_a_loader_process(tmp_path):
    # the main process stays small; a child it starts (as a data loader worker) holds 300 MB for
    # a second, which the tree's sampled PSS must see and the main process's VmHWM must not
    from bench.memory import peak_rss_mb

    script = tmp_path / "spawn.py"
    script.write_text("import subprocess, sys\n"
                      "code = \"b = bytearray(300 * 2**20); b[::4096] = b'x' * len(b[::4096]); import time; time.sleep(1.5)\"\n"
                      "subprocess.run([sys.executable, '-c', code], check=True)\n")
    rc, mb, _ = peak_rss_mb([script], tmp_path / "log")
    assert rc == 0 and mb["main_mb"] < 200 and mb["tree_mb"] - mb["main_mb"] > 250


def test_gpu_script_runs_every_phase_in_smoke_mode(tmp_path):
    # bench/gpu.sh is meant for a bare GPU machine nobody here can reach: its smoke mode (tiny
    # sizes, any device) keeps it from rotting between GPU runs.
    import json
    import subprocess
    import sys

    from harness import ROOT

    out = tmp_path / "gpu.json"
    p = subprocess.run(["bash", str(ROOT / "bench" / "gpu.sh"), "--smoke", "--out", str(out)],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    res = json.loads(out.read_text())
    assert res["phases_done"] == ["train fp32", "train bf16", "train bf16_channels_last", "loader", "localize", "test"]
    assert res["localize_mixed_sizes"] > 1 and res["loader_batches_timed"] >= 50 * res["loader_workers"]
    for key in ("loader_images_per_s", "localize_images_per_s", "localize_mixed_images_per_s", "predict_images_per_s", "test_images_per_s",
                "test_batch1_images_per_s", "localize_overhead", "tta_speedup_vs_batch1"):
        assert res[key] > 0, key
    assert all(v > 0 for v in res["train_images_per_s"].values())
