"""The masks files: one per split, `<out>/masks_<split>.npz`, written by the coarse stage.

`image_ids` (int64, N), `masks` (uint8 0/1, N x h x w: the mask over the whole image, resized to
a fixed h x w) and `provenance` (JSON text: the split's fingerprint, the checkpoint and the CAM
settings that made them, and the run id shared by every split of one localization), as
`np.savez_compressed` lays them out, so `np.load` reads them. Written streamed from bit-packed
masks (`write_npz`: memory holds one chunk of unpacked rows, never the file or N x h x w) and
assembled on rank 0 from every rank's shard (`save_shards`), atomically. Read back streamed and
bit-packed (`load_masks`): memory does not grow with N x h x w; masks made from another split,
or of another localization run than the other masks files beside them (`check_same_run`), are
refused.
"""
import hashlib
import itertools
import json
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from . import dist
from .atomic import atomic_write
from .errors import DatasetError

MIN_MASK_SIZE = 32
SPLITS = ("train", "val", "test")  # the masks files of one localization, one run id
ROWS_PER_WRITE = 4096  # masks unpacked and compressed per write: the same chunks whatever the world size
_DATE = (1980, 1, 1, 0, 0, 0)  # zip member times: a file's bytes depend on its content only


def split_fingerprint(split):
    """sha256 of a split's (image id, file name) pairs in id order: what a masks file was made from."""
    h = hashlib.sha256()
    for i, name in sorted(zip((int(i) for i in split.image_ids), split.file_names)):
        h.update(f"{i}\t{name}\n".encode())
    return h.hexdigest()


def packed_size(h, w):
    return (h * w + 7) // 8


def _member(zf, name, write):
    info = zipfile.ZipInfo(name, date_time=_DATE)
    info.compress_type = zipfile.ZIP_DEFLATED
    with zf.open(info, "w", force_zip64=True) as m:
        write(m)


def write_npz(f, image_ids, shape, blocks, provenance=None):
    """Stream a masks file into the open binary file `f`: `blocks` yields bit-packed masks
    (k, packed_size(h, w)) uint8, in file order, N rows in all. Unpacked and compressed
    ROWS_PER_WRITE rows at a time, whatever the blocks' sizes."""
    n, h, w = shape
    ids = np.asarray(image_ids, np.int64)
    if ids.shape != (n,):
        raise ValueError(f"{len(ids)} image ids for {n} masks")

    def masks(m):
        np.lib.format.write_array_header_1_0(m, {"descr": "|u1", "fortran_order": False, "shape": (n, h, w)})
        pending, rows, done = [], 0, 0
        for block in itertools.chain(blocks, [None]):
            if block is not None:
                pending.append(np.asarray(block, np.uint8))
                rows += len(block)
            while rows >= ROWS_PER_WRITE or (block is None and rows):
                buf = np.concatenate(pending)
                k = min(rows, ROWS_PER_WRITE)
                m.write(np.unpackbits(buf[:k], axis=1, count=h * w).tobytes())
                pending, rows, done = [buf[k:]], rows - k, done + k
        if done != n:
            raise ValueError(f"{done} masks for {n} image ids")

    with zipfile.ZipFile(f, "w", zipfile.ZIP_DEFLATED, allowZip64=True) as zf:
        _member(zf, "image_ids.npy", lambda m: np.lib.format.write_array(m, ids, allow_pickle=False))
        _member(zf, "masks.npy", masks)
        if provenance is not None:
            text = np.array(json.dumps(provenance, sort_keys=True))
            _member(zf, "provenance.npy", lambda m: np.lib.format.write_array(m, text, allow_pickle=False))


def save_masks(path, image_ids, masks, provenance=None):
    """Write `masks_<split>.npz` atomically from masks held whole (N, h, w) (tests, benchmarks,
    the ablation; the coarse stage writes from bit-packed shards, `save_shards`).

    `provenance` (a dict, stored as JSON text): the split's fingerprint (`split_fingerprint`),
    the coarse checkpoint and the CAM settings that made the masks. `load_masks` refuses masks
    whose fingerprint is not the split's."""
    masks = np.asarray(masks)
    n, h, w = masks.shape
    blocks = (np.packbits(masks[i : i + ROWS_PER_WRITE].reshape(-1, h * w) != 0, axis=1) for i in range(0, n, ROWS_PER_WRITE))
    atomic_write(path, lambda f: write_npz(f, image_ids, (n, h, w), blocks, provenance))


@dataclass
class PackedShard:
    """This process's masks of one split, bit-packed: rows `rank, rank + world, ...` of the split
    (`datasets.shard`), `packed[j]` the mask of row rank + j * world. `shape` is the whole split's
    (N, h, w); `area` the mean mask area over the whole split."""

    shape: tuple
    packed: np.ndarray  # (ceil((N - rank) / world), packed_size(h, w)) uint8
    area: float = 0.0

    def unpacked(self):
        """(N, h, w) uint8 masks: single process only (tests, benchmarks)."""
        n, h, w = self.shape
        assert len(self.packed) == n, "unpacked() needs every row: one process"
        return np.unpackbits(self.packed, axis=1, count=h * w).reshape(n, h, w)


def gathered_blocks(shard, chunk=None):
    """Every rank's shard, in split order, on rank 0, a chunk at a time (a generator every rank
    must run to its end: the others send their chunks and yield nothing). Rank 0 holds at most
    world x chunk rows at once, besides its own shard; no rank receives another's whole shard."""
    world, chunk = dist.world(), chunk or ROWS_PER_WRITE
    n, h, w = shard.shape
    if world == 1:
        for i in range(0, n, chunk):
            yield shard.packed[i : i + chunk]
        return
    longest = -(-n // world)  # rank 0's shard
    for j in range(0, longest, chunk):
        mine = np.zeros((chunk, packed_size(h, w)), np.uint8)
        part = shard.packed[j : j + chunk]
        mine[: len(part)] = part
        parts = dist.gather_to_main(torch.from_numpy(mine))
        if parts is not None:  # shard position j + i of rank q is split row (j + i) * world + q
            rows = np.stack([p.numpy() for p in parts], axis=1).reshape(chunk * world, -1)
            yield rows[: min(chunk * world, n - j * world)]


def save_shards(write, path, image_ids, shard, provenance, keep=()):
    """Write the masks file of a split localized in shards (collective: every rank calls it; rank 0
    writes through `write(path, fn)`, e.g. `atomic_write` or an `AtomicGroup`'s). Returns, on
    rank 0, {row: mask (h, w)} of the rows in `keep` (the sample figure's), else {}."""
    n, h, w = shard.shape
    kept, keep = {}, set(int(r) for r in keep)
    blocks = gathered_blocks(shard)
    if not dist.is_main():
        for _ in blocks:
            pass
        return kept

    def tapped():
        start = 0
        for block in blocks:
            for r in keep & set(range(start, start + len(block))):
                kept[r] = np.unpackbits(block[r - start], count=h * w).reshape(h, w)
            start += len(block)
            yield block

    write(path, lambda f: write_npz(f, image_ids, shard.shape, tapped(), provenance))
    return kept


def _provenance(zf):
    """The provenance stored in an open masks file, parsed from its JSON text (None in files without one)."""
    if "provenance.npy" not in zf.namelist():
        return None
    return json.loads(str(np.lib.format.read_array(zf.open("provenance.npy"), allow_pickle=False)))


def masks_run(path):
    """The localization run id recorded in a masks file's provenance (None in older files)."""
    try:
        with zipfile.ZipFile(path) as zf:
            made = _provenance(zf)
    except Exception as e:
        raise DatasetError(f"{path}: unreadable masks file ({type(e).__name__}: {e})") from None
    return made.get("run") if isinstance(made, dict) else None


def check_same_run(out_dir, names=SPLITS):
    """Refuse a set of masks files made by different localization runs (a run killed between
    the renames of its files): every file of the set that exists must record the same run id.
    Files older than run ids (none records one) are accepted together."""
    paths = [masks_path(out_dir, n) for n in names if masks_path(out_dir, n).is_file()]
    runs = {p: masks_run(p) for p in paths}
    if len(set(runs.values())) > 1:
        which = ", ".join(f"{p.name} (run {r or 'unrecorded'})" for p, r in runs.items())
        raise DatasetError(f"{Path(out_dir)}: its masks files come from different localization runs: {which}; "
                           f"localize again (coarse/train.py --localize-only) so that they belong together")


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
    made = _provenance(zf)
    if made is not None:
        if made.get("fingerprint") != split_fingerprint(split):
            raise DatasetError(
                f"{path}: made from another {made.get('split', 'split')} than {split.json_path or split.name} "
                f"(other image ids or file names; made by {made.get('checkpoint', 'an unknown checkpoint')}); "
                f"localize this dataset again (coarse/train.py --localize-only)")


def load_masks(out_dir, split):
    """The masks of `split` (a Split), aligned with its rows, as PackedMasks; a clear error if any
    id is missing, or if the masks files in `out_dir` come from different localization runs. The file is streamed: memory holds the packed masks and one chunk of rows."""
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
    check_same_run(out_dir)  # after the file's own checks, which name what is wrong with it
    return PackedMasks(packed, h, w)
