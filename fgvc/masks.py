"""The masks files: one per split, `<out>/masks_<split>.npz`, written by the coarse stage.

`image_ids` (int64, N), `masks` (uint8 0/1, N x h x w: the mask over the whole image, resized to
a fixed h x w) and `provenance` (JSON text: the split's fingerprint, the checkpoint and the CAM
settings that made them), written atomically. Read back streamed and bit-packed (`load_masks`):
memory does not grow with N x h x w; masks made from another split are refused.
"""
import hashlib
import io
import json
import zipfile
from pathlib import Path

import numpy as np

from .atomic import atomic_write
from .errors import DatasetError

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
