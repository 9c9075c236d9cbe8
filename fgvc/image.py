"""Decoding: any image file -> uint8 RGB (H, W, 3), or a BadImage error saying why.

Grayscale, 16-bit, CMYK, 4-channel and gray + alpha (alpha dropped) and PNG bytes under a .jpg name all load as
RGB: OpenCV decodes by content, not by file name. A JPEG without its end-of-image marker
(truncated) is refused rather than silently padded with grey.
"""
import cv2
import numpy as np

cv2.setNumThreads(1)  # the data loader parallelises over images; nested threads only contend


class BadImage(Exception):
    """An image file that cannot be decoded. Carries the path and the reason."""

    def __init__(self, path, reason):
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = str(path), reason


def _truncated_jpeg(buf):
    # Entropy-coded data never holds FF D9 (EOI); a complete file ends with it, perhaps followed
    # by a little padding, so look in the tail only.
    return buf[:2].tobytes() == b"\xff\xd8" and b"\xff\xd9" not in buf[-1024:].tobytes()


def read_rgb(path):
    """Decode `path` to a contiguous uint8 RGB array (H, W, 3)."""
    try:
        buf = np.fromfile(path, dtype=np.uint8)
    except OSError as e:
        raise BadImage(path, f"unreadable ({e.strerror or e})") from None
    if buf.size == 0:
        raise BadImage(path, "empty file")
    if _truncated_jpeg(buf):
        raise BadImage(path, "truncated JPEG (no end-of-image marker)")
    try:
        img = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED | cv2.IMREAD_IGNORE_ORIENTATION)
        if img is None or img.size == 0:
            raise BadImage(path, "not a decodable image")
        return _to_rgb(img)
    except cv2.error as e:
        raise BadImage(path, f"not a decodable image ({(str(e).strip().splitlines() or [''])[-1][:120]})") from None


def _to_rgb(img):
    if img.dtype == np.uint16:
        img = (img >> 8).astype(np.uint8)
    elif img.dtype != np.uint8:
        img = cv2.normalize(img, None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8)
    if img.ndim == 3 and img.shape[2] == 2:  # gray + alpha
        img = img[:, :, 0]
    if img.ndim == 2 or img.shape[2] == 1:
        return cv2.cvtColor(img, cv2.COLOR_GRAY2RGB)
    if img.shape[2] == 4:
        return cv2.cvtColor(img, cv2.COLOR_BGRA2RGB)
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def image_sizes(split):
    """(N, 2) (width, height) of a split's images: from the json, decoding only where it is absent.

    An unreadable image (absent from the json) gets (0, 0).
    """
    sizes = split.sizes.copy()
    for r in np.flatnonzero((sizes <= 0).any(axis=1)):
        try:
            h, w = read_rgb(split.path(r)).shape[:2]
        except BadImage:
            h, w = 0, 0
        sizes[r] = (w, h)
    return sizes
