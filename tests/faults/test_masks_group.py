"""The masks files of one localization are one group: a run stopped or failing before its end
leaves every masks file (and the figure) of the earlier run, and a set that mixes two runs (a kill
between the renames) is refused by the stages that read it, with one line."""
import errno
import json
import shutil
import signal
from pathlib import Path

import numpy as np
import pytest
from harness import coarse_args, error_line, fine_args, scoring_args, stage
from helpers import masks_of, temps

import fgvc.atomic as atomic
from fgvc import interrupt
from fgvc.masks import masks_run, save_masks

pytestmark = pytest.mark.slow  # whole stages run: left out of `make test-fast`

SPLITS = ("train", "val", "test")


def earlier_run(clean, tmp_path):
    """A copy of the clean coarse run (its checkpoint, masks and figure) and the bytes of each file."""
    _, coarse, _, _ = clean
    out = tmp_path / "coarse"
    shutil.copytree(coarse, out)
    fig = out.parent / "coarse_sample.png"  # coarse_args' --figure
    fig.write_bytes(b"earlier figure")
    files = [out / f"masks_{n}.npz" for n in SPLITS] + [fig]
    return out, {p: p.read_bytes() for p in files}


def test_every_masks_file_records_one_run_id(clean):
    _, coarse, _, _ = clean
    runs = {masks_run(coarse / f"masks_{n}.npz") for n in SPLITS}
    assert len(runs) == 1 and None not in runs


def test_a_run_stopped_after_its_first_split_leaves_every_earlier_file(clean, tmp_path, run_cli, monkeypatch):
    data = clean[0]
    out, before = earlier_run(clean, tmp_path)
    train = stage("coarse/train.py")
    real, calls = train.save_shards, []

    def save_then_stop(*a, **k):
        real(*a, **k)
        calls.append(a[1])
        raise interrupt.Stopped(signal.SIGTERM)  # SIGTERM right after masks_train is written

    monkeypatch.setattr(train, "save_shards", save_then_stop)
    code, _, err = run_cli("coarse/train.py", *coarse_args(data, out, "--localize-only", "--cam-threshold", "0.3"))
    assert code == 143 and "earlier outputs are left as they were" in error_line(err)
    assert [p.name for p in calls] == ["masks_train.npz"]
    assert {p: p.read_bytes() for p in before} == before  # none of the new run's files
    assert not temps(out) and "Traceback" not in err


def test_a_stop_right_after_the_first_rename_leaves_a_set_no_stage_accepts(clean, tmp_path, run_cli, monkeypatch):
    # what only a SIGKILL (or a failing rename) can do, signals being held back there: masks_train
    # of the new run, val and test of the earlier one
    data, _, fine, _ = clean
    out, before = earlier_run(clean, tmp_path)
    real, renamed = atomic.os.replace, []

    def replace_once(src, dst):
        if renamed:
            raise OSError(errno.EIO, "Input/output error", str(dst))
        renamed.append(dst)
        return real(src, dst)

    monkeypatch.setattr(atomic.os, "replace", replace_once)
    code, _, err = run_cli("coarse/train.py", *coarse_args(data, out, "--localize-only", "--cam-threshold", "0.3"))
    monkeypatch.setattr(atomic.os, "replace", real)
    assert code == 1 and "masks_val.npz" in error_line(err) and "Traceback" not in err, err[-2000:]
    assert [Path(p).name for p in renamed] == ["masks_train.npz"]
    assert (out / "masks_train.npz").read_bytes() != before[out / "masks_train.npz"]
    assert (out / "masks_val.npz").read_bytes() == before[out / "masks_val.npz"]
    assert not temps(out)
    code, _, err = run_cli("fine/train.py", *fine_args(data, tmp_path / "fine", out, "--epochs", "1"))
    assert code == 2 and "different localization runs" in error_line(err) and "masks_train.npz" in error_line(err)
    assert not (tmp_path / "fine" / "checkpoint.pt").exists()
    sub = tmp_path / "submission.csv"  # val and test are of one run, but train is not: refused too
    code, _, err = run_cli("test.py", *scoring_args(data, out, fine, sub, "--model", "fine", "--tau", "0"))
    assert code == 2 and "different localization runs" in error_line(err) and not sub.exists()


def test_a_full_disk_at_the_figure_leaves_every_earlier_file(clean, tmp_path, run_cli, monkeypatch):
    data = clean[0]
    out, before = earlier_run(clean, tmp_path)
    real = atomic._write_temp

    def full_at_png(path, write, mode):
        if str(path).endswith(".png"):
            raise OSError(errno.ENOSPC, "cannot write it: No space left on device", str(path))
        return real(path, write, mode)

    monkeypatch.setattr(atomic, "_write_temp", full_at_png)
    code, _, err = run_cli("coarse/train.py", *coarse_args(data, out, "--localize-only", "--cam-threshold", "0.3"))
    assert code == 1 and "No space left on device" in error_line(err), err[-2000:]
    assert "Traceback" not in err
    assert {p: p.read_bytes() for p in before} == before
    assert not temps(out)


def test_a_completed_run_replaces_the_whole_group(clean, tmp_path, run_cli):
    data = clean[0]
    out, before = earlier_run(clean, tmp_path)
    code, _, err = run_cli("coarse/train.py", *coarse_args(data, out, "--localize-only", "--cam-threshold", "0.3"))
    assert code == 0, err[-2000:]
    assert all(p.read_bytes() != b for p, b in before.items())
    assert len({masks_run(out / f"masks_{n}.npz") for n in SPLITS}) == 1
    assert masks_run(out / "masks_val.npz") != masks_run(clean[1] / "masks_val.npz")


def mixed(clean, tmp_path, split):
    """The clean run's masks with `split`'s file as another run left it (a kill between renames)."""
    out, _ = earlier_run(clean, tmp_path)
    path = out / f"masks_{split}.npz"
    with np.load(path, allow_pickle=False) as f:
        made = json.loads(str(f["provenance"]))
    ids, masks = masks_of(path)
    save_masks(path, ids, 1 - masks, {**made, "run": "0123456789abcdef", "cam_threshold": 0.3})
    return out


def test_fine_stage_refuses_masks_of_two_runs(clean, tmp_path, run_cli):
    data = clean[0]
    coarse = mixed(clean, tmp_path, "train")
    code, _, err = run_cli("fine/train.py", *fine_args(data, tmp_path / "fine", coarse, "--epochs", "1"))
    line = error_line(err)
    assert code == 2 and "different localization runs" in line and "masks_train.npz (run 0123456789abcdef)" in line
    assert not (tmp_path / "fine" / "checkpoint.pt").exists()


@pytest.mark.parametrize("split", ["val", "test"])
def test_test_py_refuses_masks_of_two_runs(clean, tmp_path, run_cli, split):
    data, _, fine, _ = clean
    coarse = mixed(clean, tmp_path, split)
    sub = tmp_path / "submission.csv"
    code, _, err = run_cli("test.py", *scoring_args(data, coarse, fine, sub, "--model", "fine", "--tau", "auto"))
    assert code == 2 and "different localization runs" in error_line(err) and f"masks_{split}.npz" in error_line(err)
    assert not sub.exists()


def test_masks_older_than_run_ids_are_accepted_together(clean, tmp_path, run_cli):
    data, _, fine, _ = clean
    out, _ = earlier_run(clean, tmp_path)
    for n in SPLITS:  # as np.savez_compressed wrote them before run ids
        ids, masks = masks_of(out / f"masks_{n}.npz")
        np.savez_compressed(out / f"masks_{n}.npz", image_ids=ids, masks=masks)
    sub = tmp_path / "submission.csv"
    code, _, err = run_cli("test.py", *scoring_args(data, out, fine, sub, "--model", "fine", "--tau", "0"))
    assert code == 0, err[-2000:]
    assert sub.exists()


def test_masks_record_what_made_them(clean):
    _, coarse, *_ = clean
    with np.load(coarse / "masks_val.npz", allow_pickle=False) as f:
        made = json.loads(str(f["provenance"]))
    assert made["split"] == "val" and len(made["fingerprint"]) == 64 and made["cam_threshold"] == 0.7
    assert "checkpoint.pt" in made["checkpoint"] and made["mask_size"] == [32, 32]
