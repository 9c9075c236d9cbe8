"""Inference helpers shared by training (validation), localization, test.py and the benchmarks:
device placement, autocast, batched prediction over a dataset, and scoring a split across
processes (under torchrun each process scores a shard and the pieces are gathered)."""
import ctypes
import ctypes.util
from contextlib import contextmanager, nullcontext
from functools import partial

import numpy as np
import torch
from tqdm import tqdm

from . import dist
from .datasets import make_loader, shard
from .errors import UserError

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


def autocast_for(device, amp):
    """A context factory: torch.autocast for 'bf16'/'fp16', a no-op for 'off'."""
    device = torch.device(device)
    if amp == "off":
        return nullcontext
    if amp == "fp16" and device.type != "cuda":
        raise UserError("--amp fp16 needs a CUDA device; use --amp bf16 or off on the CPU")
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    return partial(torch.autocast, device_type=device.type, dtype=dtype)


def prepare_model(model, device, compile=False):
    """Move to the device in channels_last (faster on CUDA and on the CPU: Lite0 1.25x in training,
    1.5x in evaluation here; README, Performance); cudnn.benchmark on CUDA, unless --deterministic
    (devices.determinism) is on. `compile` (--compile): torch.compile its body in place
    (models._Net.compile_body; done once, kept by later calls)."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = not torch.are_deterministic_algorithms_enabled()
    model = model.to(device, memory_format=torch.channels_last)
    return model.compile_body() if compile else model


@contextmanager
def fixed_algorithms():
    """cudnn.benchmark off inside: a pass over images of many sizes (localization's aspect buckets,
    several batch sizes each) would otherwise autotune every convolution again for every new shape,
    on every process. What it computes is the same; it is put back on the way out."""
    was = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = False
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = was


def to_device(x, device):
    """An image batch on the device, in the model's channels_last layout."""
    x = x.to(device, non_blocking=True)
    return x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x


@torch.inference_mode()
def predict(model, dataset, runtime, *, rows=None, desc=None):
    """Yield (rows, probabilities (B, K) float32 numpy, ok (B,) bool) over `dataset`.

    A 5-D batch (B, crops, 3, H, W) is scored as B*crops images and the softmax averaged over the
    crops. `rows` restricts (and orders) the rows, e.g. this process's shard.
    """
    model.eval()
    autocast = autocast_for(runtime.device, runtime.amp)
    rows = list(range(len(dataset))) if rows is None else rows
    loader = make_loader(dataset, runtime.batch_size, runtime.workers, runtime.device, sampler=rows)
    for x, _, idx, ok in tqdm(loader, desc=desc, disable=desc is None or not dist.is_main(), leave=False):
        crops = x.shape[1] if x.dim() == 5 else 1
        x = to_device(x.flatten(0, 1) if x.dim() == 5 else x, runtime.device)
        with autocast():
            logits = model(x)
        probs = logits.float().softmax(1).view(len(idx), crops, -1).mean(1)
        yield idx.numpy(), probs.cpu().numpy(), ok.numpy()


def score(model, dataset, runtime, *, reduce=None, desc=None):
    """The probabilities of every row, or what `reduce(probs)` keeps of each batch (an array, or a
    dict of arrays, one row per image): returns (values in row order, ok flags), gathered from all
    processes. `reduce` lets test.py keep only the top 5 per image: memory does not grow with N x K.
    """
    rows = shard(len(dataset), dist.rank(), dist.world())
    parts, flags, seen = [], [], []
    for idx, probs, ok in predict(model, dataset, runtime, rows=rows, desc=desc):
        kept = probs if reduce is None else reduce(probs)
        parts.append(kept if isinstance(kept, dict) else {None: kept})
        flags.append(ok)
        seen.append(idx)
    mine = (np.concatenate(seen) if seen else np.zeros(0, np.int64),
            {k: np.concatenate([p[k] for p in parts]) for k in parts[0]} if parts else None,
            np.concatenate(flags) if flags else np.zeros(0, bool))
    gathered = dist.all_gather_objects(mine)
    like = next(p[1] for p in gathered if p[1] is not None)
    values = {k: np.zeros((len(dataset), *v.shape[1:]), v.dtype) for k, v in like.items()}
    ok = np.zeros(len(dataset), bool)
    for idx, part, f in gathered:
        if len(idx):
            ok[idx] = f
            for k, v in part.items():
                values[k][idx] = v
    return (values[None] if list(values) == [None] else values), ok
