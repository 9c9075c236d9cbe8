"""Training, shared by the coarse and the fine stage: `fit` wires resume, distribution, saving and
logging around `train_one_epoch` (the loop over batches, `train_step` each) and `evaluate`.

SGD with Nesterov momentum 0.9 and weight decay (--weight-decay); the backbone learns at
`backbone_lr_ratio` times the head's rate; both follow the original's per-epoch triangle.
Mixed precision with torch.autocast (bf16, or fp16 with a GradScaler: a step it skips for an
overflow is counted, and only --max-overflow-steps of them in a row stop the run); a checkpoint at
the end of every epoch and every `save_every` steps; `resume` continues from it, mid-epoch included.
"""
import json
import math
import random
import signal
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from . import dist, interrupt
from .checkpoint import (CHECKPOINT, check_matches, check_progress, check_resume, epoch_weights_path, load_checkpoint, load_weights,
                         save_checkpoint, save_epoch_weights, unwrap)
from .datasets import BadImageCounter, EpochSampler, make_loader, shard
from .errors import BadImagesError, CheckpointError, NonFiniteLoss, UserError, first_line
from .inference import autocast_for, predict, prepare_model, to_device
from .metrics import topk
from .stages import STAGES

LOG, TB = "log.jsonl", "tb"  # the JSON line per epoch, the TensorBoard folder


def fit_outputs(out, keep_epochs=0):
    """What `fit` writes into `out` (for outputs.claim): [(label, path)] of files and [(label, path)]
    of folders. `keep_epochs`: the number of epochs whose weights --keep-epochs keeps (0: none)."""
    out = Path(out)
    files = [("the checkpoint", out / CHECKPOINT), ("the log", out / LOG)]
    files += [("--keep-epochs weights", epoch_weights_path(out, e)) for e in range(1, keep_epochs + 1)]
    return files, [("the TensorBoard folder", out / TB)]


def seed_everything(seed):
    """random, numpy and torch (all devices). Samples seed their own generators (datasets.py)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def triangle(epoch, epochs):
    """The original's lr factor for 0-based `epoch` of `epochs`: rises to 1 mid-run, then falls."""
    return 1.0 - abs(2.0 * (epoch + 1) / (epochs + 1) - 1.0)


def evaluate(model, dataset, runtime, ks=(1, 2, 3, 4, 5)):
    """Top-k errors of `model` on a labelled dataset, over all processes (each scores a shard).

    Unreadable images are left out (and counted by the training run's own policy).
    """
    hits = np.zeros(len(ks))
    n = 0
    rows = shard(len(dataset), dist.rank(), dist.world())
    for idx, probs, ok in predict(model, dataset, runtime, rows=rows, desc="val"):
        labels = dataset.split.labels[idx[ok]]
        top = topk(probs[ok], max(ks)) == labels[:, None]
        hits += [top[:, :k].any(1).sum() for k in ks]
        n += int(ok.sum())
    totals = dist.all_sum(list(hits) + [n], runtime.device)
    if totals[-1] == 0 and len(dataset):
        raise BadImagesError(f"{dataset.split.json_path}: no readable image among its {len(dataset)}; nothing to evaluate on")
    return {k: 1.0 - h / max(1.0, totals[-1]) for k, h in zip(ks, totals[:-1])}


def make_optimizer(model, lr, backbone_lr_ratio, *, name, weight_decay):
    """The original's SGD (Nesterov, momentum 0.9), or AdamW for short from-scratch runs (--optimizer)."""
    body, head = unwrap(model).param_groups()
    groups = [{"params": body, "lr_ratio": backbone_lr_ratio}, {"params": head, "lr_ratio": 1.0}]
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay)
    return torch.optim.SGD(groups, lr=lr, momentum=0.9, nesterov=True, weight_decay=weight_decay)


def describe_recipe(model, config):
    """One paragraph: the effective training recipe, printed at the start of every run."""
    net = unwrap(model)
    frozen = ", ".join(net.frozen) if net.frozen else "nothing"
    bn = f", their batch norm {'updating (--frozen-bn train)' if net.frozen_bn == 'train' else 'fixed (--frozen-bn eval)'}" if net.frozen else ""
    opt = "SGD, Nesterov momentum 0.9" if config.optimizer == "sgd" else "AdamW"
    ratio = config.backbone_lr_ratio
    return (f"recipe: {opt}, weight decay {config.weight_decay:g}; peak lr head {config.lr:g}, "
            f"backbone {config.lr * ratio:g} (x{ratio:g}); the original's triangle over {config.epochs} epochs; "
            f"batch {config.batch_size} x {dist.world()} process(es); frozen: {frozen}{bn}; "
            f"Dropout2d {net.dropout.p:g}; amp {config.amp}" + ("; torch.compile (--compile)" if config.eval.compile else ""))


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

    def epoch_end(self, record, errors, epochs):
        """The epoch's scalars, its JSON line, and one line on stdout."""
        epoch = record["epoch"]
        self.scalar("train/lr", record["lr"], epoch)
        self.scalar("train/epoch_loss", record["train_loss"], epoch)
        for k, e in errors.items():
            self.scalar(f"val/top{k}_err", e, epoch)
        self.epoch(record)
        shown = ", ".join(f"top-{k} err {errors[k]:.3f}" for k in (1, 5) if k in errors)
        skipped = f", {record['fp16_skipped_steps']} fp16 steps skipped (overflow)" if "fp16_skipped_steps" in record else ""
        print(f"epoch {epoch}/{epochs}: loss {record['train_loss']:.4f}, {record['images_per_s']:.1f} img/s{skipped}"
              + (f", val {shown}" if shown else ""), flush=True)

    def close(self):
        if self.tb is not None:
            self.tb.close()


def step_seed(seed, epoch, step_in_epoch, rank=0):
    """The torch seed of one training step (dropout), per (seed, epoch, step, rank): a run resumed
    at any step draws what the uninterrupted run drew there, and under torchrun each process draws
    its own dropout (rank 0 draws what a single process draws: a trailing 0 leaves SeedSequence as is)."""
    return int(np.random.SeedSequence([seed, epoch, step_in_epoch, rank]).generate_state(1, np.uint64)[0] >> 1)


def train_step(model, x, y, *, optimizer, scaler=None, autocast=None, weight=None):
    """One optimizer step on the batch (x, y): forward (under `autocast`), cross-entropy in fp32
    (times `weight` when given), backward (through `scaler`, fp16's GradScaler, when it is on), step.
    Returns (loss, skipped): `skipped` is None without a scaler, else a 0-d bool on the device, True
    when the scaler found an inf / NaN gradient and skipped the step (the weights unchanged). Read
    from the scale it lowers exactly then (update() halves it on a skip, never otherwise), so the
    host does not wait for it."""
    with (autocast or nullcontext)():
        logits = model(x)
    loss = F.cross_entropy(logits.float(), y)
    if weight is not None:
        loss = loss * weight
    optimizer.zero_grad(set_to_none=True)
    if scaler is None or not scaler.is_enabled():
        loss.backward()
        optimizer.step()
        return loss, None
    scaler.scale(loss).backward()
    scale = scaler._scale.clone()  # the scale this step used (a device tensor; get_scale() would wait for it)
    scaler.step(optimizer)
    scaler.update()
    return loss, (scaler._scale < scale).reshape(())


@dataclass
class TrainState:
    """What a checkpoint holds of a run in progress, and where it goes."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    path: Path  # <out>/checkpoint.pt
    config: object  # config.TrainConfig
    model_args: dict
    class_ids: list
    class_info: dict = None  # names, supercategories, train counts (checkpoint.class_info)
    step: int = 0  # optimizer steps so far
    overflow_run: object = None  # fp16: the steps skipped in a row so far (a device tensor, carried across epochs)

    def save(self, epoch_done, step_in_epoch):
        """The checkpoint at this step (main process), and where the interrupt message points."""
        if dist.is_main():
            save_checkpoint(self.path, self.model, optimizer=self.optimizer, scaler=self.scaler,
                            progress=(epoch_done, self.step, step_in_epoch), args=self.config.flags,
                            model_args=self.model_args, class_ids=self.class_ids, info=self.class_info)
        interrupt.progress(saved=f"{self.path} (epoch {epoch_done}, step {step_in_epoch} into the next)")
        dist.barrier()


def resume_from(state, steps_per_epoch):
    """Load `state.path` to continue its run; returns (epoch, step_in_epoch) and sets state.step.
    Every way a checkpoint can disagree with the command (the flags its stage must keep, the
    classes, the run's length), or with itself, is a one-line CheckpointError."""
    path, config = state.path, state.config
    ckpt = load_checkpoint(path)
    stage = STAGES[state.model_args["kind"]]
    saved, now = (vars(stage.config.from_args(f)) for f in (ckpt["args"], config.flags))  # whole configs, old checkpoints too
    applied = check_resume(saved, path, now, stage.resume_keeps)
    if applied and dist.is_main():
        print(f"--resume: changed flags applied from here on: {'; '.join(applied)}", flush=True)
    check_matches(ckpt, path, class_ids=state.class_ids)
    check_progress(ckpt, path, config.epochs, steps_per_epoch)
    load_weights(unwrap(state.model), ckpt)
    try:
        state.optimizer.load_state_dict(ckpt["optimizer"])
        if ckpt["scaler"]:
            state.scaler.load_state_dict(ckpt["scaler"])
    except (ValueError, KeyError, TypeError, IndexError, RuntimeError) as e:
        raise CheckpointError(f"{path}: its optimizer state does not fit the model ({first_line(e)})") from None
    state.step = ckpt["step"]
    return ckpt["epoch"], ckpt["step_in_epoch"]


def distribute(model, config):
    """Under torchrun: DistributedDataParallel (SyncBatchNorm first with --sync-bn)."""
    device = config.device
    if config.sync_bn and device.type != "cuda":
        raise UserError("--sync-bn needs CUDA devices (SyncBatchNorm has no CPU kernel)")
    if not dist.enabled():
        return model
    if config.sync_bn:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    ids = [device.index] if device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)


def stop_if_asked(votes):
    """Raise interrupt.Stopped when any process received SIGTERM / SIGUSR1 (`votes` > 0)."""
    if votes > 0:
        signum = interrupt.requested() or signal.SIGTERM
        raise interrupt.Stopped(signum, interrupt.stop_message(signum))


@dataclass
class Window:
    """What Tally.read returns: sums over all processes of a window of steps."""

    loss: float  # summed loss of the images whose loss was finite
    n: int  # readable images trained on
    counted: float  # images in `loss` (n, less those of fp16 steps whose loss was not finite)
    bad: float  # unreadable images so far
    votes: float  # processes asked to stop
    skipped: int  # fp16 steps the GradScaler skipped
    first: object  # the step (0-based in the epoch) that stops the run, the earliest of any process; or None

    @property
    def mean_loss(self):
        return self.loss / max(1.0, self.counted)


class Tally:
    """The loss of the steps since the last read, kept on the device with the step that stops the
    run: the loop never waits for the device. `read` is one collective and one device-to-host
    transfer for a whole window of steps (every --log-every steps, before a save, at the epoch's
    end), and carries the stop vote and the unreadable-image count with it.

    Without a GradScaler (bf16, fp32) the run stops at the first non-finite loss. With one (fp16),
    a step it skips (an overflowing gradient, or a non-finite loss: the weights unchanged) is
    counted, its loss left out, and the run stops only at the `max_overflow`-th skip in a row
    (`run`: the current count of those, carried across windows)."""

    def __init__(self, device, max_overflow=None, run=None):
        self.device, self.max_overflow = device, max_overflow
        self.run = torch.zeros((), dtype=torch.int64, device=device) if run is None else run
        self.reset()

    def reset(self):
        zero = dict(dtype=torch.float64, device=self.device)
        self.loss, self.counted, self.skipped = torch.zeros((), **zero), torch.zeros((), **zero), torch.zeros((), **zero)
        self.first_bad = torch.full((), -1, dtype=torch.int64, device=self.device)
        self.n, self.steps = 0, 0

    def add(self, loss, n, step_in_epoch, skipped=None):
        """One step's mean loss over its `n` readable images (n = 0: a zero-weight step, not
        counted), and whether its GradScaler skipped it (None: no scaler)."""
        self.steps += 1
        self.n += n
        loss = loss.detach().to(torch.float64)
        finite = torch.isfinite(loss)
        if skipped is None:  # bf16, fp32: the first non-finite loss stops the run
            if not n:
                return
            self.loss += loss * n
            self.counted += n
            stop = ~finite
        else:  # fp16: a skipped step is counted; the max_overflow-th in a row stops the run
            self.skipped += skipped
            self.run = torch.where(skipped, self.run + 1, torch.zeros_like(self.run))
            self.loss += torch.where(finite, loss * n, torch.zeros_like(loss))
            self.counted += finite * n
            stop = self.run >= self.max_overflow
        fresh = (self.first_bad < 0) & stop
        self.first_bad = torch.where(fresh, torch.full_like(self.first_bad, step_in_epoch), self.first_bad)

    def read(self, n_bad, vote):
        """The window's Window, summed over all processes; then starts a new window."""
        loss, n, counted, bad, votes, skipped, stopping = dist.all_sum(
            [self.loss, self.n, self.counted, n_bad, float(vote), self.skipped, (self.first_bad >= 0).to(torch.float64)], self.device)
        first = None
        if stopping > 0:
            mine = self.first_bad.item()
            first = int(dist.all_min(mine if mine >= 0 else math.inf, self.device))
        self.reset()
        return Window(loss, int(n), counted, bad, votes, int(skipped), first)


def stop_message(state, w, epoch, step_in_epoch):
    """The one line of a run stopped at `w.first`: a non-finite loss (bf16, fp32), or fp16's
    --max-overflow-steps skipped steps in a row."""
    kept = f"the last good checkpoint {state.path} is kept" if state.path.exists() else "no checkpoint was written yet"
    where = (f"epoch {epoch + 1}, step {w.first + 1} of the epoch (global step {state.step - (step_in_epoch - w.first) + 1}; "
             f"read after step {step_in_epoch}); {kept}")
    if state.scaler is not None and state.scaler.is_enabled():
        k = state.config.max_overflow_steps
        return (f"fp16: {k} steps in a row skipped by the GradScaler (inf / NaN gradients or loss; its scale halved at each, "
                f"--max-overflow-steps {k}) at {where}. Lower --lr or try --amp bf16 / off")
    return f"non-finite loss ({w.mean_loss}) at {where}. Lower --lr or try --amp off"


@dataclass
class EpochSums:
    """What train_one_epoch returns: its windows (Window) added up, over all processes."""

    loss: float = 0.0  # summed loss of the images whose loss was finite
    seen: int = 0  # readable images trained on
    counted: float = 0.0  # images in `loss` (fewer than `seen` only under fp16, where a non-finite loss skips its step)
    skipped: int = 0  # fp16 steps the GradScaler skipped

    def add(self, w):
        self.loss, self.seen, self.counted, self.skipped = self.loss + w.loss, self.seen + w.n, self.counted + w.counted, self.skipped + w.skipped

    @property
    def mean_loss(self):
        return self.loss / max(1.0, self.counted)


def train_one_epoch(state, loader, *, epoch, skip, steps_per_epoch, bad, logger):
    """One epoch from its step `skip`: returns its EpochSums. Saves every `save_every`
    steps; on SIGTERM / SIGUSR1 saves at the next read of the tallies (Tally) and raises
    interrupt.Stopped. The host reads the device only every `log_every` steps, before a save and
    at the epoch's end, so that it can queue the next steps ahead."""
    config, device, main = state.config, state.config.device, dist.is_main()
    autocast = autocast_for(device, config.amp)
    lr = state.optimizer.param_groups[-1]["lr"]  # the head's
    state.model.train()
    sums, t0 = EpochSums(), time.time()
    bar = tqdm(loader, total=steps_per_epoch, initial=skip, desc=f"epoch {epoch + 1}/{config.epochs}", disable=not main, dynamic_ncols=True)
    step_in_epoch, rank = skip, dist.rank()
    tally = Tally(device, config.max_overflow_steps, state.overflow_run)
    for x, y, idx, ok in bar:
        interrupt.progress(where=f"epoch {epoch + 1}/{config.epochs}, step {step_in_epoch + 1} of {steps_per_epoch}")
        ok = ok.numpy()  # host flags: no device involved
        n = int(ok.sum())
        if n < len(ok):
            bad.add(idx.numpy()[~ok])
            use = torch.from_numpy(ok if n else np.ones_like(ok))  # a batch of unreadable images only: a zero-loss step
            x, y = x[use], y[use]
        x, y = to_device(x, device), y.to(device, non_blocking=True)  # all readable: the pinned batch itself
        torch.manual_seed(step_seed(config.seed, epoch, step_in_epoch, rank))  # dropout
        loss, overflow = train_step(state.model, x, y, optimizer=state.optimizer, scaler=state.scaler, autocast=autocast,
                                    weight=None if n else 0.0)
        tally.add(loss, n, step_in_epoch, overflow)
        state.step += 1
        step_in_epoch += 1
        save_due = bool(config.save_every) and state.step % config.save_every == 0 and step_in_epoch < steps_per_epoch
        if not (save_due or step_in_epoch % config.log_every == 0 or step_in_epoch == steps_per_epoch):
            continue
        window = tally.steps
        w = tally.read(len(bad.rows), interrupt.requested() is not None)
        if w.first is not None:
            raise NonFiniteLoss(stop_message(state, w, epoch, step_in_epoch))
        bad.check(w.bad)  # the sum over all processes: every process raises together
        sums.add(w)
        if main:
            bar.set_postfix(loss=f"{w.mean_loss:.3f}", lr=f"{lr:.2e}", img_s=f"{sums.seen / max(1e-9, time.time() - t0):.1f}")
            if window:
                logger.scalar("train/loss", w.mean_loss, state.step)
        if w.votes > 0:
            state.save(epoch, step_in_epoch)
            bar.close()
            stop_if_asked(w.votes)
        if save_due:
            state.save(epoch, step_in_epoch)
    bar.close()
    if tally.steps:  # the loader ended early (never, with EpochSampler): read what is left
        w = tally.read(len(bad.rows), False)
        if w.first is not None:
            raise NonFiniteLoss(stop_message(state, w, epoch, step_in_epoch))
        bad.check(w.bad)
        sums.add(w)
    state.overflow_run = tally.run
    if skip < steps_per_epoch and sums.seen == 0:
        raise BadImagesError(f"{loader.dataset.split.json_path}: no readable image in epoch {epoch + 1} "
                             f"({len(bad.rows)} unreadable of {len(loader.dataset)}); nothing to train on")
    return sums


@dataclass
class Parts:
    """What a training stage trains: the model, its datasets, and what its checkpoint records
    (`fit`'s arguments; the preflight's too)."""

    model: torch.nn.Module
    train_set: object  # datasets.ImageDataset
    val_set: object
    model_args: dict  # stages.model_args
    class_ids: list
    class_info: dict  # checkpoint.class_info


def fit(model, train_set, val_set, *, config, out_dir, class_ids, model_args, class_info=None):
    """Train `model` on `train_set`, validating on `val_set` every epoch; returns the model.

    `config` (config.TrainConfig) is the run's recipe; its `flags` go into every checkpoint, and a
    resumed run must agree with the saved ones on the flags its stage keeps (stages.Stage.resume_keeps).
    `model_args` (stages.model_args) rebuild the model from a checkpoint; `class_ids` map its outputs;
    `class_info` (checkpoint.class_info: names, train counts) lets prediction do without the dataset.
    SIGTERM / SIGUSR1 end the run after the current step with a checkpoint at that step
    (`interrupt.Stopped`, exit code 143); `--resume` continues from it, bit for bit.
    """
    out_dir, main = Path(out_dir), dist.is_main()
    model = prepare_model(model, config.device, compile=config.eval.compile)
    optimizer = make_optimizer(model, config.lr, config.backbone_lr_ratio, name=config.optimizer, weight_decay=config.weight_decay)
    scaler = torch.amp.GradScaler(config.device.type, enabled=config.amp == "fp16")
    state = TrainState(model, optimizer, scaler, out_dir / CHECKPOINT, config, model_args, class_ids, class_info)
    steps_per_epoch = math.ceil(math.ceil(len(train_set) / dist.world()) / config.batch_size)

    start_epoch, skip = 0, 0
    exists = dist.broadcast_object(state.path.exists())  # rank 0 decides: the ranks may not share one view of --out
    if exists and not config.resume:
        raise CheckpointError(f"{state.path} exists: pass --resume to continue that run, or choose another --out")
    if config.resume and exists:
        start_epoch, skip = resume_from(state, steps_per_epoch)
        interrupt.progress(saved=f"{state.path} (epoch {start_epoch}, step {skip} into the next)")
        if main:
            print(f"resuming {state.path}: epoch {start_epoch + 1}/{config.epochs}, step {state.step} ({skip} into the epoch)", flush=True)
    elif config.resume and main:
        print(f"--resume: no checkpoint in {out_dir} yet, starting from scratch", flush=True)

    state.model = distribute(model, config)
    if main:
        print(describe_recipe(state.model, config), flush=True)
    sampler = EpochSampler(len(train_set), config.seed, dist.rank(), dist.world())
    loader = make_loader(train_set, config.batch_size, config.eval.workers, config.device, sampler=sampler, persistent=True)
    logger = Logger(out_dir, main)
    bad = BadImageCounter(train_set.split, config.max_bad_images)

    with interrupt.polling():
        for epoch in range(start_epoch, config.epochs):
            lr = set_lr(optimizer, config.lr, epoch, config.epochs)
            sampler.set_epoch(epoch, start=skip * config.batch_size)
            t0 = time.time()
            sums = train_one_epoch(state, loader, epoch=epoch, skip=skip, steps_per_epoch=steps_per_epoch, bad=bad, logger=logger)
            skip = 0
            train_time = time.time() - t0
            dist.sync_buffers(unwrap(state.model))  # evaluate, save and localize with rank 0's statistics
            errors = evaluate(unwrap(state.model), val_set, config.eval) if val_set is not None else {}
            state.save(epoch + 1, 0)
            if config.keep_epochs and main:
                save_epoch_weights(out_dir, epoch + 1, state.model)
            record = {"epoch": epoch + 1, "step": state.step, "lr": lr, "train_loss": sums.mean_loss,
                      "images_per_s": sums.seen / max(1e-9, train_time), "time_s": round(time.time() - t0, 2),
                      **{f"val_top{k}_err": e for k, e in errors.items()}}
            if scaler.is_enabled():
                record["fp16_skipped_steps"] = sums.skipped
            if main:
                logger.epoch_end(record, errors, config.epochs)
            interrupt.progress(where=f"the end of epoch {epoch + 1}/{config.epochs}")
            stop_if_asked(dist.all_sum([float(interrupt.requested() is not None)], config.device)[0])
    bad.report()
    logger.close()
    return unwrap(state.model)
