"""From class activation maps to localization masks, and how good those masks are.

The rule (the original's was never published): the CAM of one class, upsampled bilinearly to
the mask size, min-max normalised to [0, 1], and thresholded at `threshold` (a fraction of the
map's range, flag --cam-threshold). A flat map gives an empty mask.

Masks file, one per split, `<out>/masks_<split>.npz`: `image_ids` (int64, N), `masks` (uint8 0/1,
N x h x w: the mask over the whole image, resized to a fixed h x w), written atomically. Read back
streamed and bit-packed (`load_masks`): memory does not grow with N x h x w.
"""
import hashlib
import io
import json
import zipfile
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from . import dist
from .atomic import atomic_write
from .datasets import by_size, make_loader, shard, size_groups
from .engine import BadImageCounter, autocast_for, to_device
from .errors import BadImagesError, DatasetError

THRESHOLDS = tuple(np.round(np.arange(0.05, 1.0, 0.05), 2))


def cams_to_masks(cams, threshold):
    """(N, h, w) CAMs -> (CAMs min-max normalised to [0, 1], uint8 masks of normalised >= threshold).

    A flat map (no maximum to speak of) gives an empty mask.
    """
    lo = cams.amin(dim=(-2, -1), keepdim=True)
    span = cams.amax(dim=(-2, -1), keepdim=True) - lo
    norm = (cams - lo) / span.clamp_min(1e-12)
    return norm, ((norm >= threshold) & (span > 1e-12)).to(torch.uint8)


def cam_to_mask(cam, threshold):
    """The binary uint8 mask of a single (h, w) CAM."""
    return cams_to_masks(torch.as_tensor(np.asarray(cam, dtype=np.float32))[None], threshold)[1][0].numpy()


def mask_to_box(mask):
    """(x, y, w, h) of the largest 8-connected component of a binary mask, or None if empty."""
    n, labels, stats, _ = cv2.connectedComponentsWithStats(np.ascontiguousarray(mask, dtype=np.uint8), connectivity=8)
    if n <= 1:
        return None
    best = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    x, y, w, h = stats[best, :4]
    return int(x), int(y), int(w), int(h)


def box_iou(a, b):
    """IoU of two (x, y, w, h) boxes; 0 when either is None."""
    if a is None or b is None:
        return 0.0
    ix = max(0.0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = a[2] * a[3] + b[2] * b[3] - inter
    return inter / union if union > 0 else 0.0


def scale_box(box, sx, sy):
    return None if box is None else (box[0] * sx, box[1] * sy, box[2] * sx, box[3] * sy)


@torch.inference_mode()
def localize(model, dataset, batch_size, workers, device, amp, mask_size, threshold, use_labels, keep_cams=False, max_bad=100):
    """One forward pass per image: logits and CAM together. Returns (masks (N, h, w) uint8, cams).

    `dataset` gives whole images with their aspect kept (`transforms.ShortSideTransform`, the
    original's evaluation input): rows are batched in order of their resized size and each batch
    runs as one forward pass per distinct size (`datasets.size_groups`: no padding, so an image's
    CAM does not depend on its batch); the CAM is resized to the mask grid with separate x and y
    scales. The CAM is of the ground-truth class when `use_labels` (train), else of the predicted class.
    `cams` (N, h, w float16, normalised) is returned when keep_cams, for measuring thresholds.
    Under torchrun each process scores a shard and the results are gathered on every rank.
    Unreadable images get an empty mask (the fine stage then uses the whole image) and are counted.
    """
    model.eval()
    autocast = autocast_for(device, amp)
    rows = shard(len(dataset), dist.rank(), dist.world())
    expected = getattr(getattr(dataset, "transform", None), "output_sizes", None)
    rows = by_size(rows, expected(dataset.split.sizes)) if expected else rows
    loader = make_loader(dataset, batch_size, workers, device, sampler=rows, collate=size_groups)
    h, w = mask_size
    masks = np.zeros((len(dataset), h, w), np.uint8)
    cams = np.zeros((len(dataset), h, w), np.float16) if keep_cams else None
    bad = BadImageCounter(dataset.split, max_bad)
    groups = (g for batch in loader for g in batch)
    for x, y, idx, ok in tqdm(groups, desc=f"localize {dataset.split.name}", disable=not dist.is_main(), leave=False):
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
            bad.check(len(bad.rows))
    bad.report()
    if len(dataset) and dist.all_sum([float(len(bad.rows))], device)[0] >= len(dataset):
        raise BadImagesError(f"{dataset.split.json_path}: no readable image among its {len(dataset)}; no masks written")
    if dist.enabled():
        parts = dist.all_gather_objects((rows, masks[rows], cams[rows] if keep_cams else None))
        for r, m, c in parts:
            masks[r] = m
            if keep_cams:
                cams[r] = c
    return masks, cams


MIN_MASK_SIZE = 32


def split_fingerprint(split):
    """sha256 of a split's (image id, file name) pairs in id order: what a masks file was made from."""
    h = hashlib.sha256()
    for i, name in sorted(zip((int(i) for i in split.image_ids), split.file_names)):
        h.update(f"{i}\t{name}\n".encode())
    return h.hexdigest()


def save_masks(path, image_ids, masks, provenance=None):
    """Write `masks_<split>.npz` atomically (compressed: masks are mostly runs of 0 and 1).

    `provenance` (a dict, stored as JSON text): the split's fingerprint (`split_fingerprint`),
    the coarse checkpoint and the CAM settings that made the masks. `load_masks` refuses masks
    whose fingerprint is not the split's."""
    buf = io.BytesIO()
    extra = {} if provenance is None else {"provenance": np.array(json.dumps(provenance, sort_keys=True))}
    np.savez_compressed(buf, image_ids=np.asarray(image_ids, np.int64), masks=np.asarray(masks, np.uint8), **extra)
    atomic_write(path, lambda f: f.write(buf.getbuffer()))


def masks_path(out_dir, split):
    return Path(out_dir) / f"masks_{split}.npz"


class PackedMasks:
    """Binary masks (N, h, w) kept bit-packed, 1 bit a pixel: 35,350 masks of 64 x 64 hold 18 MB
    instead of 143 MB. `masks[i]` unpacks one mask, uint8 0/1 (h, w), as a data loader asks."""

    def __init__(self, packed, h, w):
        self.packed, self.shape = packed, (len(packed), h, w)

    def __len__(self):
        return self.shape[0]

    def __getitem__(self, i):
        _, h, w = self.shape
        return np.unpackbits(self.packed[i], count=h * w).reshape(h, w)


def _npy_header(f):
    """(shape, fortran_order, dtype) of the .npy stream `f`, which is left at the data."""
    version = np.lib.format.read_magic(f)
    read = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}.get(version)
    if read is None:
        raise ValueError(f"npy format version {version} not supported")
    return read(f)


def _mask_rows(zf, chunk_bytes=4 << 20):
    """(shape, iterator of (first row, rows (n, h, w) uint8)) over the `masks` member of an open
    npz, decompressed a few MB at a time."""
    f = zf.open("masks.npy")
    shape, fortran, dtype = _npy_header(f)
    if len(shape) != 3:
        return shape, iter(())
    n, h, w = shape
    if fortran or dtype.itemsize != 1:  # not what save_masks writes: read it whole
        masks = np.lib.format.read_array(zf.open("masks.npy"), allow_pickle=False)
        return shape, iter([(0, masks)])

    def rows():
        step = max(1, chunk_bytes // max(1, h * w))
        for start in range(0, n, step):
            k = min(step, n - start)
            data = f.read(k * h * w)
            if len(data) != k * h * w:
                raise ValueError(f"masks data ends after row {start + len(data) // max(1, h * w)} of {n}")
            yield start, np.frombuffer(data, dtype).reshape(k, h, w)

    return shape, rows()


def _check_masks_file(path, zf, ids, shape, split):
    """Integer ids, each once, masks of at least MIN_MASK_SIZE, made from this split."""
    if not np.issubdtype(ids.dtype, np.integer):
        raise DatasetError(f"{path}: image_ids are {ids.dtype}, expected integers")
    uniq, counts = np.unique(ids, return_counts=True)
    if (counts > 1).any():
        raise DatasetError(f"{path}: image id {int(uniq[counts > 1][0])} is listed {int(counts.max())} times "
                           f"({int((counts > 1).sum())} repeated ids)")
    if min(shape[1:]) < MIN_MASK_SIZE:
        raise DatasetError(f"{path}: masks of {shape[1]} x {shape[2]}, smaller than the {MIN_MASK_SIZE} x {MIN_MASK_SIZE} minimum")
    if "provenance.npy" in zf.namelist():
        made = json.loads(str(np.lib.format.read_array(zf.open("provenance.npy"), allow_pickle=False)))
        if made.get("fingerprint") != split_fingerprint(split):
            raise DatasetError(
                f"{path}: made from another {made.get('split', 'split')} than {split.json_path or split.name} "
                f"(other image ids or file names; made by {made.get('checkpoint', 'an unknown checkpoint')}); "
                f"localize this dataset again (coarse/train.py --localize-only)")


def load_masks(out_dir, split):
    """The masks of `split` (a Split), aligned with its rows, as PackedMasks; a clear error if any
    id is missing. The file is streamed: memory holds the packed masks and one chunk of rows."""
    path = masks_path(out_dir, split.name)
    if not path.is_file():
        raise DatasetError(f"{path}: masks file not found; run the coarse stage (coarse/train.py) first, or point --coarse at its --out")
    try:
        with zipfile.ZipFile(path) as zf:
            ids = np.lib.format.read_array(zf.open("image_ids.npy"), allow_pickle=False)
            shape, chunks = _mask_rows(zf)
            if ids.ndim != 1 or len(shape) != 3 or len(ids) != shape[0]:
                raise DatasetError(f"{path}: expected image_ids (N,) and masks (N, h, w), got {ids.shape} and {tuple(shape)}")
            _check_masks_file(path, zf, ids, shape, split)
            where = {int(i): r for r, i in enumerate(ids)}
            missing = [int(i) for i in split.image_ids if int(i) not in where]
            if missing:
                raise DatasetError(
                    f"{path}: masks for {len(missing)} of {len(split)} {split.name} image ids are missing (first: {missing[:5]})"
                )
            _, h, w = shape
            dest = np.full(len(ids), -1, np.int64)  # file row -> row of the split
            dest[[where[int(i)] for i in split.image_ids]] = np.arange(len(split))
            packed = np.zeros((len(split), (h * w + 7) // 8), np.uint8)
            for start, block in chunks:
                d = dest[start : start + len(block)]
                keep = d >= 0
                packed[d[keep]] = np.packbits(block[keep].reshape(-1, h * w) != 0, axis=1)
    except DatasetError:
        raise
    except Exception as e:
        raise DatasetError(f"{path}: unreadable masks file ({type(e).__name__}: {e})") from None
    return PackedMasks(packed, h, w)


def read_boxes(path):
    """truth/boxes.csv -> {image_id: (x, y, w, h)}."""
    boxes = {}
    with open(path) as f:
        header = f.readline().strip().split(",")
        if header != ["image_id", "x", "y", "w", "h"]:
            raise DatasetError(f"{path}: header {header}, expected image_id,x,y,w,h")
        for line in f:
            if line.strip():
                i, x, y, w, h = line.strip().split(",")
                boxes[int(i)] = (float(x), float(y), float(w), float(h))
    return boxes


def localization_accuracy(cams, sizes, truth, thresholds=THRESHOLDS):
    """Share of images whose mask box (largest component) has IoU >= 0.5 with the true box.

    cams: (N, h, w) normalised CAMs; sizes: (N, 2) image (width, height); truth: list of boxes.
    Returns {threshold: share}, and the centred-box baseline at each threshold: a box centred in
    the image, with the image's aspect and the mean area fraction of that threshold's boxes.
    """
    n, h, w = cams.shape
    acc, centred = {}, {}
    for t in thresholds:
        boxes, fracs = [], []
        for i in range(n):
            b = mask_to_box((cams[i] >= t).astype(np.uint8)) if cams[i].max() > 0 else None
            boxes.append(scale_box(b, sizes[i][0] / w, sizes[i][1] / h))
            fracs.append(0.0 if b is None else b[2] * b[3] / (w * h))
        acc[t] = float(np.mean([box_iou(b, g) >= 0.5 for b, g in zip(boxes, truth)]))
        s = np.sqrt(np.mean(fracs))
        cb = [((W - W * s) / 2, (H - H * s) / 2, W * s, H * s) for W, H in sizes]
        centred[t] = float(np.mean([box_iou(b, g) >= 0.5 for b, g in zip(cb, truth)]))
    return acc, centred
