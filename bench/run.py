"""The performance harness: `make bench` (CPU, about 4 minutes on 2 cores).

    python3 bench/run.py                 # everything -> bench/results.json and a table
    python3 bench/run.py --skip-memory   # without the two test.py runs (about 1.5 minutes less)

Reads  data/toy.py (the benchmark images are its drawings, rescaled to iNat's 800 px).
Writes bench/work/ (scratch: images, the memory datasets, logs; kept to save time on a rerun)
       and bench/results.json: each ratio below measured in this run, plus the machine.

  pipeline_speedup_vs_original     images/s of this repo's training input pipeline (decode + augment
                                   + to tensor, one process) over the original's (float32 first)
  pipeline_speedup_vs_torchvision  ... over torchvision's PIL RandomResizedCrop pipeline
  pipeline_over_decode             this repo's pipeline time over decoding alone (read_rgb)
  localize_overhead                fgvc.cam.localize time over fgvc.engine.predict (same model, images)
  tta_speedup_vs_batch1            test-time crops, 8 images a batch, over the original's batch size 1
  test_peak_rss_mb_1k / _35k       peak memory of test.py with 1,000 and 35,350 test images
The GPU figures (SENet154 at 448 px) come from bench/gpu.sh instead.
"""
import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]; sys.path.insert(0, str(ROOT))

import torch

from bench import images, memory, models, pipelines
from bench.timing import race, race_items

TARGETS = {  # key: (comparison, bound)
    "pipeline_speedup_vs_original": (">=", 4.0),
    "pipeline_speedup_vs_torchvision": (">=", 1.5),
    "pipeline_over_decode": ("<=", 1.5),
    "localize_overhead": ("<=", 1.15),
    "test_peak_rss_35k_over_1k": ("<=", 1.3),
}


def get_args_parser():
    p = argparse.ArgumentParser(description="Performance harness: input pipeline, CAM cost, test-time batching, test.py memory")
    p.add_argument("--work", default=str(ROOT / "bench" / "work"), help="scratch folder (default: bench/work)")
    p.add_argument("--out", default=str(ROOT / "bench" / "results.json"), help="results file (default: bench/results.json)")
    # input pipeline
    p.add_argument("--pipeline-rounds", type=int, default=15, help="times each pipeline runs on each image; the best counts (default: 15)")
    # model side (CPU)
    p.add_argument("--arch", default="resnet18", help="backbone for the model-side ratios (default: resnet18)")
    p.add_argument("--amp", choices=("bf16", "off"), default="bf16", help="autocast on the CPU (default: bf16)")
    p.add_argument("--localize-images", type=int, default=48, help="images for localize vs predict (default: 48)")
    p.add_argument("--localize-size", type=int, default=224, help="input size for localize vs predict (default: 224)")
    p.add_argument("--tta-images", type=int, default=16, help="images for the test-time crops (default: 16)")
    p.add_argument("--tta-size", type=int, default=128, help="crop size for the test-time crops (default: 128)")
    p.add_argument("--model-rounds", type=int, default=5, help="passes per contender on the model side (default: 5)")
    p.add_argument("--threads", type=int, default=1, help="torch threads on the model side; 1 keeps the ratios steady on a shared machine (default: 1)")
    # memory
    p.add_argument("--test-sizes", type=int, nargs=2, default=(1000, 35350), help="test images of the two test.py runs (default: 1000 35350)")
    p.add_argument("--skip-memory", action="store_true", help="skip the two test.py runs")
    return p


def cpu_model():
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def check(key, value):
    op, bound = TARGETS[key]
    return value >= bound if op == ">=" else value <= bound


def main(args):
    t_start = time.time()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    threads = args.threads
    res = {"cpu_model": cpu_model(), "cpu_cores": os.cpu_count(), "torch": torch.__version__,
           "python": platform.python_version()}
    print(f"machine: {res['cpu_model']}, {res['cpu_cores']} cores; torch {torch.__version__}", flush=True)

    paths = images.make_images(work)
    res["images"] = images.describe(paths)
    print(f"images: {res['images']}", flush=True)

    # 1. the input pipeline, one process, one thread
    torch.set_num_threads(1)
    fns = {name: make() for name, make in pipelines.PIPELINES.items()}
    for name, fn in fns.items():  # warm-up, and a shape check
        out = fn(paths[0], (0, 0))
        assert out.shape[-2:] == (pipelines.SIZE, pipelines.SIZE) or name.startswith("decode"), (name, out.shape)

    def contender(fn):
        def run(r, i):
            fn(paths[i], (r, i))
        return run

    t = race_items({name: contender(fn) for name, fn in fns.items()}, len(paths), args.pipeline_rounds)
    torch.set_num_threads(args.threads)
    dec, mine, orig, tv = (t[n]["best_s"] for n in pipelines.PIPELINES)
    res["pipeline_images_per_s"] = {n: round(1 / v["best_s"], 1) for n, v in t.items()}
    res["pipeline_speedup_vs_original"] = orig / mine
    res["pipeline_speedup_vs_torchvision"] = tv / mine
    res["pipeline_over_decode"] = mine / dec
    print(f"input pipeline done ({time.time() - t_start:.0f} s)", flush=True)

    # 2. the CAM: localize vs predict; 3. test-time crops, batched vs batch size 1
    t, masks = models.localize_vs_predict(paths[: args.localize_images], args.arch, args.localize_size, 16, args.amp,
                                          args.model_rounds, race)
    loc, pred = (v["best_s"] for v in t.values())
    res["localize_overhead"] = loc / pred
    res["localize_images_per_s"] = {n: round(1 / v["best_s"], 1) for n, v in t.items()}
    print(f"localize done ({time.time() - t_start:.0f} s)", flush=True)
    t, agree, crops = models.tta_batched_vs_batch1(paths[: args.tta_images], masks, args.arch, args.tta_size, 8, args.amp,
                                                   args.model_rounds, race)
    batched, batch1 = (v["best_s"] for v in t.values())
    res["tta_speedup_vs_batch1"] = batch1 / batched
    res["tta_images_per_s"] = {n: round(1 / v["best_s"], 2) for n, v in t.items()}
    res["tta_top1_agreement"] = agree
    res["model_side"] = {"arch": args.arch, "amp": args.amp, "torch_threads": threads, "localize_size": args.localize_size,
                         "localize_images": min(args.localize_images, len(paths)), "tta_size": args.tta_size,
                         "tta_crops": crops, "tta_images": min(args.tta_images, len(paths))}
    print(f"test-time crops done ({time.time() - t_start:.0f} s)", flush=True)

    # 4. peak memory of test.py
    if not args.skip_memory:
        fine = memory.make_fine_checkpoint(work / "rss" / "fine")
        small, large = args.test_sizes
        for n, key in ((small, "test_peak_rss_mb_1k"), (large, "test_peak_rss_mb_35k")):
            mb, seconds = memory.test_py_peak_rss(work / "rss", n, fine)
            res[key] = round(mb, 1)
            res[key.replace("peak_rss_mb", "seconds")] = round(seconds, 1)
            print(f"test.py on {n} images: peak RSS {mb:.0f} MB in {seconds:.0f} s", flush=True)
        res["test_peak_rss_35k_over_1k"] = res["test_peak_rss_mb_35k"] / res["test_peak_rss_mb_1k"]
        res["test_sizes"] = [small, large]

    res["wall_s"] = round(time.time() - t_start, 1)
    res = {k: (round(v, 3) if isinstance(v, float) else v) for k, v in res.items()}
    res["targets"] = {k: f"{op} {b:g}" for k, (op, b) in TARGETS.items() if k in res}
    res["targets_met"] = {k: check(k, res[k]) for k in TARGETS if k in res}
    Path(args.out).write_text(json.dumps(res, indent=2) + "\n")
    print("\n" + table(res) + f"\n\n{args.out} ({res['wall_s']:.0f} s)", flush=True)


def table(res):
    rows = [
        ("pipeline_speedup_vs_original", "x", "train input pipeline vs the original's (float32 first)"),
        ("pipeline_speedup_vs_torchvision", "x", "... vs torchvision PIL + RandomResizedCrop"),
        ("pipeline_over_decode", "x", "train input pipeline time / JPEG decode time"),
        ("localize_overhead", "x", "localize (logits + CAM -> masks) / predict"),
        ("tta_speedup_vs_batch1", "x", "test crops, 8 images a batch vs batch size 1"),
        ("test_peak_rss_mb_1k", " MB", f"test.py peak RSS, {res.get('test_sizes', [1000])[0]} test images"),
        ("test_peak_rss_mb_35k", " MB", f"test.py peak RSS, {res.get('test_sizes', [0, 35350])[1]} test images"),
        ("test_peak_rss_35k_over_1k", "x", "... ratio"),
    ]
    lines = [f"{res['cpu_model']}, {res['cpu_cores']} cores, torch {res['torch']}",
             f"{'measure':<34}{'value':>10}  {'target':<8}{'met':<5}what", "-" * 110]
    for key, unit, what in rows:
        if key not in res:
            continue
        target = res["targets"].get(key, "")
        met = {True: "yes", False: "NO"}.get(res["targets_met"].get(key), "")
        lines.append(f"{key:<34}{res[key]:>9.2f}{unit:<2} {target:<8}{met:<5}{what}")
    lines.append("")
    for group in ("pipeline_images_per_s", "localize_images_per_s", "tta_images_per_s"):
        for name, v in res[group].items():
            lines.append(f"  {name:<42}{v:>8} images/s")
    return "\n".join(lines)


if __name__ == "__main__":
    main(get_args_parser().parse_args())
