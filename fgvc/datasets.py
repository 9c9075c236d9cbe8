"""torch Datasets over a Split, the epoch sampler, and the data loader.

Every sample carries its own random generator, seeded by (seed, epoch, index, rank) in training
and by (seed, 0, the image's pixels) in inference (`image_key`): augmentations do not depend on
the number of workers or on where a resumed run starts; under torchrun a process draws its own
augmentation and grid mask (rank 0 draws what a single process draws); inference (the test-time
crop centres) draws the same for the same picture anywhere: in any split, row, order or batch,
under any file name (test.py's submission and predict.py's rows agree).
An unreadable image does not crash a worker: the sample comes back with ok=False (and a blank
tensor of the right shape), and the engine leaves it out and counts it. Any other error in reading
or transforming an image is a SampleError naming the json and the file (one line in the CLI).
"""
import math
import zlib

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, default_collate

from . import interrupt
from .errors import BadImagesError, SampleError, first_line
from .image import BadImage, read_rgb


class ImageDataset(Dataset):
    """(uint8 tensor, class index or -1, row index, ok) for each image of `split`.

    `transform(img, rng)`, or `transform(img, mask, rng)` when `masks` are given: anything whose
    `masks[i]` is the (h, w) mask of row i, an array (N, h, w) or `masks.PackedMasks` (bit-packed,
    one mask unpacked per sample). `cache=False`: each file leaves the page cache once read (a
    single pass over the split, as in test.py: the cache would grow by the split's size).
    """

    def __init__(self, split, transform, seed=0, masks=None, cache=True):
        self.split, self.transform, self.seed, self.masks, self.cache = split, transform, seed, masks, cache
        no_mask = None if masks is None else np.zeros((4, 4), np.uint8)
        self.blank = self._apply(np.zeros((8, 8, 3), np.uint8), no_mask, np.random.default_rng(0)).zero_()

    def __len__(self):
        return len(self.split)

    def _apply(self, img, mask, rng):
        return self.transform(img, rng) if mask is None else self.transform(img, mask, rng)

    def __getitem__(self, item):
        training = isinstance(item, tuple)  # EpochSampler's (epoch, index, rank)
        epoch, i, rank = (*item, 0)[:3] if training else (0, item, 0)
        label = -1 if self.split.labels is None else int(self.split.labels[i])
        try:
            img = read_rgb(self.split.path(i), cache=self.cache)
            rng = np.random.default_rng([self.seed, epoch, i, rank] if training else [self.seed, 0, image_key(img)])
            return self._apply(img, None if self.masks is None else self.masks[i], rng), label, i, True
        except BadImage:
            return self.blank.clone(), label, i, False
        except Exception as e:  # in a worker too: the main process gets it as one line naming the file
            raise SampleError(f"{self.split.json_path.name}: image id {self.split.image_ids[i]} ({self.split.path(i)}): "
                              f"{type(e).__name__}: {first_line(e)}") from None


def image_key(img, samples=64):
    """A number from an image's pixels (CRC-32 of its shape and of a grid of about samples x samples
    of its pixels): what seeds its draws in inference, so that the same picture gets the same
    test-time crops whatever its row or file name. Microseconds an image."""
    step = max(1, min(img.shape[:2]) // samples)
    return zlib.crc32(np.ascontiguousarray(img[::step, ::step]).tobytes(), zlib.crc32(np.asarray(img.shape, np.int64).tobytes()))


class BadImageCounter:
    """Distinct unreadable images seen by this process; stops the run past `limit`."""

    def __init__(self, split, limit):
        self.split, self.limit, self.rows = split, limit, set()

    def add(self, rows):
        self.rows.update(int(r) for r in rows)

    def check(self, total):
        if total > self.limit:
            paths = [str(self.split.path(r)) for r in sorted(self.rows)[:10]]
            raise BadImagesError(
                f"{self.split.json_path.name}: {int(total)} unreadable images, more than --max-bad-images "
                f"{self.limit} (first: {', '.join(paths)})"
            )

    def report(self):
        if self.rows:
            names = ", ".join(str(self.split.path(r)) for r in sorted(self.rows)[:5])
            print(f"skipped {len(self.rows)} unreadable {self.split.name} images (first: {names})", flush=True)


def shard(n, rank, world):
    """Row indices of this process for inference: rank, rank + world, ... (no padding)."""
    return list(range(rank, n, world))


class EpochSampler(Sampler):
    """Training order: a permutation seeded by (seed, epoch), padded to a multiple of `world` so
    every process runs the same number of steps, dealt out rank by rank; `start` skips the samples
    this process already saw in the epoch (resume mid-epoch). Yields (epoch, index, rank): the
    sample's augmentation is drawn per process (ImageDataset)."""

    def __init__(self, n, seed=0, rank=0, world=1):
        self.n, self.seed, self.rank, self.world = n, seed, rank, world
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch, start=0):
        self.epoch, self.start = epoch, start

    def _mine(self):
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        perm = torch.randperm(self.n, generator=g).tolist()
        total = math.ceil(self.n / self.world) * self.world
        perm += perm[: total - self.n]
        return perm[self.rank :: self.world]

    def __iter__(self):
        return iter([(self.epoch, i, self.rank) for i in self._mine()[self.start :]])

    def __len__(self):
        return max(0, math.ceil(self.n / self.world) - self.start)


def size_groups(batch):
    """Collate images of different sizes: a list of (x, labels, rows, ok), one per distinct image
    size in the batch, in order of first appearance. Nothing is padded, so what the model computes
    for an image does not depend on which images share its batch."""
    groups = {}
    for img, label, row, ok in batch:
        groups.setdefault(tuple(img.shape), []).append((img, label, row, ok))
    return [tuple(default_collate(items)) for items in groups.values()]


def by_size(rows, sizes):
    """`rows` ordered by the size their images will have (`sizes` (N, 2) per row, e.g. the
    transform's output size from the json's width and height), so that batches rarely mix sizes."""
    keys = np.asarray(sizes, dtype=np.int64)[rows]
    order = np.lexsort((keys[:, 1], keys[:, 0])) if len(rows) else []
    return [rows[i] for i in order]


def make_loader(dataset, batch_size, workers, device, *, sampler=None, persistent=False, collate=None):
    """DataLoader with pinned memory and (optionally) persistent workers on CUDA."""
    cuda = torch.device(device).type == "cuda"
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        collate_fn=collate,
        worker_init_fn=interrupt.worker_init if workers > 0 else None,
        shuffle=False,
        num_workers=workers,
        pin_memory=cuda,
        persistent_workers=persistent and workers > 0,
        prefetch_factor=4 if workers > 0 else None,
    )
