"""The benchmark's own pieces (bench/): its pipelines, the race, peak memory, the GPU script's smoke mode.

No speed is asserted here: speed targets belong to `make bench`.
"""
import math
import time

import cv2
import numpy as np
import pytest
import torch


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


@pytest.mark.slow  # three stages' preflights in subprocesses: 35 s on a quiet machine
def test_gpu_script_runs_every_phase_in_smoke_mode(tmp_path):
    # bench/gpu.sh is meant for a bare GPU machine nobody here can reach: its smoke mode (tiny
    # sizes, any device) keeps it from rotting between GPU runs.
    import json
    import subprocess

    from harness import ROOT

    out = tmp_path / "gpu.json"
    p = subprocess.run(["bash", str(ROOT / "bench" / "gpu.sh"), "--smoke", "--out", str(out)],
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    res = json.loads(out.read_text())
    assert res["phases_done"] == ["train fp32", "train bf16", "train bf16_channels_last", "loader", "localize", "test",
                                  "preflight timm/tf_efficientnet_lite0"]
    pre = res["preflight"]["timm/tf_efficientnet_lite0"]  # --smoke: the small backbone only
    assert pre["projected_total_h"] > 0 and pre["coarse"]["steps_per_epoch"] == 265_213 // 2 + 1  # iNat 2019 at batch 2
    for stage in ("coarse", "fine", "test"):
        assert pre[stage]["limit"] in ("loader", "step") and pre[stage]["projected_total_s"] > 0, (stage, pre[stage])
    assert pre["coarse"]["projected_localize_s"] > 0 and "projected_localize_s" not in pre["fine"]
    assert res["localize_mixed_sizes"] > 1 and res["loader_batches_timed"] >= 50 * res["loader_workers"]
    for key in ("loader_images_per_s", "localize_images_per_s", "localize_mixed_images_per_s", "predict_images_per_s", "test_images_per_s",
                "test_batch1_images_per_s", "localize_overhead", "tta_speedup_vs_batch1"):
        assert res[key] > 0, key
    assert all(v > 0 for v in res["train_images_per_s"].values())
    assert res["train_compile_skipped"].startswith("skipped in --smoke")  # the + compile row: a GPU run only


def test_one_target_check_for_both_harnesses():
    from bench import run, scale

    assert run.check(scale.TARGETS, "scale_load_vs_json_rss", 0.6) and not run.check(scale.TARGETS, "scale_load_vs_json_rss", 0.61)
    assert run.check(run.TARGETS, "pipeline_speedup_vs_original", 4.0) and not run.check(run.TARGETS, "pipeline_speedup_vs_original", 3.9)
