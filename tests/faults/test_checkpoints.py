"""Checkpoints that are refused: one that would run code, a truncated one, one of another
architecture, kind or class set, and a --resume whose essential flags or classes changed. Each is
one line, exit code 2, with nothing written."""
import os

import pytest
import torch
from harness import coarse_args, error_line, make_dataset, scoring_args
from helpers import RunsCode, copy_dir

pytestmark = pytest.mark.slow  # whole stages run: left out of `make test-fast`


# ---------------------------------------------------------------- hostile or damaged checkpoints

@pytest.mark.parametrize("how", ["test.py --fine", "coarse --resume", "coarse --localize-only"])
def test_checkpoint_that_would_run_code_is_refused_and_not_run(clean, tmp_path, run_cli, how):
    data, coarse, fine, _ = clean
    marker = tmp_path / "pwned"
    evil_dir = tmp_path / "evil"
    evil_dir.mkdir()
    torch.save({"format": 1, "model_args": RunsCode(marker), "model": {}}, evil_dir / "checkpoint.pt")
    if how == "test.py --fine":
        code, _, err = run_cli("test.py", *scoring_args(data, coarse, evil_dir, tmp_path / "s.csv"))
    elif how == "coarse --resume":
        code, _, err = run_cli("coarse/train.py", *coarse_args(data, evil_dir, "--epochs", "1", "--resume"))
    else:
        code, _, err = run_cli("coarse/train.py", *coarse_args(data, evil_dir, "--localize-only"))
    line = error_line(err)
    assert code == 2 and f"{evil_dir / 'checkpoint.pt'}: refused or unreadable checkpoint" in line
    assert not marker.exists()
    assert sorted(os.listdir(evil_dir)) == ["checkpoint.pt"] and not (tmp_path / "s.csv").exists()


def test_truncated_checkpoint_is_a_clear_error(clean, tmp_path, run_cli):
    data, coarse, _, _ = clean
    out = tmp_path / "coarse"
    out.mkdir()
    (out / "checkpoint.pt").write_bytes((coarse / "checkpoint.pt").read_bytes()[:100_000])
    code, _, err = run_cli("coarse/train.py", *coarse_args(data, out, "--epochs", "1", "--resume"))
    assert code == 2 and f"{out / 'checkpoint.pt'}: refused or unreadable checkpoint" in error_line(err)


# ---------------------------------------------------------------- checkpoints of another model

def test_checkpoint_of_another_architecture(clean, tmp_path, run_cli):
    data, coarse, _, _ = clean
    out = copy_dir(coarse, tmp_path / "coarse", ["checkpoint.pt"])
    code, _, err = run_cli("coarse/train.py", *coarse_args(data, out, "--localize-only", "--arch", "resnet34"))
    assert code == 2 and "architecture resnet18, but --arch is resnet34" in error_line(err)
    assert sorted(os.listdir(out)) == ["checkpoint.pt"]


def test_checkpoint_of_another_kind(clean, tmp_path, run_cli):
    data, coarse, _, _ = clean
    code, _, err = run_cli("test.py", *scoring_args(data, coarse, coarse, tmp_path / "s.csv"))
    assert code == 2 and "a coarse model, expected a fine model" in error_line(err)
    assert not (tmp_path / "s.csv").exists()


def test_checkpoint_of_another_class_set(clean, tmp_path, run_cli):
    _, coarse, fine, _ = clean
    other = make_dataset(tmp_path / "other", category_ids=(5, 17, 41))
    code, _, err = run_cli("test.py", *scoring_args(other, coarse, fine, tmp_path / "s.csv"))
    line = error_line(err)
    assert code == 2 and "class mapping differs" in line and "only in checkpoint: [40], only in dataset: [41]" in line
    assert not (tmp_path / "s.csv").exists()


# ---------------------------------------------------------------- resume with something changed

def test_resume_with_changed_essential_flags(clean, tmp_path, run_cli):
    data, coarse, _, _ = clean
    out = copy_dir(coarse, tmp_path / "coarse", ["checkpoint.pt"])
    code, _, err = run_cli("coarse/train.py", *coarse_args(data, out, "--epochs", "3", "--resume", "--img-size", "64", "--lr", "0.1"))
    line = error_line(err)
    assert code == 2 and "--resume with changed essential flags" in line
    assert "--img-size 48 -> 64" in line and "--epochs 1 -> 3" in line and "--lr 0.04 -> 0.1" in line
    assert sorted(os.listdir(out)) == ["checkpoint.pt"]


def test_resume_on_another_class_set(clean, tmp_path, run_cli):
    _, coarse, _, _ = clean
    other = make_dataset(tmp_path / "other", category_ids=(5, 17, 41))
    out = copy_dir(coarse, tmp_path / "coarse", ["checkpoint.pt"])
    code, _, err = run_cli("coarse/train.py", *coarse_args(other, out, "--epochs", "1", "--resume"))
    line = error_line(err)
    assert code == 2 and "class mapping differs" in line and "only in dataset: [41]" in line


# ---------------------------------------------------------------- damaged checkpoints

DAMAGE = {
    "optimizer None": (lambda c: c.update(optimizer=None), "no optimizer state to resume with"),
    "optimizer {}": (lambda c: c.update(optimizer={}), "'optimizer' is not an optimizer state"),
    "no param_groups": (lambda c: c["optimizer"].pop("param_groups"), "'optimizer' is not an optimizer state"),
    "epoch a string": (lambda c: c.update(epoch="1"), "'epoch' is '1', expected a whole number >= 0"),
    "epoch negative": (lambda c: c.update(epoch=-1), "'epoch' is -1, expected a whole number >= 0"),
    "step past the epoch": (lambda c: c.update(epoch=0, step_in_epoch=99), "epoch 0, step 99 into the next, but the run has 1 epochs of 3 steps"),
    "step negative": (lambda c: c.update(step_in_epoch=-1), "'step_in_epoch' is -1"),
    "steps short of the epoch": (lambda c: c.update(step=1), "1 optimizer steps cannot reach epoch 1, step 0"),
}


@pytest.mark.parametrize("case", list(DAMAGE))
def test_damaged_checkpoint_is_refused_on_resume(clean, tmp_path, run_cli, case):
    data, coarse, *_ = clean
    out = tmp_path / "coarse"
    out.mkdir()
    ckpt = torch.load(coarse / "checkpoint.pt", map_location="cpu", weights_only=True)
    change, message = DAMAGE[case]
    change(ckpt)
    torch.save(ckpt, out / "checkpoint.pt")
    before = (out / "checkpoint.pt").read_bytes()
    code, _, err = run_cli("coarse/train.py", *coarse_args(data, out, "--epochs", "1", "--resume"))
    line = error_line(err)
    assert code == 2 and "damaged checkpoint" in line and message in line, line
    assert (out / "checkpoint.pt").read_bytes() == before and not list(out.glob("masks_*"))
