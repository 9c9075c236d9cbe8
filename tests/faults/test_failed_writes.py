"""Writes that fail (a file size limit, as on a full disk) keep the previous checkpoint, masks or
submission, exit code 1; a non-finite loss stops training with one line naming the epoch and step."""
import shutil

import pytest
from harness import coarse_args, error_line, make_dataset, scoring_args
from helpers import copy_dir, run_limited, temps

from fgvc.checkpoint import load_checkpoint

pytestmark = pytest.mark.slow  # whole stages run: left out of `make test-fast`


# ---------------------------------------------------------------- failed writes

def test_failed_checkpoint_write_keeps_the_previous_checkpoint(tmp_path, run_cli, monkeypatch):
    data = make_dataset(tmp_path / "ds")
    out = tmp_path / "run"
    args = coarse_args(data, out, "--epochs", "2", "--save-every", "1", "--resume")
    import fgvc.engine as engine

    real = engine.save_checkpoint

    def save_then_stop(*a, **k):
        real(*a, **k)
        raise KeyboardInterrupt  # the run stops right after its first checkpoint

    monkeypatch.setattr(engine, "save_checkpoint", save_then_stop)
    code, _, err = run_cli("coarse/train.py", *args)
    assert code == 130 and "stopped by SIGINT" in error_line(err)  # Ctrl-C: one line, exit 130
    monkeypatch.setattr(engine, "save_checkpoint", real)
    previous = (out / "checkpoint.pt").read_bytes()
    assert load_checkpoint(out / "checkpoint.pt")["step"] == 1

    p = run_limited("coarse/train.py", *args, max_bytes=1 << 20)  # the next checkpoint cannot be written
    assert p.returncode == 1, p.stderr[-3000:]
    assert f"error: {out / 'checkpoint.pt'}: cannot write it: File too large (previous files left intact)" in p.stderr
    assert (out / "checkpoint.pt").read_bytes() == previous and not temps(out)


def test_failed_masks_write_keeps_the_previous_masks(clean, tmp_path):
    data, coarse, _, _ = clean
    out = copy_dir(coarse, tmp_path / "coarse", ["checkpoint.pt", "masks_train.npz"])
    previous = (out / "masks_train.npz").read_bytes()
    p = run_limited("coarse/train.py", *coarse_args(data, out, "--localize-only"), max_bytes=256)
    assert p.returncode == 1, p.stderr[-3000:]
    assert f"error: {out / 'masks_train.npz'}: cannot write it: File too large" in p.stderr
    assert (out / "masks_train.npz").read_bytes() == previous and not temps(out)


def test_failed_submission_write_keeps_the_previous_submission(clean, tmp_path):
    data, coarse, fine, sub = clean
    target = tmp_path / "submission.csv"
    shutil.copy2(sub, target)
    previous = target.read_bytes()
    p = run_limited("test.py", *scoring_args(data, coarse, fine, target, "--model", "coarse"), max_bytes=64)
    assert p.returncode == 1, p.stderr[-3000:]
    assert f"error: {target}: cannot write it: File too large" in p.stderr
    assert target.read_bytes() == previous and not temps(tmp_path)


# ---------------------------------------------------------------- non-finite loss

def test_non_finite_loss_stops_cleanly_naming_epoch_and_step(tmp_path, run_cli):
    data = make_dataset(tmp_path / "ds")
    out = tmp_path / "run"
    code, _, err = run_cli("coarse/train.py", *coarse_args(data, out, "--epochs", "1", "--lr", "1e30"))
    line = error_line(err)
    assert code == 2 and "non-finite loss" in line and "at epoch 1, step 2 of the epoch" in line
    assert not (out / "checkpoint.pt").exists()  # blew up before the first save: nothing to keep
    assert "no checkpoint was written yet" in line
