"""From class activation maps to localization masks: the rule, and the localization pass.

The rule (the original's was never published): the CAM of one class, upsampled bilinearly to
the mask size, min-max normalised to [0, 1], and thresholded at `threshold` (a fraction of the
map's range, flag --cam-threshold). A flat map gives an empty mask. The masks files are
fgvc/masks.py; boxes and the localization metric, fgvc/boxes.py.
"""
import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from . import dist
from .datasets import BadImageCounter, by_size, make_loader, shard, size_groups
from .errors import BadImagesError
from .inference import autocast_for, fixed_algorithms, to_device
from .masks import PackedShard, packed_size


def cams_to_masks(cams, threshold):
    """(N, h, w) CAMs -> (CAMs min-max normalised to [0, 1], uint8 masks of normalised >= threshold).

    A flat map (no maximum to speak of) gives an empty mask.
    """
    lo = cams.amin(dim=(-2, -1), keepdim=True)
    span = cams.amax(dim=(-2, -1), keepdim=True) - lo
    norm = (cams - lo) / span.clamp_min(1e-12)
    return norm, ((norm >= threshold) & (span > 1e-12)).to(torch.uint8)


@torch.inference_mode()
@fixed_algorithms()  # no cuDNN autotuning per distinct shape
def localize_shard(model, dataset, runtime, *, mask_size, threshold, use_labels, max_bad=100, on_batch=None, desc=None, progress=True):
    """One forward pass per image: logits and CAM together. Returns this process's masks,
    bit-packed as they are made (`masks.PackedShard`: 512 bytes an image at 64 x 64).

    `dataset` gives whole images with their aspect kept (`transforms.ShortSideTransform`, the
    original's evaluation input): rows are batched in order of their resized size and each batch
    runs as one forward pass per distinct size (`datasets.size_groups`: no padding, so an image's
    CAM does not depend on its batch); the CAM is resized to the mask grid with separate x and y
    scales. The CAM is of the ground-truth class when `use_labels` (train), else of the predicted class.
    `on_batch(rows, cams)` sees each batch's normalised CAMs (k, h, w float32 numpy), e.g.
    `boxes.LocalizationScore.add`: nothing of them is kept here.
    Under torchrun each process scores a shard (rows rank, rank + world, ...) and keeps only it;
    `masks.save_shards` assembles the file on rank 0.
    Unreadable images get an empty mask (the fine stage then uses the whole image) and are counted;
    `max_bad=None` leaves them to the caller (predict.py lists them): no limit, no report.
    `progress=False`: no bar of its own (predict.py shows one for the whole pass).
    """
    model.eval()
    device = runtime.device
    autocast = autocast_for(device, runtime.amp)
    rank, world = dist.rank(), dist.world()
    rows = shard(len(dataset), rank, world)
    expected = getattr(getattr(dataset, "transform", None), "output_sizes", None)
    rows = by_size(rows, expected(dataset.split.sizes)) if expected else rows
    loader = make_loader(dataset, runtime.batch_size, runtime.workers, device, sampler=rows, collate=size_groups)
    h, w = mask_size
    packed = np.zeros((len(range(rank, len(dataset), world)), packed_size(h, w)), np.uint8)
    limit = float("inf") if max_bad is None else max_bad
    bad = BadImageCounter(dataset.split, limit)
    ones = 0
    groups = (g for batch in loader for g in batch)
    bar = dict(desc=desc or f"localize {dataset.split.name}", disable=not progress or not dist.is_main(), leave=False)
    for x, y, idx, ok in tqdm(groups, **bar):
        with autocast():
            logits, cam = model.forward_cam(to_device(x, device))
        cls = y.to(cam.device) if use_labels else logits.argmax(1)
        cam = cam.float()[torch.arange(len(cls), device=cam.device), cls]
        cam = F.interpolate(cam[:, None], size=(h, w), mode="bilinear", align_corners=False)[:, 0]
        cam, m = cams_to_masks(cam, threshold)
        m *= ok.to(m.device)[:, None, None]
        m = m.cpu().numpy()
        ones += int(m.sum())
        packed[(idx.numpy() - rank) // world] = np.packbits(m.reshape(len(m), -1), axis=1)
        if on_batch is not None:
            on_batch(idx.numpy(), cam.cpu().numpy())
        if not ok.all():
            bad.add(idx[~ok].tolist())
            if len(bad.rows) > limit:
                break  # past the limit on this process alone: stop reading; all raise together below
    total_bad, ones = dist.all_sum([float(len(bad.rows)), float(ones)], device)  # every process, before anyone raises
    if max_bad is not None:
        bad.check(total_bad)
        bad.report()
    if max_bad is not None and len(dataset) and total_bad >= len(dataset):
        raise BadImagesError(f"{dataset.split.json_path}: no readable image among its {len(dataset)}; no masks written")
    return PackedShard((len(dataset), h, w), packed, ones / max(1, len(dataset) * h * w))


def localize(model, dataset, runtime, *, mask_size, threshold, use_labels, keep_cams=False, max_bad=100, desc=None):
    """`localize_shard`, unpacked and gathered on every process: (masks (N, h, w) uint8, cams
    (N, h, w) float16 or None). For small sets (tests, benchmarks, the ablation's re-thresholding,
    predict.py); the coarse stage keeps masks packed, shards apart, and CAMs not at all."""
    n, (h, w) = len(dataset), mask_size
    cams = np.zeros((n, h, w), np.float16) if keep_cams else None

    def keep(rows, c):
        cams[rows] = c.astype(np.float16)

    part = localize_shard(model, dataset, runtime, mask_size=mask_size, threshold=threshold, use_labels=use_labels,
                          max_bad=max_bad, on_batch=keep if keep_cams else None, desc=desc)
    packed = np.zeros((n, packed_size(h, w)), np.uint8)
    mine = shard(n, dist.rank(), dist.world())
    for rows, p, c in dist.all_gather_objects((mine, part.packed, cams[mine] if keep_cams else None)):
        packed[rows] = p
        if keep_cams:
            cams[rows] = c
    return np.unpackbits(packed, axis=1, count=h * w).reshape(n, h, w), cams
