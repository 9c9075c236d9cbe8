"""The crop rule of the fine stage: a square around the CAM mask, sized by the mask's area.

side = sqrt(k * mask area), the area counted in image pixels; clipped to the image (not shifted).
The centre (`centre=`):
- 'original' (default, the original's rule): the row and the column are drawn independently,
  the row from the middle third of the mask's row coordinates and the column from the middle
  third of its column coordinates, both as `np.nonzero` lists them (row-major). The centre can
  fall off the mask: for a diagonal band it rarely lands on it.
- 'on-mask': one mask pixel drawn from the middle third of the mask's pixels (row-major).
k = 2 in training; the test-time crops use several k. An empty or tiny mask (fewer than
`min_pixels` mask pixels counted in image pixels, or a side under `min_side` image pixels) gives
the whole image, as in the original.
"""
import math

import numpy as np
import torch

from .transforms import resize, to_tensor

CENTRES = ("original", "on-mask")  # the first is the original's rule, the default
TRAIN_K = 2.0  # the original's area factor in training


def _middle_third(n, rng):
    """An index from the middle third of n (numpy's randint(n // 3, n // 3 * 2), as the original),
    or its middle with rng=None."""
    lo, hi = n // 3, max(n // 3 + 1, (n // 3) * 2)
    return (lo + hi) // 2 if rng is None else int(rng.integers(lo, hi))


def crop_box(mask, width, height, k=TRAIN_K, rng=None, *, centre=CENTRES[0], min_pixels=10, min_side=10):
    """Box (x0, y0, x1, y1), in pixels of a width x height image, for a mask over that image.

    `mask` is a binary (h, w) array covering the whole image at any resolution. With rng=None
    the centre is the middle of the middle third (deterministic, for evaluation).
    """
    if centre not in CENTRES:
        raise ValueError(f"centre {centre!r}: one of {CENTRES}")
    h, w = mask.shape
    ys, xs = np.nonzero(mask)
    n = len(ys)
    sx, sy = width / w, height / h
    side = min(math.sqrt(k * n * sx * sy), 2.0 * max(width, height))  # a side past 2x covers the image wherever its centre
    if n * sx * sy < min_pixels or side < min_side:
        return 0, 0, width, height
    if centre == "original":
        row, col = ys[_middle_third(n, rng)], xs[_middle_third(n, rng)]
    else:
        i = _middle_third(n, rng)
        row, col = ys[i], xs[i]
    cx, cy = (col + 0.5) * sx, (row + 0.5) * sy
    x0, y0 = max(0, round(cx - side / 2)), max(0, round(cy - side / 2))
    x1, y1 = min(width, round(cx + side / 2)), min(height, round(cy + side / 2))
    if x1 - x0 < 1 or y1 - y0 < 1:
        return 0, 0, width, height
    return x0, y0, x1, y1


class CropTransform:
    """Fine-stage input: the crop given by `box` (the crop rule: `crop_box`, or any function with
    its signature), resized to size x size.

    In training (train=True) the centre is random and the crop is flipped with p = 0.5; in
    evaluation the centre is the middle of the middle third and there is no flip.
    """

    def __init__(self, size, k=TRAIN_K, train=True, centre=CENTRES[0], box=crop_box):
        self.size, self.k, self.train, self.centre, self.box = size, k, train, centre, box

    def __call__(self, img, mask, rng):
        h, w = img.shape[:2]
        x0, y0, x1, y1 = self.box(mask, w, h, self.k, rng if self.train else None, centre=self.centre)
        out = resize(img[y0:y1, x0:x1], self.size, self.size)
        if self.train and rng.random() < 0.5:
            out = out[:, ::-1]
        return to_tensor(out)


# The original's 16 test-time crops: area factors on the image, and on its mirror.
TTA_FACTORS = (0.5, 0.5, 1, 1, 2, 2, 4, 4)
TTA_MIRROR_FACTORS = (0.25, 0.25, 1, 1, 2, 2, 4, 4)


class MultiCropTransform:
    """Test-time crops: one per factor on the image, one per mirror factor on its mirror (the
    mirrored image with the mirrored mask, as the original: the centre rule then lists the mask's
    columns in the mirror's order).

    Each crop's centre is drawn from the middle third of the mask with `rng`, so repeated factors
    give different crops. Returns a uint8 tensor (n_crops, 3, size, size).
    """

    def __init__(self, size, factors=TTA_FACTORS, mirror_factors=TTA_MIRROR_FACTORS, centre=CENTRES[0], box=crop_box):
        self.size, self.factors, self.mirror_factors, self.centre, self.box = size, tuple(factors), tuple(mirror_factors), centre, box

    def boxes(self, mask, width, height, rng):
        """[(x0, y0, x1, y1) in image pixels, mirrored?] of every crop, in order: what __call__ cuts
        (predict.py draws the largest one)."""
        out = []
        for k, mirror in [(k, False) for k in self.factors] + [(k, True) for k in self.mirror_factors]:
            x0, y0, x1, y1 = self.box(mask[:, ::-1] if mirror else mask, width, height, k, rng, centre=self.centre)
            out.append(((width - x1, y0, width - x0, y1) if mirror else (x0, y0, x1, y1), mirror))  # the mirror's box on the image
        return out

    def __call__(self, img, mask, rng):
        h, w = img.shape[:2]
        crops = []
        for (x0, y0, x1, y1), mirror in self.boxes(mask, w, h, rng):
            out = resize(img[y0:y1, x0:x1], self.size, self.size)
            crops.append(to_tensor(out[:, ::-1] if mirror else out))
        return torch.stack(crops)
