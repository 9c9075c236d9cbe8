"""Image transforms on uint8 RGB arrays (OpenCV); floats appear only on the model's device.

Training (the original's augmentation): short side resized to `short`, rotation by an integer
angle in [-15, 14] degrees (the original's `randint(-15, 15)`) about the canvas centre with the
border filled with the mean colour, random square crop of `size`, horizontal flip, 7x7 grid mask
keeping each cell with p = 0.9. The original rotated after normalising, with a border of 0: the
mean colour, which is `fill` here (the backbone's mean pixel). `rotation="smooth"` is this
repository's earlier choice: a continuous angle and a reflected border.
The resize, the rotation, the crop and the flip are one affine map, so they run as one
`cv2.warpAffine` that computes only the size x size output pixels (bilinear):
about 1 ms at 448 px, less than decoding the JPEG (`make bench`).
That is exact for the geometry; as a filter, bilinear sampling is only right for mild shrinking,
so an image shrunk by more than 2x (`MILD_SHRINK`) is first resized with INTER_AREA (no aliasing).
Evaluation: the whole image resized to a `size` square (`EvalTransform`), or its short side to
`short` with the aspect kept (`ShortSideTransform`: localization, as the original evaluated).
Normalisation with the backbone's mean/std is `backbones.Normalize`, the model's first layer.
Every random choice comes from the `rng` argument (numpy Generator): same rng, same output.
"""
import cv2
import numpy as np
import torch

from .image import check_pixels

# Smallest scale factor left to the bilinear warp: output pixels at most 2 source pixels apart, so
# every source pixel still weighs in (the mip-map rule). An 800 px iNat image resized to a 512 short
# side is shrunk by 0.64 at most. Stronger shrinking goes through INTER_AREA first.
MILD_SHRINK = 0.5


def resize(img, width, height):
    """Resize with INTER_AREA when both axes shrink (no aliasing), else INTER_LINEAR.

    (INTER_AREA enlarging an axis is nearest-neighbour along it: a 900 x 25 crop resized to
    448 x 448 would keep 25 distinct rows.)"""
    h, w = img.shape[:2]
    if (w, h) == (width, height):
        return img
    shrink = width <= w and height <= h
    return cv2.resize(img, (width, height), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)


def short_side_size(w, h, short):
    """(width, height) of a w x h image whose short side is resized to `short`."""
    s = short / min(h, w)
    return max(1, round(w * s)), max(1, round(h * s))


def resize_short(img, short):
    h, w = img.shape[:2]
    return resize(img, *short_side_size(w, h, short))


def _scale(sx, sy):
    """Pixel (x, y) of an image resized by (sx, sy) -> pixel of the original (cv2.resize's centres)."""
    return np.array([[1 / sx, 0, 0.5 / sx - 0.5], [0, 1 / sy, 0.5 / sy - 0.5], [0, 0, 1]])


ROTATIONS = ("original", "smooth")  # the first is the original's rule, the default


def rotation_angle(rng, max_rotation, rotation=ROTATIONS[0]):
    """'original': an integer in [-max, max - 1] (numpy's randint(-15, 15)); 'smooth': uniform."""
    if not max_rotation:
        return 0.0
    if rotation == "original":
        return float(rng.integers(-int(max_rotation), int(max_rotation)))
    return float(rng.uniform(-max_rotation, max_rotation))


def train_warp(w, h, short, size, rng, *, max_rotation=15, rotation=ROTATIONS[0]):
    """The 3x3 map from output pixels to source pixels of the training augmentation.

    Draws from `rng` in the order of the steps it replaces: angle (when max_rotation), crop y,
    crop x, flip. Steps: short side to `short` (canvas), rotation about the canvas centre (the
    original's integer centre (w // 2, h // 2) under 'original'; same canvas), enlarged to `size`
    if the canvas is smaller, a random size x size crop, the flip.
    """
    cw, ch = short_side_size(w, h, short)
    angle = rotation_angle(rng, max_rotation, rotation)
    centre = (cw // 2, ch // 2) if rotation == "original" else (cw / 2, ch / 2)
    unrotate = np.vstack([cv2.getRotationMatrix2D(centre, -angle, 1.0), [0, 0, 1]])
    ew, eh = (cw, ch) if min(cw, ch) >= size else short_side_size(cw, ch, size)
    y = int(rng.integers(0, eh - size + 1))
    x = int(rng.integers(0, ew - size + 1))
    flip = rng.random() < 0.5
    crop = np.array([[-1.0 if flip else 1.0, 0, x + (size - 1 if flip else 0)], [0, 1, y], [0, 0, 1]])
    return _scale(cw / w, ch / h) @ unrotate @ _scale(ew / cw, eh / ch) @ crop


def _span(lo, hi, n):
    """[lo, hi) clipped to [0, n), kept wide enough that what is reflected at a clipped side
    (BORDER_REFLECT_101: -k -> k, n - 1 + k -> n - 1 - k) stays inside."""
    if lo < 0:
        hi = max(hi, 1 - lo)
    if hi > n:
        lo = min(lo, 2 * n - 1 - hi)
    return max(0, lo), min(n, hi)


def warp(img, m, size, fill=None):
    """The size x size output of the 3x3 output->source map `m` (bilinear); outside the image,
    `fill` (RGB) where given, else the image reflected.

    Reads only the source rectangle under the output (plus the bilinear neighbours), and runs
    on RGBA: OpenCV's bilinear remap has a vector path for 4 channels and none for 3, and the
    conversion costs less than the difference. Returns RGBA (size, size, 4), alpha undefined.
    """
    h, w = img.shape[:2]
    corners = m[:2] @ np.array([[0, size - 1, 0, size - 1], [0, 0, size - 1, size - 1], [1, 1, 1, 1]])
    lo, hi = np.floor(corners.min(1)).astype(int) - 1, np.ceil(corners.max(1)).astype(int) + 2
    x0, x1 = _span(int(lo[0]), int(hi[0]), w)
    y0, y1 = _span(int(lo[1]), int(hi[1]), h)
    rgba = img[y0:y1, x0:x1] if img.shape[2] == 4 else cv2.cvtColor(img[y0:y1, x0:x1], cv2.COLOR_RGB2RGBA)  # RGBX in: no conversion
    shifted = m[:2] - np.array([[0, 0, x0], [0, 0, y0]])
    if fill is None:
        border = dict(borderMode=cv2.BORDER_REFLECT_101)
    else:  # the rectangle read is clipped only at the image's own edges: outside it is outside the image
        border = dict(borderMode=cv2.BORDER_CONSTANT, borderValue=(*(int(v) for v in fill), 0))
    return cv2.warpAffine(rgba, shifted, (size, size), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, **border)


def planar(img):
    """The first 3 channels of an (H, W, 4) uint8 image as a contiguous (3, H, W) array.

    `cv2.split` into 4 planes of one buffer (it has a vector path for 4 channels: 3x faster than
    copying 3 channels out with mixChannels); the first 3 planes are one contiguous block.
    """
    planes = np.empty((4, *img.shape[:2]), np.uint8)
    cv2.split(img, list(planes))  # writes into the views
    return planes[:3]


def grid_cells(h, w, rng, grid=7, keep=0.9):
    """(y0, y1, x0, x1) of the cells of a grid x grid partition of h x w dropped with p = 1 - keep."""
    ys = [round(i * h / grid) for i in range(grid + 1)]
    xs = [round(i * w / grid) for i in range(grid + 1)]
    drop = rng.random((grid, grid)) >= keep
    return [(ys[i], ys[i + 1], xs[j], xs[j + 1]) for i, j in zip(*np.nonzero(drop))]


def to_tensor(img):
    """uint8 HWC -> uint8 CHW tensor (no copy to float: that happens once, on the device)."""
    return torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)))


class TrainTransform:
    """The coarse stage's augmentation. `fill` is the backbone's mean pixel (uint8 RGB, backbones.mean_pixel):
    the colour of the grid mask's cells and, under rotation='original', of the rotation's border."""

    def __init__(self, size, short, fill, *, max_rotation=15, grid=7, keep=0.9, rotation=ROTATIONS[0]):
        if rotation not in ROTATIONS:
            raise ValueError(f"rotation {rotation!r}: one of {ROTATIONS}")
        self.size, self.short, self.max_rotation, self.rotation = size, short, max_rotation, rotation
        self.grid, self.keep, self.fill = grid, keep, np.asarray(fill, dtype=np.uint8)

    def __call__(self, img, rng):
        h, w = img.shape[:2]
        check_pixels(*short_side_size(w, h, self.short), "resized for training to")
        if self.short / min(h, w) < MILD_SHRINK:
            img = resize_short(img, self.short)
            h, w = img.shape[:2]
        m = train_warp(w, h, self.short, self.size, rng, max_rotation=self.max_rotation, rotation=self.rotation)
        out = planar(warp(img, m, self.size, self.fill if self.rotation == "original" else None))
        if self.keep < 1:  # on the planar copy: whole rows of one channel, ten times faster than HWC
            for y0, y1, x0, x1 in grid_cells(self.size, self.size, rng, self.grid, self.keep):
                out[:, y0:y1, x0:x1] = self.fill[:, None, None]
        return torch.from_numpy(out)


class EvalTransform:
    """The whole image, resized to a size x size square (aspect not kept, as for the crops)."""

    def __init__(self, size):
        self.size = size

    def __call__(self, img, rng=None):
        return to_tensor(resize(img, self.size, self.size))


class ShortSideTransform:
    """The whole image with its short side resized to `short` and the aspect kept (the original's
    evaluation input), the long side rounded to a multiple of `multiple` (32: the stride of the
    last feature map, so its cells tile the image; the aspect moves by at most 16 px over the long
    side). Images differ in size: batch them with `datasets.size_groups`."""

    def __init__(self, short, multiple=32):
        self.short, self.multiple = short, multiple

    def size(self, w, h):
        """(width, height) of the output for a w x h image."""
        cw, ch = short_side_size(w, h, self.short)
        if cw >= ch:
            return max(self.multiple, round(cw / self.multiple) * self.multiple) if cw > self.short else cw, ch
        return cw, max(self.multiple, round(ch / self.multiple) * self.multiple) if ch > self.short else ch

    def output_sizes(self, sizes):
        """(N, 2) output (width, height) for image sizes (N, 2) (width, height; <= 0: unknown, (0, 0))."""
        return [self.size(w, h) if w > 0 and h > 0 else (0, 0) for w, h in sizes]

    def __call__(self, img, rng=None):
        h, w = img.shape[:2]
        size = self.size(w, h)
        check_pixels(*size, "resized for localization to")
        return to_tensor(resize(img, *size))
