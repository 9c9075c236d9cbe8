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
def localize(model, dataset, runtime, *, mask_size, threshold, use_labels, keep_cams=False, max_bad=100, desc=None):
    """One forward pass per image: logits and CAM together. Returns (masks (N, h, w) uint8, cams).

    `dataset` gives whole images with their aspect kept (`transforms.ShortSideTransform`, the
    original's evaluation input): rows are batched in order of their resized size and each batch
    runs as one forward pass per distinct size (`datasets.size_groups`: no padding, so an image's
    CAM does not depend on its batch); the CAM is resized to the mask grid with separate x and y
    scales. The CAM is of the ground-truth class when `use_labels` (train), else of the predicted class.
    `cams` (N, h, w float16, normalised) is returned when keep_cams, for measuring thresholds.
    Under torchrun each process scores a shard and the results are gathered on every rank.
    Unreadable images get an empty mask (the fine stage then uses the whole image) and are counted;
    `max_bad=None` leaves them to the caller (predict.py lists them): no limit, no report.
    """
    model.eval()
    device = runtime.device
    autocast = autocast_for(device, runtime.amp)
    rows = shard(len(dataset), dist.rank(), dist.world())
    expected = getattr(getattr(dataset, "transform", None), "output_sizes", None)
    rows = by_size(rows, expected(dataset.split.sizes)) if expected else rows
    loader = make_loader(dataset, runtime.batch_size, runtime.workers, device, sampler=rows, collate=size_groups)
    h, w = mask_size
    masks = np.zeros((len(dataset), h, w), np.uint8)
    cams = np.zeros((len(dataset), h, w), np.float16) if keep_cams else None
    limit = float("inf") if max_bad is None else max_bad
    bad = BadImageCounter(dataset.split, limit)
    groups = (g for batch in loader for g in batch)
    for x, y, idx, ok in tqdm(groups, desc=desc or f"localize {dataset.split.name}", disable=not dist.is_main(), leave=False):
        with autocast():
            logits, cam = model.forward_cam(to_device(x, device))
        cls = y.to(cam.device) if use_labels else logits.argmax(1)
        cam = cam.float()[torch.arange(len(cls), device=cam.device), cls]
        cam = F.interpolate(cam[:, None], size=(h, w), mode="bilinear", align_corners=False)[:, 0]
        cam, m = cams_to_masks(cam, threshold)
        m *= ok.to(m.device)[:, None, None]
        masks[idx.numpy()] = m.cpu().numpy()
        if keep_cams:
            cams[idx.numpy()] = cam.cpu().numpy().astype(np.float16)
        if not ok.all():
            bad.add(idx[~ok].tolist())
            if len(bad.rows) > limit:
                break  # past the limit on this process alone: stop reading; all raise together below
    total_bad = dist.all_sum([float(len(bad.rows))], device)[0]  # every process, before anyone raises
    if max_bad is not None:
        bad.check(total_bad)
        bad.report()
    if max_bad is not None and len(dataset) and total_bad >= len(dataset):
        raise BadImagesError(f"{dataset.split.json_path}: no readable image among its {len(dataset)}; no masks written")
    if dist.enabled():
        parts = dist.all_gather_objects((rows, masks[rows], cams[rows] if keep_cams else None))
        for r, m, c in parts:
            masks[r] = m
            if keep_cams:
                cams[r] = c
    return masks, cams


