"""Scoring a split with a trained stage: the coarse model on whole images, the fine model on
test-time crops around the coarse masks. Batched over images; under torchrun each process
scores a shard and the pieces are gathered."""
import ctypes
import ctypes.util
from pathlib import Path

import numpy as np

from . import dist
from .cam import load_masks
from .checkpoint import check_matches, load_checkpoint, model_from_checkpoint
from .crop import MultiCropTransform
from .datasets import ImageDataset, shard
from .engine import CHECKPOINT, predict, prepare_model
from .transforms import EvalTransform


M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters


def steady_heap(threshold=512 * 1024 * 1024):
    """Serve a scoring pass's buffers from a heap that keeps its size (glibc; elsewhere a no-op).

    In inference every activation is freed as soon as the next layer has read it. glibc's default
    maps such large buffers and unmaps them on free (page faults on every batch: half the CPU time
    in the kernel here), then raises its mmap threshold as they are freed, from when on they come
    from a heap that grows in steps as they fragment it. Fixing both thresholds high serves every
    buffer from the heap and never gives the top of it back: the first batches set its size and
    the pass reuses it (Lite0, 128 crops of 128 px a batch: 1.3x to 1.9x faster than the mmap'd
    buffers, flat resident memory; README, Performance).
    """
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
    except OSError:
        libc = None
    if libc is not None and hasattr(libc, "mallopt"):
        libc.mallopt(M_MMAP_THRESHOLD, threshold)
        libc.mallopt(M_TRIM_THRESHOLD, threshold)


def load_stage(out_dir, kind, classes, device):
    """The model saved in `out_dir`, checked against the dataset's classes; returns (model, ckpt)."""
    path = Path(out_dir) / CHECKPOINT
    ckpt = load_checkpoint(path)
    check_matches(ckpt, path, kind=kind, class_ids=classes.ids)
    return prepare_model(model_from_checkpoint(ckpt), device), ckpt


def scoring_dataset(kind, ckpt, split, coarse_dir, seed=0, factors=None, mirror_factors=None, centre=None):
    """Whole images for the coarse model; the multi-crop set around the masks for the fine model,
    with the crop-centre rule `centre` (None: the one the fine model was trained with; checkpoints
    older than the flag were trained 'on-mask')."""
    size = ckpt["args"]["img_size"]
    if kind == "coarse":
        return ImageDataset(split, EvalTransform(size), seed, cache=False)  # one pass: no page cache kept
    centre = centre or ckpt["args"].get("crop_centre") or "on-mask"
    return ImageDataset(split, MultiCropTransform(size, factors, mirror_factors, centre), seed, masks=load_masks(coarse_dir, split),
                        cache=False)


def score(model, dataset, batch_size, workers, device, amp, reduce=None, desc=None):
    """Run `reduce(probs)` (default: keep the probabilities) on every batch of this process's
    shard; returns (values in row order, ok flags) gathered from all processes.

    `reduce` lets test.py keep only the top 5 per image: memory does not grow with K x N.
    """
    rows = shard(len(dataset), dist.rank(), dist.world())
    parts, flags, seen = [], [], []
    for idx, probs, ok in predict(model, dataset, batch_size, workers, device, amp, rows, desc=desc):
        parts.append(probs if reduce is None else reduce(probs))
        flags.append(ok)
        seen.append(idx)
    mine = (np.concatenate(seen) if seen else np.zeros(0, np.int64),
            np.concatenate(parts) if parts else None, np.concatenate(flags) if flags else np.zeros(0, bool))
    gathered = dist.all_gather_objects(mine)
    width = next(p[1].shape[1] for p in gathered if p[1] is not None)
    values = np.zeros((len(dataset), width), gathered[0][1].dtype if gathered[0][1] is not None else np.float32)
    ok = np.zeros(len(dataset), bool)
    for idx, v, f in gathered:
        if len(idx):
            values[idx], ok[idx] = v, f
    return values, ok
