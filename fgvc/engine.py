"""The training engine shared by the coarse and the fine stage, and batched prediction.

SGD with Nesterov momentum 0.9 and weight decay 5e-4; the backbone learns at
`backbone_lr_ratio` (0.1) times the head's rate; both follow the original's per-epoch triangle.
Mixed precision with torch.autocast (bf16, or fp16 with a GradScaler); a checkpoint at the end of
every epoch and every `save_every` steps; `resume` continues from it, mid-epoch included.
"""
import json
import math
import random
import signal
import time
from contextlib import nullcontext
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from . import dist, interrupt
from .checkpoint import check_matches, check_progress, check_resume, load_checkpoint, load_weights, save_checkpoint, save_epoch_weights, unwrap
from .datasets import EpochSampler, make_loader, shard
from .errors import BadImagesError, CheckpointError, NonFiniteLoss, UserError, first_line
from .metrics import topk

CHECKPOINT = "checkpoint.pt"
LOG, TB = "log.jsonl", "tb"  # the JSON line per epoch, the TensorBoard folder


def seed_everything(seed):
    """random, numpy and torch (all devices). Samples seed their own generators (datasets.py)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def triangle(epoch, epochs):
    """The original's lr factor for 0-based `epoch` of `epochs`: rises to 1 mid-run, then falls."""
    return 1.0 - abs(2.0 * (epoch + 1) / (epochs + 1) - 1.0)


def autocast_for(device, amp):
    """A context factory: torch.autocast for 'bf16'/'fp16', a no-op for 'off'."""
    device = torch.device(device)
    if amp == "off":
        return nullcontext
    if amp == "fp16" and device.type != "cuda":
        raise UserError("--amp fp16 needs a CUDA device; use --amp bf16 or off on the CPU")
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    return partial(torch.autocast, device_type=device.type, dtype=dtype)


def prepare_model(model, device):
    """Move to the device in channels_last (faster on CUDA and on the CPU: Lite0 1.25x in training,
    1.5x in evaluation here; README, Performance); cudnn.benchmark on CUDA."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    return model.to(device, memory_format=torch.channels_last)


def to_device(x, device):
    """An image batch on the device, in the model's channels_last layout."""
    x = x.to(device, non_blocking=True)
    return x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x


class BadImageCounter:
    """Distinct unreadable images seen by this process; stops the run past `limit`."""

    def __init__(self, split, limit):
        self.split, self.limit, self.rows = split, limit, set()

    def add(self, rows):
        self.rows.update(int(r) for r in rows)

    def check(self, total):
        if total > self.limit:
            paths = [str(self.split.path(r)) for r in sorted(self.rows)[:10]]
            raise BadImagesError(
                f"{self.split.json_path.name}: {int(total)} unreadable images, more than --max-bad-images "
                f"{self.limit} (first: {', '.join(paths)})"
            )

    def report(self):
        if self.rows:
            names = ", ".join(str(self.split.path(r)) for r in sorted(self.rows)[:5])
            print(f"skipped {len(self.rows)} unreadable {self.split.name} images (first: {names})", flush=True)


@torch.inference_mode()
def predict(model, dataset, batch_size, workers, device, amp, rows=None, desc=None):
    """Yield (rows, probabilities (B, K) float32 numpy, ok (B,) bool) over `dataset`.

    A 5-D batch (B, crops, 3, H, W) is scored as B*crops images and the softmax averaged over the
    crops. `rows` restricts (and orders) the rows, e.g. this process's shard.
    """
    model.eval()
    autocast = autocast_for(device, amp)
    rows = list(range(len(dataset))) if rows is None else rows
    loader = make_loader(dataset, batch_size, workers, device, sampler=rows)
    for x, _, idx, ok in tqdm(loader, desc=desc, disable=desc is None or not dist.is_main(), leave=False):
        crops = x.shape[1] if x.dim() == 5 else 1
        x = to_device(x.flatten(0, 1) if x.dim() == 5 else x, device)
        with autocast():
            logits = model(x)
        probs = logits.float().softmax(1).view(len(idx), crops, -1).mean(1)
        yield idx.numpy(), probs.cpu().numpy(), ok.numpy()


def evaluate(model, dataset, batch_size, workers, device, amp, ks=(1, 2, 3, 4, 5)):
    """Top-k errors of `model` on a labelled dataset, over all processes (each scores a shard).

    Unreadable images are left out (and counted by the training run's own policy).
    """
    hits = np.zeros(len(ks))
    n = 0
    rows = shard(len(dataset), dist.rank(), dist.world())
    for idx, probs, ok in predict(model, dataset, batch_size, workers, device, amp, rows, desc="val"):
        labels = dataset.split.labels[idx[ok]]
        top = topk(probs[ok], max(ks)) == labels[:, None]
        hits += [top[:, :k].any(1).sum() for k in ks]
        n += int(ok.sum())
    totals = dist.all_sum(list(hits) + [n], device)
    if totals[-1] == 0 and len(dataset):
        raise BadImagesError(f"{dataset.split.json_path}: no readable image among its {len(dataset)}; nothing to evaluate on")
    return {k: 1.0 - h / max(1.0, totals[-1]) for k, h in zip(ks, totals[:-1])}


def make_optimizer(model, lr, backbone_lr_ratio, name="sgd", weight_decay=5e-4):
    """The original's SGD (Nesterov, momentum 0.9), or AdamW for short from-scratch runs."""
    body, head = unwrap(model).param_groups()
    groups = [{"params": body, "lr_ratio": backbone_lr_ratio}, {"params": head, "lr_ratio": 1.0}]
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay)
    return torch.optim.SGD(groups, lr=lr, momentum=0.9, nesterov=True, weight_decay=weight_decay)


def describe_recipe(model, cfg):
    """One paragraph: the effective training recipe, printed at the start of every run."""
    net = unwrap(model)
    frozen = ", ".join(net.frozen) if net.frozen else "nothing"
    bn = f", their batch norm {'updating (--frozen-bn train)' if net.frozen_bn == 'train' else 'fixed (--frozen-bn eval)'}" if net.frozen else ""
    opt = cfg.get("optimizer", "sgd")
    opt = "SGD, Nesterov momentum 0.9" if opt == "sgd" else "AdamW"
    ratio = cfg["backbone_lr_ratio"]
    return (f"recipe: {opt}, weight decay {cfg.get('weight_decay', 5e-4):g}; peak lr head {cfg['lr']:g}, "
            f"backbone {cfg['lr'] * ratio:g} (x{ratio:g}); the original's triangle over {cfg['epochs']} epochs; "
            f"batch {cfg['batch_size']} x {dist.world()} process(es); frozen: {frozen}{bn}; "
            f"Dropout2d {net.dropout.p:g}; amp {cfg['amp']}")


def set_lr(optimizer, lr, epoch, epochs):
    factor = triangle(epoch, epochs)
    for g in optimizer.param_groups:
        g["lr"] = lr * g["lr_ratio"] * factor
    return lr * factor


class Logger:
    """tensorboardX scalars and one JSON line per epoch; only the main process writes."""

    def __init__(self, out_dir, enabled):
        self.enabled = enabled
        self.path = Path(out_dir) / LOG
        self.tb = None
        if enabled:
            from tensorboardX import SummaryWriter

            self.tb = SummaryWriter(str(Path(out_dir) / TB))

    def scalar(self, tag, value, step):
        if self.tb is not None:
            self.tb.add_scalar(tag, value, step)

    def epoch(self, record):
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        self.tb.flush()

    def close(self):
        if self.tb is not None:
            self.tb.close()


def step_seed(seed, epoch, step_in_epoch):
    """The torch seed of one training step (dropout): a run resumed at any step draws what the
    uninterrupted run drew there."""
    return int(np.random.SeedSequence([seed, epoch, step_in_epoch]).generate_state(1, np.uint64)[0] >> 1)


def resume_from(ckpt_path, cfg, model, optimizer, scaler, class_ids, steps_per_epoch):
    """Load a checkpoint to continue its run; returns (epoch, step, step_in_epoch). Every way a
    checkpoint can disagree with the command, or with itself, is a one-line CheckpointError."""
    ckpt = load_checkpoint(ckpt_path)
    check_resume(ckpt, ckpt_path, cfg)
    check_matches(ckpt, ckpt_path, class_ids=class_ids)
    check_progress(ckpt, ckpt_path, cfg["epochs"], steps_per_epoch)
    load_weights(unwrap(model), ckpt)
    try:
        optimizer.load_state_dict(ckpt["optimizer"])
        if ckpt["scaler"]:
            scaler.load_state_dict(ckpt["scaler"])
    except (ValueError, KeyError, TypeError, IndexError, RuntimeError) as e:
        raise CheckpointError(f"{ckpt_path}: its optimizer state does not fit the model ({first_line(e)})") from None
    return ckpt["epoch"], ckpt["step"], ckpt["step_in_epoch"]


def fit(model, train_set, val_set, cfg, out_dir, class_ids, model_args, device):
    """Train `model` on `train_set`, validating on `val_set` every epoch; returns the model.

    `cfg` is the dict of the stage's flags (epochs, batch_size, lr, backbone_lr_ratio, amp,
    workers, seed, resume, save_every, max_bad_images, log_every, sync_bn, ...): it is stored in
    every checkpoint, and a resumed run must agree with it on checkpoint.ESSENTIAL.
    SIGTERM / SIGUSR1 end the run after the current step with a checkpoint at that step
    (`interrupt.Stopped`, exit code 143); `--resume` continues from it, bit for bit.
    """
    out_dir = Path(out_dir)
    ckpt_path = out_dir / CHECKPOINT
    main = dist.is_main()
    epochs, batch_size = cfg["epochs"], cfg["batch_size"]
    model = prepare_model(model, device)
    optimizer = make_optimizer(model, cfg["lr"], cfg["backbone_lr_ratio"], cfg.get("optimizer", "sgd"), cfg.get("weight_decay", 5e-4))
    scaler = torch.amp.GradScaler(torch.device(device).type, enabled=cfg["amp"] == "fp16")
    autocast = autocast_for(device, cfg["amp"])
    steps_per_epoch = math.ceil(math.ceil(len(train_set) / dist.world()) / batch_size)

    start_epoch, step, skip = 0, 0, 0
    if ckpt_path.exists() and not cfg["resume"]:
        raise CheckpointError(f"{ckpt_path} exists: pass --resume to continue that run, or choose another --out")
    if cfg["resume"] and ckpt_path.exists():
        start_epoch, step, skip = resume_from(ckpt_path, cfg, model, optimizer, scaler, class_ids, steps_per_epoch)
        interrupt.progress(saved=f"{ckpt_path} (epoch {start_epoch}, step {skip} into the next)")
        if main:
            print(f"resuming {ckpt_path}: epoch {start_epoch + 1}/{epochs}, step {step} ({skip} into the epoch)", flush=True)
    elif cfg["resume"] and main:
        print(f"--resume: no checkpoint in {out_dir} yet, starting from scratch", flush=True)

    if cfg.get("sync_bn") and torch.device(device).type != "cuda":
        raise UserError("--sync-bn needs CUDA devices (SyncBatchNorm has no CPU kernel)")
    if dist.enabled():
        if cfg.get("sync_bn"):
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        ids = [device.index] if torch.device(device).type == "cuda" else None
        model = torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)

    if main:
        print(describe_recipe(model, cfg), flush=True)
    sampler = EpochSampler(len(train_set), cfg["seed"], dist.rank(), dist.world())
    loader = make_loader(train_set, batch_size, cfg["workers"], device, sampler=sampler, persistent=True)
    logger = Logger(out_dir, main)
    bad = BadImageCounter(train_set.split, cfg["max_bad_images"])

    def save(epoch_done, step_in_epoch):
        if main:
            save_checkpoint(ckpt_path, model, optimizer, scaler, epoch_done, step, step_in_epoch, cfg, model_args, class_ids)
        interrupt.progress(saved=f"{ckpt_path} (epoch {epoch_done}, step {step_in_epoch} into the next)")
        dist.barrier()

    def stop_if_asked(votes, where):
        if votes > 0:
            signum = interrupt.requested() or signal.SIGTERM
            raise interrupt.Stopped(signum, interrupt.stop_message(signum) if where is None else where)

    with interrupt.polling():
        for epoch in range(start_epoch, epochs):
            lr = set_lr(optimizer, cfg["lr"], epoch, epochs)
            sampler.set_epoch(epoch, start=skip * batch_size)
            model.train()
            loss_sum, seen, t0 = 0.0, 0, time.time()
            bar = tqdm(loader, total=steps_per_epoch, initial=skip, desc=f"epoch {epoch + 1}/{epochs}", disable=not main, dynamic_ncols=True)
            step_in_epoch = skip
            for x, y, idx, ok in bar:
                interrupt.progress(where=f"epoch {epoch + 1}/{epochs}, step {step_in_epoch + 1} of {steps_per_epoch}")
                if not ok.all():
                    bad.add(idx[~ok].tolist())
                keep = ok if ok.any() else torch.ones_like(ok)
                x, y = to_device(x[keep], device), y[keep].to(device, non_blocking=True)
                torch.manual_seed(step_seed(cfg["seed"], epoch, step_in_epoch))  # dropout
                with autocast():
                    logits = model(x)
                loss = F.cross_entropy(logits.float(), y)
                if not ok.any():
                    loss = loss * 0.0
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
                step += 1
                step_in_epoch += 1
                batch_loss, batch_n, n_bad, votes = dist.all_sum(
                    [loss.item() * len(y) if ok.any() else 0.0, float(ok.sum()), float(len(bad.rows)), float(interrupt.requested() is not None)], device)
                if not math.isfinite(batch_loss):
                    kept = f"the last good checkpoint {ckpt_path} is kept" if ckpt_path.exists() else "no checkpoint was written yet"
                    raise NonFiniteLoss(
                        f"non-finite loss ({batch_loss / max(1.0, batch_n)}) at epoch {epoch + 1}, step {step_in_epoch} of the epoch "
                        f"(global step {step}); {kept}. Lower --lr or try --amp off"
                    )
                bad.check(n_bad)
                loss_sum += batch_loss
                seen += batch_n
                rate = seen / max(1e-9, time.time() - t0)
                if main:
                    bar.set_postfix(loss=f"{batch_loss / max(1.0, batch_n):.3f}", lr=f"{lr:.2e}", img_s=f"{rate:.1f}")
                    if step % cfg["log_every"] == 0:
                        logger.scalar("train/loss", batch_loss / max(1.0, batch_n), step)
                if votes > 0:
                    save(epoch, step_in_epoch)
                    bar.close()
                    stop_if_asked(votes, None)
                if cfg["save_every"] and step % cfg["save_every"] == 0 and step_in_epoch < steps_per_epoch:
                    save(epoch, step_in_epoch)
            bar.close()
            if skip < steps_per_epoch and seen == 0:
                raise BadImagesError(f"{train_set.split.json_path}: no readable image in epoch {epoch + 1} "
                                     f"({len(bad.rows)} unreadable of {len(train_set)}); nothing to train on")
            skip = 0
            train_time = time.time() - t0
            dist.sync_buffers(unwrap(model))  # evaluate, save and localize with rank 0's statistics
            errors = evaluate(unwrap(model), val_set, cfg["eval_batch_size"], cfg["workers"], device, cfg["amp"]) if val_set is not None else {}
            save(epoch + 1, 0)
            if cfg.get("keep_epochs") and main:
                save_epoch_weights(out_dir, epoch + 1, model)
            record = {
                "epoch": epoch + 1,
                "step": step,
                "lr": lr,
                "train_loss": loss_sum / max(1.0, seen),
                "images_per_s": seen / max(1e-9, train_time),
                "time_s": round(time.time() - t0, 2),
                **{f"val_top{k}_err": e for k, e in errors.items()},
            }
            if main:
                logger.scalar("train/lr", lr, epoch + 1)
                logger.scalar("train/epoch_loss", record["train_loss"], epoch + 1)
                for k, e in errors.items():
                    logger.scalar(f"val/top{k}_err", e, epoch + 1)
                logger.epoch(record)
                shown = ", ".join(f"top-{k} err {errors[k]:.3f}" for k in (1, 5) if k in errors)
                print(f"epoch {epoch + 1}/{epochs}: loss {record['train_loss']:.4f}, {record['images_per_s']:.1f} img/s" + (f", val {shown}" if shown else ""), flush=True)
            interrupt.progress(where=f"the end of epoch {epoch + 1}/{epochs}")
            stop_if_asked(dist.all_sum([float(interrupt.requested() is not None)], device)[0], None)
    bad.report()
    logger.close()
    return unwrap(model)
