"""Image transforms on uint8 RGB arrays (OpenCV); floats appear only on the model's device.

Training (the original's augmentation): short side resized to `resize`, rotation in +-15 degrees,
random square crop of `size`, horizontal flip, 7x7 grid mask keeping each cell with p = 0.9.
Evaluation: the whole image resized to a `size` square, so that a CAM covers the whole image.
Normalisation with the backbone's mean/std is `models.Normalize`, the model's first layer.
Every random choice comes from the `rng` argument (numpy Generator): same rng, same output.
"""
import cv2
import numpy as np
import torch


def resize(img, width, height):
    """Resize with INTER_AREA when shrinking (no aliasing), INTER_LINEAR when enlarging."""
    h, w = img.shape[:2]
    if (w, h) == (width, height):
        return img
    shrink = width * height < w * h
    return cv2.resize(img, (width, height), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)


def resize_short(img, short):
    h, w = img.shape[:2]
    s = short / min(h, w)
    return resize(img, max(1, round(w * s)), max(1, round(h * s)))


def rotate(img, degrees):
    h, w = img.shape[:2]
    m = cv2.getRotationMatrix2D((w / 2, h / 2), degrees, 1.0)
    return cv2.warpAffine(img, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)


def random_crop(img, size, rng):
    """A random size x size crop; an image smaller than `size` is first enlarged to fit."""
    h, w = img.shape[:2]
    if h < size or w < size:
        img = resize_short(img, size)
        h, w = img.shape[:2]
    y = int(rng.integers(0, h - size + 1))
    x = int(rng.integers(0, w - size + 1))
    return img[y : y + size, x : x + size]


def grid_mask(img, rng, grid=7, keep=0.9, fill=0):
    """Blank each cell of a grid x grid partition with probability 1 - keep (in place)."""
    h, w = img.shape[:2]
    ys = np.linspace(0, h, grid + 1).round().astype(int)
    xs = np.linspace(0, w, grid + 1).round().astype(int)
    drop = rng.random((grid, grid)) >= keep
    for i, j in zip(*np.nonzero(drop)):
        img[ys[i] : ys[i + 1], xs[j] : xs[j + 1]] = fill
    return img


def to_tensor(img):
    """uint8 HWC -> uint8 CHW tensor (no copy to float: that happens once, on the device)."""
    return torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)))


class TrainTransform:
    """The coarse stage's augmentation. `fill` is the backbone's mean pixel (uint8 RGB)."""

    def __init__(self, size, short, max_rotation=15.0, grid=7, keep=0.9, fill=(124, 116, 104)):
        self.size, self.short, self.max_rotation = size, short, max_rotation
        self.grid, self.keep, self.fill = grid, keep, np.asarray(fill, dtype=np.uint8)

    def __call__(self, img, rng):
        img = resize_short(img, self.short)
        if self.max_rotation:
            img = rotate(img, rng.uniform(-self.max_rotation, self.max_rotation))
        img = random_crop(img, self.size, rng)
        if rng.random() < 0.5:
            img = img[:, ::-1]
        img = np.ascontiguousarray(img)
        if self.keep < 1:
            img = grid_mask(img, rng, self.grid, self.keep, self.fill)
        return to_tensor(img)


class EvalTransform:
    """The whole image, resized to a size x size square (aspect not kept, as for the crops)."""

    def __init__(self, size):
        self.size = size

    def __call__(self, img, rng=None):
        return to_tensor(resize(img, self.size, self.size))
