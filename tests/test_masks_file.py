"""The masks file: written streamed from bit-packed masks, read by np.load as the arrays README
documents; files of the earlier writer still load; a file assembled from the shards of several
processes is the single-process file byte for byte; the reader streams it back bit-packed, aligned
with the split, and refuses a damaged file in one line."""
import json
import os
import socket
import zipfile

import cv2
import numpy as np
import pytest
import torch
import torch.distributed as torch_dist
import torch.multiprocessing as mp

from fgvc import masks as M
from fgvc.annotations import Split
from fgvc.atomic import atomic_write
from fgvc.crop import MultiCropTransform
from fgvc.datasets import ImageDataset
from fgvc.errors import DatasetError
from fgvc.masks import PackedMasks, load_masks, masks_path, save_masks


def random_masks(n, h=32, w=48, seed=0):
    return (np.random.default_rng(seed).random((n, h, w)) < 0.4).astype(np.uint8)


def split_of(ids, root=None, name="val"):
    ids = np.asarray(ids, np.int64)
    json_path = None if root is None else root / f"{name}2019.json"
    return Split(name, json_path, root, ids, [f"{i}.jpg" for i in ids], None, np.full((len(ids), 2), -1, np.int64))


@pytest.mark.parametrize("shape", [(5, 33, 35), (M.ROWS_PER_WRITE + 3, 32, 32)])
def test_np_load_gives_the_documented_arrays(tmp_path, shape):
    masks = random_masks(*shape)
    ids = np.arange(shape[0]) * 7 + 3
    M.save_masks(tmp_path / "m.npz", ids, masks, {"run": "r"})
    with np.load(tmp_path / "m.npz", allow_pickle=False) as f:
        assert sorted(f.files) == ["image_ids", "masks", "provenance"]
        assert f["image_ids"].dtype == np.int64 and np.array_equal(f["image_ids"], ids)
        assert f["masks"].dtype == np.uint8 and f["masks"].shape == shape and np.array_equal(f["masks"], masks)
        assert json.loads(str(f["provenance"])) == {"run": "r"}


def test_a_file_of_the_earlier_writer_still_loads(tmp_path):
    # what save_masks wrote before: np.savez_compressed of the whole arrays (with and without provenance)
    masks, ids = random_masks(6, 40, 36), np.array([9, 3, 5, 1, 7, 2])
    split = split_of(sorted(ids), tmp_path)
    np.savez_compressed(tmp_path / "masks_val.npz", image_ids=ids, masks=masks)
    got = M.load_masks(tmp_path, split)
    order = np.argsort(ids)
    assert all(np.array_equal(got[r], masks[order[r]]) for r in range(6))
    made = {"split": "val", "fingerprint": M.split_fingerprint(split)}
    np.savez_compressed(tmp_path / "masks_val.npz", image_ids=ids, masks=masks, provenance=np.array(json.dumps(made)))
    assert np.array_equal(M.load_masks(tmp_path, split).packed, got.packed)
    assert M.masks_run(tmp_path / "masks_val.npz") is None


def test_the_same_masks_give_the_same_bytes(tmp_path):
    masks = random_masks(50, 32, 32)
    M.save_masks(tmp_path / "a.npz", np.arange(50), masks, {"run": "r"})
    M.save_masks(tmp_path / "b.npz", np.arange(50), masks, {"run": "r"})
    assert (tmp_path / "a.npz").read_bytes() == (tmp_path / "b.npz").read_bytes()  # no time stamps inside


def test_a_short_stream_is_refused_and_nothing_is_written(tmp_path):
    blocks = [np.packbits(random_masks(3, 32, 32).reshape(3, -1), axis=1)]
    with pytest.raises(ValueError, match="3 masks for 4 image ids"):
        atomic_write(tmp_path / "m.npz", lambda f: M.write_npz(f, np.arange(4), (4, 32, 32), iter(blocks)))
    assert not os.listdir(tmp_path)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank(rank, world, port, out, masks, ids):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch_dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        n, h, w = masks.shape
        mine = masks[rank::world]  # datasets.shard's rows
        shard = M.PackedShard(masks.shape, np.packbits(mine.reshape(len(mine), -1), axis=1))
        kept = M.save_shards(atomic_write, out, ids, shard, {"run": "r"}, keep=(0, n - 1))
        if rank == 0:
            assert sorted(kept) == [0, n - 1] and np.array_equal(kept[n - 1], masks[n - 1])
        else:
            assert kept == {}
    finally:
        torch_dist.destroy_process_group()


@pytest.mark.parametrize("world", [2, 3])
def test_sharded_file_equals_the_single_process_file_byte_for_byte(tmp_path, world, monkeypatch):
    monkeypatch.setattr(M, "ROWS_PER_WRITE", 16)  # several gathered chunks, and a last one that is short
    masks, ids = random_masks(101, 32, 40, seed=world), np.arange(101) + 1000
    M.save_masks(tmp_path / "single.npz", ids, masks, {"run": "r"})
    mp.start_processes(_rank, args=(world, _free_port(), tmp_path / "sharded.npz", masks, ids), nprocs=world,
                       start_method="fork")
    assert (tmp_path / "sharded.npz").read_bytes() == (tmp_path / "single.npz").read_bytes()


def test_masks_of_different_runs_are_refused_together(tmp_path):
    masks, val = random_masks(3, 32, 32), split_of([1, 2, 3], tmp_path)
    M.save_masks(M.masks_path(tmp_path, "val"), [1, 2, 3], masks, {"run": "aaa", "fingerprint": M.split_fingerprint(val)})
    M.save_masks(M.masks_path(tmp_path, "test"), [4, 5, 6], masks, {"run": "aaa"})
    M.check_same_run(tmp_path, ["val", "test"])
    M.save_masks(M.masks_path(tmp_path, "test"), [4, 5, 6], masks, {"run": "bbb"})
    with pytest.raises(M.DatasetError, match=r"different localization runs: masks_val.npz \(run aaa\), masks_test.npz \(run bbb\)"):
        M.check_same_run(tmp_path, ["val", "test"])
    with pytest.raises(M.DatasetError, match="different localization runs"):  # what the stages call
        M.load_masks(tmp_path, val)
    M.save_masks(M.masks_path(tmp_path, "test"), [4, 5, 6], masks)  # no provenance: a run unrecorded
    with pytest.raises(M.DatasetError, match="run unrecorded"):
        M.check_same_run(tmp_path, ["val", "test"])
    M.save_masks(M.masks_path(tmp_path, "val"), [1, 2, 3], masks)  # both older than run ids: accepted
    M.check_same_run(tmp_path)
    assert len(M.load_masks(tmp_path, val)) == 3


# ---------------------------------------------------------------- the streaming reader

def test_masks_come_back_aligned_with_the_split(tmp_path):
    ids = np.array([50, 10, 40, 20, 30, 99])  # file order is not the split's; 99 is not in the split
    masks = random_masks(len(ids))
    save_masks(masks_path(tmp_path, "val"), ids, masks)
    split = split_of([10, 20, 30, 40, 50])
    got = load_masks(tmp_path, split)
    assert isinstance(got, PackedMasks) and len(got) == 5 and got.shape == (5, 32, 48)
    for r, i in enumerate(split.image_ids):
        want = masks[list(ids).index(i)]
        assert got[r].dtype == np.uint8 and np.array_equal(got[r], want)
    assert got.packed.nbytes == 5 * 32 * 48 // 8  # one bit a pixel


def test_masks_stream_in_chunks_and_accept_any_nonzero(tmp_path):
    n = 5000  # 32 x 32 masks: 4,096 rows a chunk, so two chunks
    ids = np.arange(1000, 1000 + n)[::-1]
    masks = random_masks(n, 32, 32, seed=1) * 255  # nonzero is "in the mask"
    save_masks(masks_path(tmp_path, "test"), ids, masks)
    got = load_masks(tmp_path, split_of(np.sort(ids), name="test"))
    for r in (0, 1, 4095, 4096, 4999):
        assert np.array_equal(got[r], (masks[n - 1 - r] != 0).astype(np.uint8))


def test_fortran_ordered_masks_still_load(tmp_path):
    masks = np.asfortranarray(random_masks(4))
    save_masks(masks_path(tmp_path, "val"), [1, 2, 3, 4], masks)
    got = load_masks(tmp_path, split_of([1, 2, 3, 4]))
    assert all(np.array_equal(got[r], masks[r]) for r in range(4))


def test_mask_errors_are_one_clear_line(tmp_path):
    with pytest.raises(DatasetError, match="masks file not found; run the coarse stage"):
        load_masks(tmp_path, split_of([1]))
    save_masks(masks_path(tmp_path, "val"), [1, 2], random_masks(2))
    with pytest.raises(DatasetError, match=r"masks for 2 of 3 val image ids are missing \(first: \[3, 4\]\)"):
        load_masks(tmp_path, split_of([1, 3, 4]))
    np.savez(masks_path(tmp_path, "val"), image_ids=np.array([1, 2]), masks=np.zeros((2, 5), np.uint8))
    with pytest.raises(DatasetError, match=r"expected image_ids \(N,\) and masks \(N, h, w\)"):
        load_masks(tmp_path, split_of([1]))
    masks_path(tmp_path, "val").write_bytes(b"not a zip")
    with pytest.raises(DatasetError, match="unreadable masks file"):
        load_masks(tmp_path, split_of([1]))
    with zipfile.ZipFile(masks_path(tmp_path, "val"), "w") as z:
        z.writestr("image_ids.npy", b"")
    with pytest.raises(DatasetError, match="unreadable masks file"):
        load_masks(tmp_path, split_of([1]))


def test_truncated_masks_data_is_refused(tmp_path):
    path = masks_path(tmp_path, "val")
    save_masks(path, [1, 2, 3], random_masks(3))
    with zipfile.ZipFile(path) as z:
        ids, data = z.read("image_ids.npy"), z.read("masks.npy")
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("image_ids.npy", ids)
        z.writestr("masks.npy", data[:-100])
    with pytest.raises(DatasetError, match="unreadable masks file.*ends after row"):
        load_masks(tmp_path, split_of([1, 2, 3]))


def test_packed_masks_feed_the_test_time_crops(tmp_path):
    root = tmp_path / "img"
    root.mkdir()
    for i in (7, 8):
        cv2.imwrite(str(root / f"{i}.jpg"), np.full((60, 80, 3), 100, np.uint8))
    masks = np.zeros((2, 32, 32), np.uint8)
    masks[:, 8:24, 8:24] = 1
    save_masks(masks_path(tmp_path, "val"), [7, 8], masks)
    split = split_of([7, 8], root=root)
    ds = ImageDataset(split, MultiCropTransform(24, (1, 2), (1,)), masks=load_masks(tmp_path, split))
    x, _, _, ok = ds[1]
    assert ok and x.shape == (3, 3, 24, 24) and x.dtype == torch.uint8
