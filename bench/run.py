"""The performance harness: `make bench` (CPU, about 15 minutes on 2 cores, 3 of them the --compile ratios' compile).

    python3 bench/run.py                 # everything -> bench/results.json and a table
    python3 bench/run.py --skip-memory   # without the four test.py runs (about 5.5 minutes on 2 cores)
    python3 bench/run.py --skip-memory --skip-compile   # without the --compile ratios too (their compile: minutes)

Reads  data/toy.py (the benchmark images are its drawings, rescaled to iNat's 800 px).
Writes bench/work/ (scratch: images, the memory datasets, logs; kept to save time on a rerun)
       and bench/results.json: each ratio below measured in this run, plus the machine.

  pipeline_speedup_vs_original     images/s of this repo's training input pipeline (decode + augment
                                   + to tensor, one process) over the original's (float32 first)
  pipeline_speedup_vs_torchvision  ... over torchvision's PIL RandomResizedCrop pipeline
  pipeline_over_decode             this repo's pipeline time over OpenCV's decode alone (the decoder
                                   read_rgb used before simplejpeg, and the original's)
  pipeline_speedup_vs_opencv_decode  OpenCV's decode time over this repo's whole pipeline's: above 1,
                                   the whole training input is faster than the old decoder alone
  pipeline_over_own_decode         this repo's pipeline time over its own decode (read_rgb)
  pipeline_rgbx_over_rgb           the pipeline fed by an RGBX decode over the one fed by RGB (read_rgb)
  decode_images_per_s, decode_mad_vs_opencv   each decoder's rate, and its pixels' mean absolute
                                   difference from OpenCV's (bench/decoders.py)
  localize_overhead                fgvc.cam.localize time over fgvc.inference.predict (same model, images)
  tta_speedup_vs_batch1            test-time crops, 8 images a batch, over the original's batch size 1
  compile_train_speedup            --compile: images/s of a training step with the model's body
                                   compiled over eager (resnet18 at --compile-size, channels_last,
                                   --amp as a run here would have it: auto), compile time left out
  compile_infer_speedup            ... of an inference batch (forward + softmax)
  compile_images_per_s, compile_warmup_s   the rates, and each compiled pass's first calls
  test_memory                      peak memory of test.py --model coarse / fine --workers 2 on
                                   800 px JPEGs, two test-set sizes (--test-sizes): the main process
                                   (VmHWM), the process tree (PSS of main + loader processes), the
                                   test images left in the page cache, tree + cache (bench/memory.py)
  test_peak_35k_over_1k_<model>    tree + cache, large over small test set (the key keeps its name
                                   when --test-sizes is not 1,000 / 35,350; test_sizes says what ran)
  test_peak_rss_35k_over_1k        the larger of the two
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

from bench import decoders, images, memory, models, pipelines
from bench.timing import race, race_items
from fgvc.cli import resolve_amp

TARGETS = {  # key: (comparison, bound)
    "pipeline_speedup_vs_original": (">=", 4.0),
    "pipeline_speedup_vs_torchvision": (">=", 1.5),
    "pipeline_over_decode": ("<=", 1.2),
    "pipeline_speedup_vs_opencv_decode": (">=", 1.0),
    "localize_overhead": ("<=", 1.15),
    "test_peak_35k_over_1k_coarse": ("<=", 1.3),
    "test_peak_35k_over_1k_fine": ("<=", 1.3),
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
    p.add_argument("--compile-size", type=int, default=64, help="input size of the --compile ratios (default: 64)")
    p.add_argument("--compile-batch", type=int, default=8, help="images a batch of the --compile ratios (default: 8)")
    p.add_argument("--skip-compile", action="store_true", help="skip the --compile ratios (their compile takes minutes)")
    p.add_argument("--threads", type=int, default=1, help="torch threads on the model side; 1 keeps the ratios steady on a shared machine (default: 1)")
    # memory
    p.add_argument("--test-sizes", type=int, nargs=2, default=(1000, 10000), help="test images of the two test.py runs of each model; 35,350 is iNat's test set, about 25 minutes more on 2 cores (default: 1000 10000)")
    p.add_argument("--test-img-size", type=int, default=64, help="model input size of the test.py runs; the images stay 800 px (default: 64)")
    p.add_argument("--test-workers", type=int, default=2, help="data loader processes of the test.py runs (default: 2)")
    p.add_argument("--skip-memory", action="store_true", help="skip the test.py runs")
    return p


def cpu_model():
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def check(targets, key, value):
    """Does value meet targets[key] = (">=" or "<=", bound)? (bench/run.py's and bench/scale.py's keys.)"""
    op, bound = targets[key]
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
    rgbx = "this repo, RGBX decode (no conversion)"
    fns = {name: make() for name, make in pipelines.PIPELINES.items()}
    fns[rgbx] = decoders.rgbx_pipeline()
    fns.update(decoders.DECODERS)
    for name, fn in fns.items():  # warm-up, and a shape check
        out = fn(paths[0], (0, 0))
        assert out.shape[-2:] == (pipelines.SIZE, pipelines.SIZE) or name.startswith("decode"), (name, out.shape)
    assert decoders.same_output(paths), "the RGBX-fed pipeline differs from read_rgb's"

    def contender(fn):
        def run(r, i):
            fn(paths[i], (r, i))
        return run

    t = race_items({name: contender(fn) for name, fn in fns.items()}, len(paths), args.pipeline_rounds)
    torch.set_num_threads(args.threads)
    dec, mine, orig, tv = (t[n]["best_s"] for n in pipelines.PIPELINES)
    opencv = t[decoders.OPENCV]["best_s"]
    res["pipeline_images_per_s"] = {n: round(1 / t[n]["best_s"], 1) for n in [*pipelines.PIPELINES, rgbx]}
    res["decode_images_per_s"] = {n: round(1 / t[n]["best_s"], 1) for n in decoders.DECODERS}
    res["decode_mad_vs_opencv"] = decoders.agreement(paths)
    res["pipeline_speedup_vs_original"] = orig / mine
    res["pipeline_speedup_vs_torchvision"] = tv / mine
    res["pipeline_over_decode"] = mine / opencv
    res["pipeline_speedup_vs_opencv_decode"] = opencv / mine
    res["pipeline_over_own_decode"] = mine / dec
    res["pipeline_rgbx_over_rgb"] = t[rgbx]["best_s"] / mine
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

    # 4. --compile: compiled over eager, a training step and an inference batch
    if not args.skip_compile:
        amp = resolve_amp("auto", "cpu")
        t, warmup = models.compile_vs_eager(args.arch, args.compile_size, args.compile_batch, amp, args.model_rounds, race)
        for name in ("train", "infer"):
            res[f"compile_{name}_speedup"] = t[name]["eager"]["best_s"] / t[name]["compiled"]["best_s"]
        res["compile_images_per_s"] = {f"{name} {kind}": round(1 / v["best_s"], 1) for name, r in t.items() for kind, v in r.items()}
        res["compile_warmup_s"] = {name: round(s, 1) for name, s in warmup.items()}
        res["compile_run"] = {"arch": args.arch, "img_size": args.compile_size, "batch_size": args.compile_batch, "amp": amp,
                              "torch_threads": threads, "head": "fine (linear), 1010 classes"}
        print(f"compile done ({time.time() - t_start:.0f} s)", flush=True)

    # 5. peak memory of test.py
    if not args.skip_memory:
        mem = work / "rss"
        ckpts = {kind: memory.make_checkpoint(mem / f"ckpt_{kind}", kind, args.test_img_size) for kind in ("coarse", "fine")}
        small, large = args.test_sizes
        res["test_memory"] = {}
        for kind in ("coarse", "fine"):
            runs = {}
            for n in (small, large):
                mb, seconds = memory.test_py_peak_rss(mem, n, kind, ckpts, paths, args.test_workers)
                runs[str(n)] = {**mb, "seconds": round(seconds, 1)}
                print(f"test.py --model {kind} on {n} images: peak {mb['main_mb']:.0f} MB (main), {mb['tree_mb']:.0f} MB "
                      f"(with the loader processes), {mb['cached_mb']} MB of test images cached, in {seconds:.0f} s", flush=True)
            res["test_memory"][kind] = runs
            res[f"test_peak_35k_over_1k_{kind}"] = runs[str(large)]["total_mb"] / runs[str(small)]["total_mb"]
        res["test_peak_rss_mb_1k"] = res["test_memory"]["fine"][str(small)]["main_mb"]
        res["test_peak_rss_mb_35k"] = res["test_memory"]["fine"][str(large)]["main_mb"]
        res["test_peak_rss_35k_over_1k"] = max(res["test_peak_35k_over_1k_coarse"], res["test_peak_35k_over_1k_fine"])
        res["test_sizes"] = [small, large]
        res["test_run"] = {"workers": args.test_workers, "img_size": args.test_img_size, "arch": "resnet18", "crops": 1,
                           "images": "the benchmark's 800 px JPEGs, linked in turn"}

    res["wall_s"] = round(time.time() - t_start, 1)
    res = {k: (round(v, 3) if isinstance(v, float) else v) for k, v in res.items()}
    res["targets"] = {k: f"{op} {b:g}" for k, (op, b) in TARGETS.items() if k in res}
    res["targets_met"] = {k: check(TARGETS, k, res[k]) for k in TARGETS if k in res}
    Path(args.out).write_text(json.dumps(res, indent=2) + "\n")
    print("\n" + table(res) + f"\n\n{args.out} ({res['wall_s']:.0f} s)", flush=True)


def table(res):
    rows = [
        ("pipeline_speedup_vs_original", "x", "train input pipeline vs the original's (float32 first)"),
        ("pipeline_speedup_vs_torchvision", "x", "... vs torchvision PIL + RandomResizedCrop"),
        ("pipeline_over_decode", "x", "train input pipeline time / OpenCV's JPEG decode time"),
        ("pipeline_speedup_vs_opencv_decode", "x", "OpenCV's JPEG decode time / train input pipeline time"),
        ("pipeline_over_own_decode", "x", "train input pipeline time / its own decode time (read_rgb)"),
        ("pipeline_rgbx_over_rgb", "x", "pipeline fed by an RGBX decode / fed by read_rgb's RGB"),
        ("localize_overhead", "x", "localize (logits + CAM -> masks) / predict"),
        ("tta_speedup_vs_batch1", "x", "test crops, 8 images a batch vs batch size 1"),
        ("compile_train_speedup", "x", "--compile: training step images/s, compiled / eager"),
        ("compile_infer_speedup", "x", "--compile: inference images/s, compiled / eager"),
        ("test_peak_35k_over_1k_coarse", "x", "test.py --model coarse peak memory (main + loaders + cache), {1} / {0} test images"),
        ("test_peak_35k_over_1k_fine", "x", "test.py --model fine peak memory (main + loaders + cache), {1} / {0} test images"),
        ("test_peak_rss_35k_over_1k", "x", "... the larger of the two"),
    ]
    lines = [f"{res['cpu_model']}, {res['cpu_cores']} cores, torch {res['torch']}",
             f"{'measure':<34}{'value':>10}  {'target':<8}{'met':<5}what", "-" * 110]
    for key, unit, what in rows:
        if key not in res:
            continue
        target = res["targets"].get(key, "")
        met = {True: "yes", False: "NO"}.get(res["targets_met"].get(key), "")
        lines.append(f"{key:<34}{res[key]:>9.2f}{unit:<2} {target:<8}{met:<5}{what.format(*res.get('test_sizes', ()))}")
    lines.append("")
    for group in ("pipeline_images_per_s", "decode_images_per_s", "localize_images_per_s", "tta_images_per_s", "compile_images_per_s"):
        for name, v in res.get(group, {}).items():
            mad = res["decode_mad_vs_opencv"].get(name) if group == "decode_images_per_s" else None
            lines.append(f"  {name:<42}{v:>8} images/s" + (f"   pixels vs OpenCV: mean abs diff {mad}" if mad is not None else ""))
    for kind, runs in res.get("test_memory", {}).items():
        for n, r in runs.items():
            lines.append(f"  test.py --model {kind:<7} {n:>6} images: {r['main_mb']:>6.0f} MB main, {r['tree_mb']:>6.0f} MB with loaders, "
                         f"{r['cached_mb']} MB images cached, {r['seconds']:>4.0f} s")
    return "\n".join(lines)


if __name__ == "__main__":
    main(get_args_parser().parse_args())
