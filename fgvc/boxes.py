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


class LocalizationScore:
    """The localization metric, accumulated batch by batch (`add`), so that no N x h x w array of
    CAMs is kept: per threshold, the number of images whose mask box (largest component) has
    IoU >= 0.5 with the true box, and the sum of the boxes' area fractions (the centred baseline's).

    sizes: (N, 2) image (width, height); truth: the N true boxes, by row."""

    def __init__(self, sizes, truth, thresholds=THRESHOLDS):
        self.sizes, self.truth, self.thresholds = np.asarray(sizes), truth, tuple(thresholds)
        self.hits = np.zeros(len(self.thresholds))
        self.fracs = np.zeros(len(self.thresholds))

    def add(self, rows, cams):
        """rows: the split rows of `cams` (k, h, w), normalised CAMs."""
        _, h, w = cams.shape
        for r, cam in zip(rows, cams):
            W, H = self.sizes[r]
            for j, t in enumerate(self.thresholds):
                b = mask_to_box((cam >= t).astype(np.uint8)) if cam.max() > 0 else None
                self.hits[j] += box_iou(scale_box(b, W / w, H / h), self.truth[r]) >= 0.5
                self.fracs[j] += 0.0 if b is None else b[2] * b[3] / (w * h)

    def result(self, hits=None, fracs=None):
        """({threshold: share}, {threshold: share of the centred box}); `hits`, `fracs`: the sums
        over every process, where several scored a shard each."""
        hits = self.hits if hits is None else np.asarray(hits)
        fracs = self.fracs if fracs is None else np.asarray(fracs)
        n = len(self.truth)
        acc, centred = {}, {}
        for j, t in enumerate(self.thresholds):
            acc[t] = float(hits[j] / n)
            s = np.sqrt(fracs[j] / n)
            cb = [((W - W * s) / 2, (H - H * s) / 2, W * s, H * s) for W, H in self.sizes]
            centred[t] = float(np.mean([box_iou(b, g) >= 0.5 for b, g in zip(cb, self.truth)]))
        return acc, centred


def localization_accuracy(cams, sizes, truth, thresholds=THRESHOLDS):
    """Share of images whose mask box (largest component) has IoU >= 0.5 with the true box.

    cams: (N, h, w) normalised CAMs; sizes: (N, 2) image (width, height); truth: list of boxes.
    Returns {threshold: share}, and the centred-box baseline at each threshold: a box centred in
    the image, with the image's aspect and the mean area fraction of that threshold's boxes.
    """
    score = LocalizationScore(sizes, truth, thresholds)
    score.add(range(len(cams)), cams)
    return score.result()
