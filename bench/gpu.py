"""GPU figures for the README: SENet154 at 448 px (random weights), on one CUDA device.

    bash bench/gpu.sh            # creates .venv if needed, then runs this; under 8 minutes
    bash bench/gpu.sh --smoke    # dry run: tiny sizes, any device (checks the script, not the numbers)

Writes bench/gpu_results.json, after every phase (a run cut short keeps what it measured):
  train_images_per_s        {fp32, bf16, bf16_channels_last, bf16_channels_last_compile}: coarse model,
                            batch 14 (the original's), SGD step included, synthetic uint8 batches
                            already on the device; the last with --compile (the model's body
                            compiled; its compile is in the warm-up steps, timed apart as
                            train_compile_warmup_s, which comes out of the preflight's --budget-s;
                            skipped in --smoke, minutes on a CPU, and with --skip-compile)
  train_peak_gpu_mb         the same, peak memory allocated by torch
  loader_images_per_s       the training input pipeline (TrainTransform 448/512 on 800 px JPEGs) with
                            one loader process per CPU of os.sched_getaffinity, 50 batches a worker
                            timed after the first 2 x workers: can the CPUs feed the GPU?
  (fp32 runs convolutions and matmuls in TF32 where tf32_conv / tf32_matmul say so)
  localize_images_per_s     fgvc.cam.localize (logits + CAM -> masks), batch 32, bf16, and
                            predict_images_per_s (logits only) beside it; localize_overhead = ratio
                            (synthetic 448 x 448); localize_mixed_images_per_s: on whole 800 px images
                            of mixed real sizes, short side 512 (localize_mixed_sizes distinct sizes)
  test_images_per_s         fgvc.inference.score on 16 crops an image, 8 images a batch, bf16; and
  test_batch1_images_per_s  the original's loop (one image's 16 crops a forward pass);
                            tta_speedup_vs_batch1 = ratio
  *_peak_gpu_mb             peak memory of each phase
  preflight                 {arch: ...} for the original's senet154 and one small modern backbone (--small-arch,
                            timm/tf_efficientnet_lite0), both at --img-size: coarse/train.py, fine/train.py and
                            test.py --preflight run as commands (their defaults: batch 14, amp auto, 32 epochs;
                            --workers one per CPU; --pretrained none) on a stand-in dataset in iNat 2019's layout
                            (the 800 px JPEGs hard-linked, 1,010 classes), each stage's rates, limit ("loader" or
                            "step") and peak memory, and the stage's time projected to iNat 2019's 265,213 / 3,030
                            / 35,350 images (fgvc.preflight.project_training; localization of all three splits;
                            test.py scoring test and val): projected_total_h is the whole method on this GPU.
                            A stage that would not end within --budget-s is left out, and said so
"""
import argparse
import copy
import io
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from contextlib import redirect_stderr
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]; sys.path.insert(0, str(ROOT))

import torch
from torch.utils.data import Dataset

from bench.models import batch1_loop
from fgvc import devices
from fgvc.backbones import mean_pixel
from fgvc.cam import localize
from fgvc.checkpoint import save_checkpoint
from fgvc.config import RECIPE, CoarseConfig, Runtime
from fgvc.datasets import ImageDataset, make_loader
from fgvc.engine import make_optimizer, train_step
from fgvc.inference import autocast_for, predict, prepare_model, score, to_device
from fgvc.preflight import discard_count, project_training
from fgvc.preflight import loader_rate as preflight_loader_rate
from fgvc.stages import build_model, model_args
from fgvc.transforms import ShortSideTransform, TrainTransform

K = 1010
INAT2019 = {"train": 265_213, "val": 3_030, "test": 35_350}  # the images of iNat 2019's splits (bench/scale.py's SIZES)
STAND_IN = {"train": K, "val": 100, "test": 100}  # the preflight's stand-in dataset: images a split (smoke: SMOKE_STAND_IN)
SMOKE_STAND_IN, SMOKE_CLASSES = {"train": 12, "val": 6, "test": 6}, 4


def get_args_parser():
    p = argparse.ArgumentParser(description="GPU benchmark: SENet154 at 448 px -> bench/gpu_results.json")
    p.add_argument("--smoke", action="store_true", help="tiny sizes on any device, to check the script (numbers meaningless)")
    p.add_argument("--arch", default=None, help="backbone (default: senet154; resnet18 with --smoke)")
    p.add_argument("--img-size", type=int, default=448, help="input size (default: 448)")
    p.add_argument("--batch-size", type=int, default=14, help="training batch (default: 14, the original's)")
    p.add_argument("--steps", type=int, default=20, help="timed training steps per precision (default: 20)")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps first: cudnn.benchmark, allocator (default: 5)")
    p.add_argument("--images", type=int, default=64, help="images for localization; a quarter of them for test-time crops (default: 64)")
    p.add_argument("--small-arch", default="timm/tf_efficientnet_lite0",
                   help="the small modern backbone of the preflight phase (default: timm/tf_efficientnet_lite0)")
    p.add_argument("--preflight-steps", type=int, default=10, help="the preflight's --preflight-steps (default: 10)")
    p.add_argument("--skip-compile", action="store_true", help="leave out the + compile training row (its compile time, "
                   "unmeasured on a GPU, comes out of the preflight's --budget-s)")
    p.add_argument("--budget-s", type=float, default=400, help="seconds from the start after which no preflight starts, "
                   "and each ends (bench/gpu.sh stops the whole at 420; default: 400)")
    p.add_argument("--out", default=str(ROOT / "bench" / "gpu_results.json"), help="results (default: bench/gpu_results.json)")
    return p


class Synthetic(Dataset):
    """`n` random uint8 images (or `crops` x images) of size x size, made once, with the sample
    layout of ImageDataset: (tensor, label -1, row, ok)."""

    def __init__(self, n, size, crops=None, seed=0):
        g = torch.Generator().manual_seed(seed)
        shape = (n, 3, size, size) if crops is None else (n, crops, 3, size, size)
        self.x = torch.randint(0, 256, shape, dtype=torch.uint8, generator=g)
        self.split = argparse.Namespace(name="synthetic")

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i], -1, i, True


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak(device):
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_mb(device):
    return round(torch.cuda.max_memory_allocated(device) / 2**20, 1) if device.type == "cuda" else None


def train_rate(model, device, amp, channels_last, args, compile=False):
    """Training images/s of `model` at one precision and memory format (and compiled with
    `compile`); synthetic batches on the device. Returns (rate, peak MB, warm-up seconds)."""
    model = prepare_model(model, device, compile) if channels_last else model.to(device, memory_format=torch.contiguous_format)
    model.train()
    optimizer = make_optimizer(model, CoarseConfig["lr"].default, RECIPE[True]["backbone_lr_ratio"], name=CoarseConfig["optimizer"].default,
                               weight_decay=CoarseConfig["weight_decay"].default)  # the original's
    autocast = autocast_for(device, amp)
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (args.batch_size, 3, args.img_size, args.img_size), dtype=torch.uint8, generator=g)
    x = to_device(x, device) if channels_last else x.to(device)
    y = torch.randint(0, K, (args.batch_size,), generator=g).to(device)

    reset_peak(device)
    t_warm = time.perf_counter()
    for i in range(args.warmup + args.steps):
        if i == args.warmup:
            sync(device)
            t0 = time.perf_counter()
            warmup_s = t0 - t_warm
        train_step(model, x, y, optimizer=optimizer, autocast=autocast)
    sync(device)
    rate = args.batch_size * args.steps / (time.perf_counter() - t0)
    del optimizer
    return rate, peak_mb(device), warmup_s


def timed(fn, device):
    reset_peak(device)
    fn()  # warm-up pass
    sync(device)
    t0 = time.perf_counter()
    n = fn()
    sync(device)
    return n / (time.perf_counter() - t0), peak_mb(device)


def loader_rate(args, device, per_worker):
    """The training input pipeline with one loader process per CPU this process may use
    (os.sched_getaffinity), over 800 px JPEGs: `per_worker` batches a worker timed, after the
    first 2 x workers discarded (start-up, the queue prefetched at iter(); fgvc.preflight.loader_rate)."""
    from bench.images import make_images
    from bench.models import image_split

    workers = len(os.sched_getaffinity(0))
    paths = make_images(ROOT / "bench" / "work", workers=workers)  # the images of bench/run.py
    dataset = ImageDataset(image_split(paths), TrainTransform(args.img_size, round(args.img_size * 512 / 448),
                                                              fill=mean_pixel(args.arch)))
    discard = discard_count(workers)
    batches = discard + 1 + per_worker * workers
    rows = [i % len(dataset) for i in range(batches * args.batch_size)]
    rate, _ = preflight_loader_rate(make_loader(dataset, args.batch_size, workers, device, sampler=rows), discard)
    return rate, workers, batches - discard - 1


def mixed_sizes(args):
    """Whole images of mixed real sizes (bench/images.py's 800 px JPEGs, their aspects as drawn), as the
    localization reads them (short side 512 for 448 px inputs)."""
    from PIL import Image

    from bench.images import make_images
    from bench.models import image_split

    paths = make_images(ROOT / "bench" / "work", workers=len(os.sched_getaffinity(0)))[: args.images]
    split = image_split(paths)
    for i, p in enumerate(paths):
        with Image.open(p) as im:
            split.sizes[i] = im.size
    return ImageDataset(split, ShortSideTransform(round(args.img_size * 512 / 448)))


def stand_in_dataset(root, paths, counts, classes):
    """iNat 2019's layout (train2019.json, val2019.json, test2019.json) over the benchmark's 800 px
    JPEGs, hard-linked under names of their own: `counts` images a split, train labels one class
    after another over `classes` category ids. Val and test share the train images' content: the
    commands are given --allow-overlap."""
    from PIL import Image

    from bench.memory import _link

    sizes = []
    for path in paths:
        with Image.open(path) as im:
            sizes.append(im.size)
    cats = [{"id": c, "name": f"species {c}", "kingdom": "Plantae", "supercategory": "Plants"} for c in range(classes)]
    image_id = 1
    for split, n in counts.items():
        images, anns = [], []
        for i in range(n):
            src = paths[image_id % len(paths)]
            cid = i % classes
            name = f"test2019/{image_id:08d}.jpg" if split == "test" else f"train_val2019/Plants/{cid}/{image_id:08d}.jpg"
            _link(src, Path(root) / name)
            w, h = sizes[image_id % len(paths)]
            images.append({"id": image_id, "file_name": name, "width": w, "height": h})
            anns.append({"id": image_id, "image_id": image_id, "category_id": cid})
            image_id += 1
        doc = {"images": images} if split == "test" else {"images": images, "annotations": anns, "categories": cats}
        (Path(root) / f"{split}2019.json").write_text(json.dumps(doc))
    return Path(root)


def run_preflight(argv, report, deadline):
    """One command with --preflight as a user runs it; its report (preflight.json) or why there is none."""
    left = deadline - time.time()
    if left < 20:
        return {"not_run": "the budget (--budget-s) was spent"}
    try:
        p = subprocess.run([sys.executable, *map(str, argv), "--preflight"], cwd=ROOT, capture_output=True, text=True, timeout=left)
    except subprocess.TimeoutExpired:
        return {"not_run": f"cut at the budget (--budget-s) after {left:.0f} s"}
    print(p.stdout.strip(), flush=True)
    if p.returncode != 0:
        return {"failed": (p.stderr.strip().splitlines() or [f"exit {p.returncode}"])[-1][:300]}
    return json.loads(Path(report).read_text())


def project(stage, r):
    """A preflight report's stage time at iNat 2019's sizes (the report's own projection is of the stand-in dataset)."""
    keep = {k: r[k] for k in ("loader_images_per_s", "step_images_per_s", "loop_images_per_s", "limit", "peak_memory_mb",
                              "batch_size", "amp", "workers") if k in r}
    if stage == "test":
        keep["projected_total_s"] = sum(INAT2019[k] for k in r["images"]) / r["loop_images_per_s"]
    else:
        config = argparse.Namespace(batch_size=r["batch_size"], epochs=r["epochs"], save_every=CoarseConfig["save_every"].default)
        keep.update(project_training(r, INAT2019, config))
        if "localize_images_per_s" in r:
            keep["projected_localize_s"] = sum(INAT2019.values()) / r["localize_images_per_s"]
            keep["projected_total_s"] += keep["projected_localize_s"]
    return {k: (round(v, 1) if isinstance(v, float) else v) for k, v in keep.items()}


def preflight_run(arch, data, args, device, deadline):
    """coarse/train.py, fine/train.py and test.py --preflight with `arch` at --img-size: {stage: projection}
    and the total in hours (None when a stage is missing)."""
    workers = 0 if args.smoke else len(os.sched_getaffinity(0))
    common = ["--data", data, "--workers", workers, "--device", device.type, "--allow-overlap", "--preflight-steps", args.preflight_steps]
    model = ["--arch", arch, "--pretrained", "none", "--img-size", args.img_size]
    coarse_only = []
    if args.smoke:  # tiny and in fp32 (bf16 on a CPU can be emulated: slow)
        common += ["--batch-size", args.batch_size, "--amp", "off"]
        model += ["--eval-batch-size", 2 * args.batch_size]
        coarse_only += ["--resize", round(args.img_size * 512 / 448), "--mask-size", 32, 32]
    res = {}
    with tempfile.TemporaryDirectory(prefix="gpu-preflight-") as tmp:
        tmp = Path(tmp)
        coarse, fine, fine_model, test = tmp / "coarse", tmp / "fine", tmp / "fine-model", tmp / "test"
        runs = {"coarse": (["coarse/train.py", *common, *model, *coarse_only, "--out", coarse], coarse / "preflight.json"),
                "fine": (["fine/train.py", *common, *model, "--coarse", coarse, "--out", fine], fine / "preflight.json"),
                "test": (["test.py", *common, "--coarse", coarse, "--fine", fine_model, "--submission", test / "submission.csv"],
                         test / "preflight.json")}
        # test.py scores a fine checkpoint: an untrained one of `arch` (its speed is the trained one's)
        classes = json.loads((Path(data) / "train2019.json").read_text())["categories"]
        save_checkpoint(fine_model / "checkpoint.pt", build_model("fine", arch, len(classes), pretrained=None),
                        args={"arch": arch, "img_size": args.img_size}, model_args=model_args("fine", arch, len(classes), False),
                        class_ids=[c["id"] for c in classes])
        for stage, (argv, report) in runs.items():
            r = run_preflight(argv, report, deadline)
            res[stage] = project(stage, r) if "not_run" not in r and "failed" not in r else r
    totals = [r.get("projected_total_s") for r in res.values()]
    res["projected_total_h"] = round(sum(totals) / 3600, 2) if None not in totals else None
    return res


def main(args):
    if args.smoke:
        args.img_size, args.batch_size, args.steps, args.warmup, args.images, args.preflight_steps = 64, 2, 2, 1, 8, 1
    args.arch = args.arch or ("resnet18" if args.smoke else "senet154")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type != "cuda" and not args.smoke:
        sys.exit("bench/gpu.py: no CUDA device (use --smoke for a dry run on the CPU)")
    torch.backends.cudnn.benchmark = True
    res = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({platform.processor() or 'smoke'})",
           "smoke": args.smoke, "torch": torch.__version__, "cuda": torch.version.cuda, "arch": args.arch,
           "img_size": args.img_size, "batch_size": args.batch_size, "cpu_cores": len(os.sched_getaffinity(0)),
           "tf32_conv": torch.backends.cudnn.allow_tf32, "tf32_matmul": torch.backends.cuda.matmul.allow_tf32}
    out = Path(args.out)

    def save(phase):
        res["phases_done"] = res.get("phases_done", []) + [phase]
        out.write_text(json.dumps(res, indent=2) + "\n")
        print(f"{phase}: done ({time.time() - t_start:.0f} s)", flush=True)

    t_start = time.time()
    print(f"{res['device']}: {args.arch} at {args.img_size} px", flush=True)

    # 1. training, three ways (the coarse model: what stage 1 trains at 448 px)
    model = build_model("coarse", args.arch, K, pretrained=None)
    res["train_images_per_s"], res["train_peak_gpu_mb"] = {}, {}
    for name, amp, cl in (("fp32", "off", False), ("bf16", "bf16", False), ("bf16_channels_last", "bf16", True)):
        rate, mb, _ = train_rate(model, device, amp, cl, args)
        res["train_images_per_s"][name], res["train_peak_gpu_mb"][name] = round(rate, 1), mb
        save(f"train {name}")
    # + compile (--compile), on a copy: the later phases stay eager
    problem = ("skipped in --smoke (its compile takes minutes on a CPU)" if args.smoke else "skipped (--skip-compile)"
               if args.skip_compile else devices.compile_problem(device))
    if problem:
        res["train_compile_skipped"] = problem
        print(f"train bf16_channels_last_compile: {problem}", flush=True)
    else:
        rate, mb, warm = train_rate(copy.deepcopy(model), device, "bf16", True, args, compile=True)
        name = "bf16_channels_last_compile"
        res["train_images_per_s"][name], res["train_peak_gpu_mb"][name] = round(rate, 1), mb
        res["train_compile_warmup_s"] = round(warm, 1)
        save(f"train {name}")
    del model
    if device.type == "cuda":
        torch.cuda.empty_cache()

    # 2. can the CPUs feed it? the input pipeline with every core
    rate, workers, n_timed = loader_rate(args, device, per_worker=50)
    res["loader_images_per_s"], res["loader_workers"], res["loader_batches_timed"] = round(rate, 1), workers, n_timed
    save("loader")

    # 3. localization (coarse model, whole images) vs plain prediction
    model = prepare_model(build_model("coarse", args.arch, K, pretrained=None), device)
    data = Synthetic(args.images, args.img_size)
    bs = 4 if args.smoke else 32

    def run_localize():
        with redirect_stderr(io.StringIO()):  # its progress bar
            localize(model, data, Runtime(device, bs, 0, "bf16"), mask_size=(64, 64), threshold=0.5, use_labels=False)
        return len(data)

    def run_predict():
        for _ in predict(model, data, Runtime(device, bs, 0, "bf16")):
            pass
        return len(data)

    res["localize_images_per_s"], res["localize_peak_gpu_mb"] = timed(run_localize, device)
    res["predict_images_per_s"], _ = timed(run_predict, device)
    res["localize_overhead"] = round(res["predict_images_per_s"] / res["localize_images_per_s"], 3)
    mixed = mixed_sizes(args)  # the 800 px drawings at the localization's short side, aspect kept: sizes as they come

    def run_mixed():
        with redirect_stderr(io.StringIO()):
            localize(model, mixed, Runtime(device, bs, 0, "bf16"), mask_size=(64, 64), threshold=0.5, use_labels=False)
        return len(mixed)

    res["localize_mixed_images_per_s"], _ = timed(run_mixed, device)
    res["localize_mixed_sizes"] = len({tuple(s) for s in mixed.transform.output_sizes(mixed.split.sizes)})
    save("localize")
    del model

    # 4. test time: 16 crops an image, batched over images vs the original's batch size 1
    model = prepare_model(build_model("fine", args.arch, K, pretrained=None), device)
    crops = Synthetic(max(2, args.images // 4), args.img_size, crops=16)

    def run_batched():
        score(model, crops, Runtime(device, 2 if args.smoke else 8, 0, "bf16"))
        return len(crops)

    def run_batch1():
        batch1_loop(model, crops, "bf16", device)
        return len(crops)

    res["test_images_per_s"], res["test_peak_gpu_mb"] = timed(run_batched, device)
    res["test_batch1_images_per_s"], _ = timed(run_batch1, device)
    res["tta_speedup_vs_batch1"] = round(res["test_images_per_s"] / res["test_batch1_images_per_s"], 3)
    for k in ("localize_images_per_s", "predict_images_per_s", "test_images_per_s", "test_batch1_images_per_s"):
        res[k] = round(res[k], 2)
    save("test")
    model = crops = None  # the GPU's memory to the preflight's processes
    if device.type == "cuda":
        torch.cuda.empty_cache()

    # 5. the preflight's projection of the whole method, for the original's backbone and a small modern one
    from bench.images import make_images

    res["preflight"] = {}
    with tempfile.TemporaryDirectory(prefix="gpu-data-") as data:
        paths = make_images(ROOT / "bench" / "work", workers=len(os.sched_getaffinity(0)))
        stand_in_dataset(data, paths, SMOKE_STAND_IN if args.smoke else STAND_IN, SMOKE_CLASSES if args.smoke else K)
        for arch in (args.small_arch,) if args.smoke else (args.arch, args.small_arch):  # smoke: three processes, not six
            res["preflight"][arch] = preflight_run(arch, data, args, device, t_start + args.budget_s)
            save(f"preflight {arch}")
    res["wall_s"] = round(time.time() - t_start, 1)
    out.write_text(json.dumps(res, indent=2) + "\n")
    print(json.dumps(res, indent=2), flush=True)


if __name__ == "__main__":
    main(get_args_parser().parse_args())
