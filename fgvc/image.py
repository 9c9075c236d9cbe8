"""Decoding: any image file -> uint8 RGB (H, W, 3), upright, or a BadImage error saying why.

Two decoders, one result:
- A colour JPEG (3 components, YCbCr: what cameras and iNat write) decodes through simplejpeg,
  libjpeg-turbo called directly, with OpenCV's default settings (accurate integer DCT, smooth
  chroma upsampling): the same pixels as OpenCV's decode, in less time (`make bench`).
- Everything else, and any file simplejpeg refuses or warns about, decodes through OpenCV
  (`cv2.imdecode`), which decodes by content, not by file name: grayscale, 16-bit, CMYK,
  4-channel and gray + alpha (alpha dropped) and PNG bytes under a .jpg name all load as RGB.
A JPEG without its end-of-image marker (truncated) is refused rather than silently padded with
grey, before either decoder sees it; every other failure is OpenCV's, as a BadImage with a reason.

Refused before decoding, as unreadable images (counted like any other, `--max-bad-images`):
- a path that is not a regular file (a FIFO would block the reader for ever; a symlink to a
  regular file is fine);
- an image whose header declares more than `LIMITS["max_pixels"]` pixels (a decompression bomb: a
  5 KB JPEG may declare 30000 x 30000), read from the JPEG frame header or the PNG IHDR chunk;
  other formats rely on OpenCV's own limit (2**30 pixels);
- a JPEG that libjpeg reports as corrupt although it decodes ("Corrupt JPEG data: premature end
  of data segment": a file cut short with an end marker appended decodes with a grey bottom),
  unless `LIMITS["lenient"]` (flag --lenient-jpeg).
`configure()` sets both from the flags (`--max-megapixels`, `--lenient-jpeg`) at the start of a run,
before the loader processes are forked.

EXIF orientation is applied, as the original's `cv2.imread` did: `exif_orientation` reads the tag
from a JPEG's APP1 segment and `orient` turns the decoded pixels upright, the same for both
decoders (OpenCV's own handling is not used: it is off for IMREAD_UNCHANGED). `exif=False` gives
the stored pixels. Only JPEG files carry it here (a PNG's eXIf chunk is not read).

`cache=False` drops the file's pages from the operating system's page cache once it is read
(`posix_fadvise(DONTNEED)`): for a single pass over a split (test.py's scoring), where the cache
would otherwise grow by one file size an image, memory that a container's accounting (cgroups)
charges to the run. Training, which reads each file every epoch, keeps it.

`fast=True` lets libjpeg-turbo use its fast integer DCT and fast chroma upsampling: faster, but
the pixels move by about 1.2 grey levels on average from OpenCV's (README, Performance), so it is
off by default; `FGVC_FAST_JPEG=1` in the environment turns it on for every decode (loader
processes included).
"""
import os
import stat
import struct

import cv2
import numpy as np
import simplejpeg

from .errors import last_line

cv2.setNumThreads(1)  # the data loader parallelises over images; nested threads only contend

FAST_JPEG = os.environ.get("FGVC_FAST_JPEG", "0") == "1"
DECODERS = ("auto", "opencv")
LIMITS = {"max_pixels": 100_000_000, "lenient": False}  # see configure()
_GRAY_OR_CMYK = {"Gray": "GRAY", "CMYK": "CMYK", "YCCK": "CMYK"}


def configure(max_megapixels=None, lenient=None):
    """The decoding limits of this process and the loader processes it forks."""
    if max_megapixels is not None:
        LIMITS["max_pixels"] = int(max_megapixels * 1_000_000)
    if lenient is not None:
        LIMITS["lenient"] = bool(lenient)


class BadImage(Exception):
    """An image file that cannot be decoded. Carries the path and the reason."""

    def __init__(self, path, reason):
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = str(path), reason


def check_pixels(width, height, what):
    """A size computed from an image (the resize for localization or training) over the limit makes
    the image unreadable, as a header declaring it would: a 20000 x 1 PNG (60 KB) passes the header
    check and would be resized to 10,240,000 x 512 at a short side of 512."""
    if width * height > LIMITS["max_pixels"]:
        raise BadImage("", f"{what} {width} x {height} pixels, more than --max-megapixels {LIMITS['max_pixels'] / 1e6:g}")


def _is_jpeg(buf):
    return buf.size >= 2 and buf[0] == 0xFF and buf[1] == 0xD8


def _truncated_jpeg(buf):
    # Entropy-coded data never holds FF D9 (EOI); a complete file ends with it, perhaps followed
    # by a little padding, so look in the tail only.
    return _is_jpeg(buf) and b"\xff\xd9" not in buf[-1024:].tobytes()


def read_rgb(path, decoder="auto", fast=None, exif=True, cache=True):
    """Decode `path` to a contiguous uint8 RGB array (H, W, 3), turned upright by its EXIF
    orientation unless `exif` is False.

    decoder: "auto" (simplejpeg for colour JPEGs, OpenCV for the rest) or "opencv" (OpenCV for
    all, the reference). fast: libjpeg-turbo's fast DCT and upsampling on the simplejpeg path
    (default: FGVC_FAST_JPEG from the environment, off). cache=False: drop the file from the page
    cache after reading it (a single pass).
    """
    if decoder not in DECODERS:
        raise ValueError(f"decoder {decoder!r}: one of {DECODERS}")
    try:
        mode = os.stat(path).st_mode
        if not stat.S_ISREG(mode):
            raise BadImage(path, f"not a regular file ({_kind(mode)})")
        with open(path, "rb") as f:
            buf = np.fromfile(f, dtype=np.uint8)
            if not cache:
                os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
    except OSError as e:
        raise BadImage(path, f"unreadable ({e.strerror or e})") from None
    if buf.size == 0:
        raise BadImage(path, "empty file")
    if _truncated_jpeg(buf):
        raise BadImage(path, "truncated JPEG (no end-of-image marker)")
    _check_declared_size(buf, path)
    img = _simplejpeg(buf, FAST_JPEG if fast is None else fast, path) if decoder == "auto" else _validate_jpeg(buf, path)
    if img is None:
        img = _opencv(buf, path)
    return orient(img, exif_orientation(buf)) if exif else img


def _kind(mode):
    for test, name in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISDIR, "a directory"), (stat.S_ISSOCK, "a socket"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device")):
        if test(mode):
            return name
    return "not a file"


def _declared_size(buf):
    """(width, height) from a JPEG frame header or a PNG IHDR chunk, or None for other bytes."""
    if _is_jpeg(buf):
        try:
            h, w = simplejpeg.decode_jpeg_header(buf)[:2]
            return w, h
        except ValueError:
            return None
    if buf[:8].tobytes() == b"\x89PNG\r\n\x1a\n" and buf.size >= 24 and buf[12:16].tobytes() == b"IHDR":
        return struct.unpack(">II", buf[16:24].tobytes())
    return None


def upright_size(buf):
    """(width, height) of the image `read_rgb` returns, from the header alone (a JPEG's frame header and
    EXIF orientation, a PNG's IHDR), or None for other formats. `buf`: the file's first bytes (uint8 array)."""
    size = _declared_size(buf)
    if size is None:
        return None
    w, h = size
    return (int(h), int(w)) if _ORIENT.get(exif_orientation(buf), (False, None))[0] else (int(w), int(h))


def _check_declared_size(buf, path):
    size = _declared_size(buf)
    if size and size[0] * size[1] > LIMITS["max_pixels"]:
        raise BadImage(path, f"declares {size[0]} x {size[1]} pixels, more than --max-megapixels "
                             f"{LIMITS['max_pixels'] / 1e6:g} (a decompression bomb?)")


def _simplejpeg(buf, fast, path):
    """RGB pixels of a 3-component YCbCr JPEG, or None: not such a JPEG, or libjpeg-turbo refused
    it, and OpenCV is to decide. A JPEG that decodes only with libjpeg's warnings (corrupt data) is
    a BadImage unless LIMITS["lenient"]."""
    if not _is_jpeg(buf):
        return None
    try:
        if simplejpeg.decode_jpeg_header(buf)[2] != "YCbCr":
            return _validate_jpeg(buf, path)
    except ValueError:
        return None
    return _strict(buf, path, "RGB", fast)


def _strict(buf, path, colorspace, fast=False):
    """libjpeg-turbo's decode in strict mode: its warnings are errors. A file that fails strictly
    but decodes leniently is corrupt: refused, or (LIMITS["lenient"]) its lenient pixels. None
    where libjpeg-turbo cannot decode it at all (OpenCV decides)."""
    try:
        return simplejpeg.decode_jpeg(buf, colorspace=colorspace, fastdct=fast, fastupsample=fast, strict=True)
    except ValueError as strict_error:
        try:
            img = simplejpeg.decode_jpeg(buf, colorspace=colorspace, fastdct=fast, fastupsample=fast, strict=False)
        except ValueError:
            return None
        if not LIMITS["lenient"]:
            raise BadImage(path, f"corrupt JPEG data ({str(strict_error)[:120]}); --lenient-jpeg accepts it") from None
        return img


def _validate_jpeg(buf, path):
    """For the JPEGs OpenCV decodes (grayscale, CMYK; or every JPEG with decoder='opencv'): refuse a
    corrupt one (as _strict does) before OpenCV decodes it without a word. Returns None."""
    if _is_jpeg(buf):
        try:
            colorspace = _GRAY_OR_CMYK.get(simplejpeg.decode_jpeg_header(buf)[2], "RGB")
        except ValueError:
            return None
        _strict(buf, path, colorspace)
    return None


def _opencv(buf, path):
    try:
        img = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)  # as stored: no EXIF rotation, alpha kept
        if img is None or img.size == 0:
            raise BadImage(path, "not a decodable image")
        return _to_rgb(img)
    except cv2.error as e:
        raise BadImage(path, f"not a decodable image ({last_line(e, 120)})") from None


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


# ---------------------------------------------------------------- EXIF orientation

# orientation -> (transpose first?, then cv2.flip code or None): the stored pixels turned upright
_ORIENT = {1: (False, None), 2: (False, 1), 3: (False, -1), 4: (False, 0),
           5: (True, None), 6: (True, 1), 7: (True, -1), 8: (True, 0)}
_STANDALONE = {0x01, 0xD8} | set(range(0xD0, 0xD8))  # markers without a length field
_ORIENTATION_TAG, _SHORT, _LONG = 0x0112, 3, 4


def orient(img, orientation):
    """The image turned upright for an EXIF orientation 1..8 (1 and anything else: unchanged)."""
    transpose, flip = _ORIENT.get(orientation, (False, None))
    if transpose:
        img = cv2.transpose(img)
    return img if flip is None else cv2.flip(img, flip)


def exif_orientation(buf):
    """The EXIF orientation (1..8) of a JPEG file's bytes; 1 when absent, not a JPEG, or malformed.

    Walks the marker segments after SOI (each FF xx, then a 2-byte big-endian length that counts
    itself) up to the first scan, and reads tag 0x0112 of IFD0 in the first APP1 segment that
    starts with "Exif\\0\\0" (a TIFF header: byte order, 42, offset of IFD0 from the header).
    """
    data = memoryview(buf)  # bytes or a 1-D uint8 array; slices are not copies
    n = len(data)
    if n < 4 or data[0] != 0xFF or data[1] != 0xD8:
        return 1
    i = 2
    while i + 4 <= n:
        if data[i] != 0xFF:
            return 1  # not at a marker: malformed header, keep the pixels as stored
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte before a marker
            i += 1
            continue
        if marker in _STANDALONE:
            i += 2
            continue
        if marker in (0xDA, 0xD9):  # start of scan, end of image: no metadata after this
            return 1
        length = data[i + 2] << 8 | data[i + 3]
        end = i + 2 + length
        if length < 2 or end > n:
            return 1
        if marker == 0xE1 and data[i + 4 : i + 10] == b"Exif\0\0":
            return _tiff_orientation(bytes(data[i + 10 : end]))
        i = end
    return 1


def _tiff_orientation(tiff):
    if len(tiff) < 8 or tiff[:2] not in (b"II", b"MM"):
        return 1
    order = "<" if tiff[:2] == b"II" else ">"
    magic, ifd = struct.unpack_from(order + "HI", tiff, 2)
    if magic != 42 or ifd + 2 > len(tiff):
        return 1
    (count,) = struct.unpack_from(order + "H", tiff, ifd)
    for k in range(count):
        entry = ifd + 2 + 12 * k
        if entry + 12 > len(tiff):
            return 1
        tag, kind, n = struct.unpack_from(order + "HHI", tiff, entry)
        if tag == _ORIENTATION_TAG:
            if n != 1 or kind not in (_SHORT, _LONG):
                return 1
            (value,) = struct.unpack_from(order + ("H" if kind == _SHORT else "I"), tiff, entry + 8)
            return value if 1 <= value <= 8 else 1
    return 1


def image_sizes(split):
    """(N, 2) (width, height) of a split's images: from the json, decoding only where it is absent.

    An unreadable image (absent from the json) gets (0, 0). A decoded size is upright (EXIF
    orientation applied, as `read_rgb` returns the image); a json size is taken as written, and
    some datasets write the stored (pre-rotation) size of an EXIF-rotated image, width and height
    swapped: this function does not correct that.
    """
    sizes = split.sizes.copy()
    for r in np.flatnonzero((sizes <= 0).any(axis=1)):
        try:
            h, w = read_rgb(split.path(r)).shape[:2]
        except BadImage:
            h, w = 0, 0
        sizes[r] = (w, h)
    return sizes
