"""Boxes: from a mask to a box, box overlap, the true boxes file, and the localization metric.

truth/boxes.csv (the toy's, or made by data/prepare.py from a dataset's boxes): `image_id,x,y,w,h`
in image pixels. The metric: the share of images whose mask box overlaps the true box with
IoU >= 0.5, at each CAM threshold (MaxBoxAcc takes the best), beside a centred box.
"""
import cv2
import numpy as np

from .csvfile import read_csv

THRESHOLDS = tuple(np.round(np.arange(0.05, 1.0, 0.05), 2))


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


def read_boxes(path):
    """truth/boxes.csv -> {image_id: (x, y, w, h)}."""
    rows = read_csv(path, ("image_id", "x", "y", "w", "h"), lambda f: (int(f[0]), tuple(float(v) for v in f[1:])))
    return dict(rows)


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
