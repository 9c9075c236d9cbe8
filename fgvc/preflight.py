"""The preflight (`--preflight` on coarse/train.py, fine/train.py and test.py): the command's own
settings (arch, size, batch, amp, workers, the real data, the device) run for a bounded time, and
what the full run would take at the rates measured.

Each measurement discards its warm-up (worker start-up and the prefetched queue: the first
2 x workers batches; cuDNN autotuning and the allocator: the first training steps) and then
times `--preflight-steps` batches:

- loader:   the stage's data loader alone (its transform, --workers processes, pinned memory);
- step:     the model alone, one batch already on the device, again and again (training: forward,
            backward, SGD step; test: the forward pass of every crop);
- loop:     the real thing: `engine.train_one_epoch` fed by the loader (test: `inference.predict`),
            on other images than the loader's, so that neither reads from a page cache the other
            filled. The projection uses this rate; `limit` says which of loader and step is slower.
- training stages also: one checkpoint save (timed) and a resume of it (`engine.resume_from`,
  then one step), a validation pass (its loader's start included, as every epoch pays it); the
  coarse stage: localization of whole batches of its real pass (sizes mixed as they come);
  the fine stage's crops need masks: the coarse run's (--coarse) when they exist, else a stand-in
  per image (a centred disc of STAND_IN_AREA of the image: the public masks cover 10-15 %).

Everything runs in a temporary directory, removed at the end; the only file written is the report,
`--out/preflight.json` (test.py: beside --submission), with at least `loader_images_per_s`,
`step_images_per_s`, `limit`, `peak_memory_mb`, `projected_epoch_s`, `projected_total_s`.
Peak memory is the GPU memory torch allocated on CUDA, the main process's peak RSS on the CPU.
"""
import json
import math
import resource
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from . import dist, interrupt, outputs
from .atomic import atomic_write
from .cam import localize_shard
from .checkpoint import CHECKPOINT
from .config import CoarseConfig, Runtime
from .datasets import BadImageCounter, EpochSampler, ImageDataset, by_size, make_loader
from .engine import Logger, TrainState, evaluate, make_optimizer, resume_from, set_lr, train_one_epoch, train_step
from .errors import UserError
from .inference import autocast_for, predict, prepare_model, to_device
from .masks import load_masks, masks_path
from .paths import resolve
from .stages import STAGES, build_model, load_stage
from .transforms import ShortSideTransform

REPORT = "preflight.json"
STAND_IN_AREA = 0.125  # of the image: the fine stage's stand-in mask when the coarse run has made none
LOOP_WARMUP = 5  # training steps of the loop before its timing starts (plus 2 x workers)


# ---------------------------------------------------------------- pieces

def subset(split, rows):
    """The split restricted to `rows` (in that order)."""
    rows = np.asarray(rows, np.int64)
    return replace(split, image_ids=split.image_ids[rows], file_names=[split.file_names[r] for r in rows],
                   labels=None if split.labels is None else split.labels[rows], sizes=split.sizes[rows])


def dataset_rows(dataset, rows):
    """A copy of `dataset` over `rows` of its split (its masks too)."""
    d = ImageDataset.__new__(ImageDataset)
    d.__dict__.update(dataset.__dict__)
    d.split = subset(dataset.split, rows)
    if dataset.masks is not None:
        d.masks = _Rows(dataset.masks, rows)
    return d


class _Rows:
    def __init__(self, items, rows):
        self.items, self.rows = items, list(rows)

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        return self.items[self.rows[i]]


def stand_in_masks(n, size):
    """`n` copies of one (h, w) mask: a centred disc of STAND_IN_AREA of the grid."""
    h, w = size
    yy, xx = np.mgrid[:h, :w]
    r2 = STAND_IN_AREA * h * w / math.pi
    disc = (((yy + 0.5 - h / 2) ** 2 + (xx + 0.5 - w / 2) ** 2) <= r2).astype(np.uint8)
    return np.broadcast_to(disc, (n, h, w))


def sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def discard_count(workers):
    """Batches a loader measurement discards: worker start-up and the queue prefetched at iter()."""
    return max(1, 2 * workers)


def _images(batch):
    x = batch[0] if isinstance(batch, (list, tuple)) and torch.is_tensor(batch[0]) else None
    if x is not None:
        return len(x)
    return sum(len(g[0]) for g in batch)  # datasets.size_groups: a list of (x, y, rows, ok)


def loader_rate(loader, discard):
    """Images/s of `loader` alone after its first `discard` batches; returns (rate, last batch)."""
    t0, n, last = None, 0, None
    for i, batch in enumerate(loader):
        if i == discard:
            t0 = time.perf_counter()
        elif i > discard:
            n += _images(batch)
        last = batch
    if t0 is None or n == 0:
        raise UserError(f"--preflight: too few batches to time the loader (need more than {discard + 1})")
    return n / (time.perf_counter() - t0), last


def step_rate(run, device, steps, warmup=3):
    """Calls/s of `run()` after `warmup` calls (the device synchronised at both ends of the timing)."""
    for _ in range(warmup):
        run()
    sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        run()
    sync(device)
    return steps / (time.perf_counter() - t0)


class TimedLoader:
    """A loader that times the loop consuming it: the clock starts when batch `start` is asked for
    and stops at the end (the device synchronised at both), so the steps of batches start .. end-1
    are timed, as the loop runs them."""

    def __init__(self, loader, device, start):
        self.loader, self.device, self.start = loader, device, start
        self.dataset = loader.dataset
        self.t0 = self.t1 = None
        self.timed = 0

    def __len__(self):
        return len(self.loader)

    def __iter__(self):
        for i, batch in enumerate(self.loader):
            if i == self.start:
                sync(self.device)
                self.t0 = time.perf_counter()
            if i >= self.start:
                self.timed += _images(batch)
            yield batch
        sync(self.device)
        self.t1 = time.perf_counter()

    def rate(self):
        return self.timed / (self.t1 - self.t0)


class PeakMemory:
    """Peak memory of the preflight: on CUDA what torch allocated, on the CPU the main process's RSS."""

    def __init__(self, device):
        self.device = torch.device(device)
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)

    @property
    def kind(self):
        return "GPU memory allocated by torch" if self.device.type == "cuda" else "peak RSS of the main process (CPU)"

    def mb(self):
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) / 2**20
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def random_rows(n, count, seed, offset=0):
    """`count` rows of a seeded permutation of range(n) from `offset` on, wrapping round."""
    perm = np.random.default_rng(seed).permutation(n)
    return [int(perm[(offset + i) % n]) for i in range(count)]


# ---------------------------------------------------------------- a training stage

def measure_training(parts, config, *, steps, tmp):
    """The training stage's rates: loader, step, loop, validation, checkpoint save and resume."""
    device, bs, workers = config.device, config.batch_size, config.eval.workers
    discard, warm = discard_count(workers), LOOP_WARMUP + 2 * workers
    n = len(parts.train_set)
    r = {}
    # the loader alone
    rows = random_rows(n, (discard + 1 + steps) * bs, config.seed)
    loader = make_loader(dataset_rows(parts.train_set, rows), bs, workers, device)
    r["loader_images_per_s"], batch = loader_rate(loader, discard)
    del loader
    # the step alone, on one batch already on the device
    model = prepare_model(parts.model, device, config.eval.compile)
    model.train()
    optimizer = make_optimizer(model, config.lr, config.backbone_lr_ratio, name=config.optimizer, weight_decay=config.weight_decay)
    set_lr(optimizer, config.lr, 0, config.epochs)
    scaler = torch.amp.GradScaler(device.type, enabled=config.amp == "fp16")
    autocast = autocast_for(device, config.amp)
    x, y = to_device(batch[0], device), batch[1].to(device)
    r["step_images_per_s"] = bs * step_rate(lambda: train_step(model, x, y, optimizer=optimizer, scaler=scaler, autocast=autocast),
                                            device, steps)
    # the loop: engine.train_one_epoch over other images, from the checkpoint-less start of epoch 1
    state = TrainState(model, optimizer, scaler, Path(tmp) / CHECKPOINT, config, parts.model_args, parts.class_ids, parts.class_info)
    loop_set = dataset_rows(parts.train_set, random_rows(n, (warm + steps) * bs, config.seed, offset=len(rows)))
    loop_steps = math.ceil(len(loop_set) / bs)
    loader = TimedLoader(make_loader(loop_set, bs, workers, device, sampler=EpochSampler(len(loop_set), config.seed)), device, warm)
    train_one_epoch(state, loader, epoch=0, skip=0, steps_per_epoch=loop_steps, bad=BadImageCounter(loop_set.split, config.max_bad_images),
                    logger=Logger(tmp, False))
    r["loop_images_per_s"] = loader.rate()
    del loader
    # one checkpoint save, and a resume of it (then one step with the restored optimizer)
    sync(device)
    t0 = time.perf_counter()
    state.save(0, loop_steps)
    r["save_s"] = time.perf_counter() - t0
    del optimizer, state
    resumed = TrainState(model, make_optimizer(model, config.lr, config.backbone_lr_ratio, name=config.optimizer,
                                               weight_decay=config.weight_decay),
                         torch.amp.GradScaler(device.type, enabled=config.amp == "fp16"), Path(tmp) / CHECKPOINT, config,
                         parts.model_args, parts.class_ids, parts.class_info)
    t0 = time.perf_counter()
    resume_from(resumed, loop_steps)
    loss, _ = train_step(model, x, y, optimizer=resumed.optimizer, scaler=resumed.scaler, autocast=autocast)
    r["resume_s"] = time.perf_counter() - t0
    r["resumed_loss"] = float(loss.detach())
    del resumed
    # validation (its loader starts every epoch: included)
    val = parts.val_set
    val_rows = random_rows(len(val), min(len(val), (discard + steps) * config.eval.batch_size), config.seed)
    val_sub = dataset_rows(val, val_rows)
    t0 = time.perf_counter()
    evaluate(model, val_sub, config.eval)
    r["val_images_per_s"] = len(val_sub) / (time.perf_counter() - t0)
    return model, r


def project_training(r, counts, config):
    """The stage's time at the measured rates: an epoch (training at the loop's rate, the
    validation pass, the saves of --save-every and the epoch's end) and --epochs of them."""
    steps = math.ceil(counts["train"] / config.batch_size)
    saves = 1 + ((steps - 1) // config.save_every if config.save_every else 0)
    train_s = steps * config.batch_size / r["loop_images_per_s"]
    epoch_s = train_s + counts["val"] / r["val_images_per_s"] + saves * r["save_s"]
    return {"steps_per_epoch": steps, "saves_per_epoch": saves, "projected_train_s": train_s, "projected_epoch_s": epoch_s,
            "projected_total_s": config.epochs * epoch_s}


# ---------------------------------------------------------------- localization (coarse)

def localize_sample(dataset, batch_size, count, seed):
    """Whole batches of the localization pass over `dataset` (rows by size, as cam.localize_shard
    orders them), picked at random until `count` images: the mixture of sizes the real pass has."""
    rows = list(range(len(dataset)))
    expected = getattr(dataset.transform, "output_sizes", None)
    rows = by_size(rows, expected(dataset.split.sizes)) if expected else rows
    batches = [rows[i:i + batch_size] for i in range(0, len(rows), batch_size)]
    order = np.random.default_rng(seed).permutation(len(batches))
    picked, n = [], 0
    for b in order:
        if n >= count:
            break
        picked.append(batches[b])
        n += len(batches[b])
    return dataset_rows(dataset, [r for b in sorted(picked) for r in b])


def measure_localization(model, datasets, runtime, *, localize, count, seed):
    """Images/s of `localize(model, dataset, runtime, split_name, on_batch)` over a sample of each
    split (proportional to its size, at least one batch), timed from its first batch on."""
    total = sum(len(d) for d in datasets.values())
    n, t, sizes = 0, 0.0, set()
    for name, d in datasets.items():
        sample = localize_sample(d, runtime.batch_size, max(runtime.batch_size, round(count * len(d) / max(1, total))), seed)
        sizes.update(map(tuple, d.transform.output_sizes(sample.split.sizes)))
        seen = []

        def on_batch(rows, cams):
            seen.append((time.perf_counter(), len(rows)))

        localize(model, sample, runtime, name, on_batch)
        if len(seen) > 1:
            n += sum(k for _, k in seen[1:])
            t += seen[-1][0] - seen[0][0]
    if n == 0:
        raise UserError("--preflight: too few images to time the localization")
    return {"localize_images_per_s": n / t, "localize_sizes": len(sizes)}


# ---------------------------------------------------------------- test time

def measure_scoring(model, dataset, runtime, *, steps, seed):
    """test.py's rates on `dataset` (all its crops): loader, step (the forward pass of one batch's
    crops, again and again), loop (inference.predict over other images)."""
    device, bs, workers = runtime.device, runtime.batch_size, runtime.workers
    discard = discard_count(workers)
    rows = random_rows(len(dataset), (discard + 1 + steps) * bs, seed)
    loader = make_loader(dataset_rows(dataset, rows), bs, workers, device)
    r = {}
    r["loader_images_per_s"], batch = loader_rate(loader, discard)
    del loader
    model = prepare_model(model, device, runtime.compile)
    model.eval()
    autocast = autocast_for(device, runtime.amp)
    x = batch[0]
    x = to_device(x.flatten(0, 1) if x.dim() == 5 else x, device)

    @torch.inference_mode()
    def forward():
        with autocast():
            model(x).float().softmax(1)

    r["step_images_per_s"] = bs * step_rate(forward, device, steps)
    loop_set = dataset_rows(dataset, random_rows(len(dataset), (discard + steps) * bs, seed, offset=len(rows)))
    times = []
    for idx, _, _ in predict(model, loop_set, runtime):
        times.append((time.perf_counter(), len(idx)))
    if len(times) <= discard:
        raise UserError("--preflight: too few batches to time the test pass")
    r["loop_images_per_s"] = sum(k for _, k in times[discard:]) / (times[-1][0] - times[discard - 1][0])
    r["crops_per_image"] = int(batch[0].shape[1]) if batch[0].dim() == 5 else 1
    return r


# ---------------------------------------------------------------- the report

def limit(r):
    return "loader" if r["loader_images_per_s"] < r["step_images_per_s"] else "step"


def _duration(s):
    return f"{s:.1f} s" if s < 120 else (f"{s / 60:.1f} min" if s < 7200 else f"{s / 3600:.1f} h")


def report(path, r, lines):
    """Print the report and write it to `path` (JSON, atomically); `r` holds the numbers."""
    r = {k: (round(v, 3) if isinstance(v, float) else v) for k, v in r.items()}
    text = "\n".join(lines + [f"-> {path}"])
    print(text, flush=True)
    atomic_write(path, lambda f: f.write(json.dumps(r, indent=2) + "\n"), mode="w")
    return r


def common_lines(r, what):
    head = [f"preflight of {r['stage']}: {what}", f"  {r['device']}"]
    rates = [f"  loader alone     {r['loader_images_per_s']:9.1f} images/s  ({r['workers']} workers)",
             f"  step alone       {r['step_images_per_s']:9.1f} images/s",
             f"  the loop         {r['loop_images_per_s']:9.1f} images/s  -> the {r['limit']} is the limit"]
    return head + rates


def memory_line(r):
    return f"  peak memory      {r['peak_memory_mb']:9.0f} MB  ({r['peak_memory_kind']})"


def start(out_dir, report_path, reads, splits):
    """Check and lock what the preflight writes (only the report), as every run does."""
    if dist.world() > 1:
        raise UserError("--preflight runs in one process: start it without torchrun (it measures one device)")
    outputs.claim(out_dir, [("the preflight report", report_path)], reads, splits)


def training_report(stage, parts, config, *, steps, localization=None, counts):
    """Preflight of a training stage (`localization`: the coarse stage's pass, or None). Returns the report dict."""
    device = config.device
    memory = PeakMemory(device)
    try:
        with tempfile.TemporaryDirectory(prefix="fgvc-preflight-") as tmp:
            model, r = measure_training(parts, config, steps=steps, tmp=tmp)
            if localization is not None:
                r.update(localization(model))
    finally:
        interrupt.forget_saved()  # the temporary checkpoint is gone: a stop message must not point at it
    r.update(project_training(r, counts, config))
    r.update({"stage": stage, "device": str(device), "arch": parts.model_args["arch"], "batch_size": config.batch_size,
              "amp": config.amp, "workers": config.eval.workers, "epochs": config.epochs, "images": counts,
              "limit": limit(r), "peak_memory_mb": memory.mb(), "peak_memory_kind": memory.kind})
    if localization is not None:
        r["projected_localize_s"] = sum(counts.values()) / r["localize_images_per_s"]
        r["projected_total_s"] += r["projected_localize_s"]
    return r


def training_lines(r, img_size):
    lines = common_lines(r, f"{r['arch']} at {img_size} px, batch {r['batch_size']}, amp {r['amp']}")
    lines += [f"  validation       {r['val_images_per_s']:9.1f} images/s",
              f"  checkpoint       save {r['save_s']:.2f} s, resume + one step {r['resume_s']:.2f} s (loss {r['resumed_loss']:.3f})"]
    if "localize_images_per_s" in r:
        lines.append(f"  localization     {r['localize_images_per_s']:9.1f} images/s  ({r['localize_sizes']} sizes)")
    c = r["images"]
    lines += [memory_line(r),
              f"  projected: an epoch {_duration(r['projected_epoch_s'])} ({c['train']} train images at the loop's rate, "
              f"{c['val']} val, {r['saves_per_epoch']} save(s)); {r['epochs']} epochs {_duration(r['epochs'] * r['projected_epoch_s'])}"
              + (f" + localization of {sum(c.values())} images {_duration(r['projected_localize_s'])}" if "projected_localize_s" in r else "")
              + f" = {_duration(r['projected_total_s'])}"]
    return lines


# ---------------------------------------------------------------- the three commands

def _counts(splits):
    return {name: len(s) for name, s in splits.items()}


def coarse(args, config, parts, splits, pretrained):
    """coarse/train.py --preflight: training, a checkpoint and its resume, validation, and
    localization of a sample of every split; projects the stage (epochs + localization)."""
    if args.localize_only:
        raise UserError("--preflight measures training and localization: drop --localize-only")
    out = resolve(args.out)
    path = out / REPORT
    start(out, path, [("--pretrained", pretrained)], splits.values())

    def localize_one(model, dataset, runtime, name, on_batch):
        localize_shard(model, dataset, runtime, mask_size=tuple(args.mask_size), threshold=args.cam_threshold,
                       use_labels=name == "train" and args.cam_class == "label", max_bad=args.max_bad_images, on_batch=on_batch)

    whole = {name: ImageDataset(s, ShortSideTransform(args.resize), args.seed) for name, s in splits.items()}
    count = args.preflight_steps * config.eval.batch_size

    def localization(model):
        return measure_localization(model, whole, config.eval, localize=localize_one, count=count, seed=args.seed)

    r = training_report("coarse/train.py", parts, config, steps=args.preflight_steps, localization=localization, counts=_counts(splits))
    return report(path, r, training_lines(r, args.img_size))


def masks_or_stand_in(coarse_dir, split):
    """The coarse run's masks of `split` when its file exists, else stand-in masks; and which."""
    if masks_path(coarse_dir, split.name).is_file():
        return load_masks(coarse_dir, split), str(masks_path(coarse_dir, split.name))
    return stand_in_masks(len(split), tuple(CoarseConfig["mask_size"].default)), f"stand-in discs of {STAND_IN_AREA:g} of the image"


def fine(args, config, make_parts, splits, pretrained):
    """fine/train.py --preflight: training on crops (around the --coarse masks, or stand-ins),
    a checkpoint and its resume, validation; projects the stage (epochs). `make_parts(masks)`
    builds the stage's model and datasets on {split: masks}."""
    out = resolve(args.out)
    path = out / REPORT
    start(out, path, [("--pretrained", pretrained)], splits.values())
    got = {name: masks_or_stand_in(resolve(args.coarse), s) for name, s in splits.items()}
    r = training_report("fine/train.py", make_parts({n: m for n, (m, _) in got.items()}), config, steps=args.preflight_steps,
                        counts=_counts(splits))
    r["masks"] = got["train"][1]
    return report(path, r, training_lines(r, args.img_size) + [f"  masks: {r['masks']}"])


def test(args, classes, splits, device, path):
    """test.py --preflight: the test-time pass (every crop) on a sample of --split with the
    --model checkpoint (before training: an untrained model of that stage's defaults, said so);
    projects the command (val too when it scores val)."""
    stage = STAGES[args.model]
    where = resolve(getattr(args, stage.name))
    memory = PeakMemory(device)
    if (where / CHECKPOINT).is_file():
        model, ckpt = load_stage(where, stage.name, classes, device)
        source = str(where / CHECKPOINT)
    else:
        ckpt = {"args": stage.config.defaults()}
        model = build_model(stage.name, ckpt["args"]["arch"], len(classes))
        source = f"no {where / CHECKPOINT} yet: an untrained {ckpt['args']['arch']} at {ckpt['args']['img_size']} px, that stage's defaults"
    split = splits[args.split]
    masks, masks_source = masks_or_stand_in(resolve(args.coarse), split)
    dataset = stage.scoring_dataset(ckpt, split, masks=masks, seed=args.seed, factors=args.tta_factors,
                                    mirror_factors=args.tta_mirror_factors, centre=args.crop_centre)
    runtime = Runtime(torch.device(device), args.batch_size, args.workers, args.amp, args.compile)
    r = measure_scoring(model, dataset, runtime, steps=args.preflight_steps, seed=args.seed)
    scored = {"val": len(splits["val"])} if "val" in splits and args.split != "val" else {}
    scored[split.name] = len(split)
    r.update({"stage": "test.py", "device": str(device), "model": source, "masks": masks_source, "batch_size": runtime.batch_size,
              "amp": runtime.amp, "workers": runtime.workers, "images": scored, "limit": limit(r),
              "peak_memory_mb": memory.mb(), "peak_memory_kind": memory.kind,
              "projected_epoch_s": len(split) / r["loop_images_per_s"],
              "projected_total_s": sum(scored.values()) / r["loop_images_per_s"]})
    lines = common_lines(r, f"--model {args.model}, {r['crops_per_image']} crop(s) an image, batch {r['batch_size']}, amp {r['amp']}")
    lines += [memory_line(r), f"  model: {source}", f"  masks: {masks_source}",
              f"  projected: {args.split} ({len(split)} images) {_duration(r['projected_epoch_s'])}; the command "
              f"({', '.join(f'{k} {v}' for k, v in scored.items())}) {_duration(r['projected_total_s'])}"]
    return report(path, r, lines)
