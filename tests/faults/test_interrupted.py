"""Runs killed (SIGKILL) at random moments and in the middle of a write: training resumes to the
end an uninterrupted run reaches, and every file on disk is the previous complete one or none."""
import random

import numpy as np
from harness import make_dataset
from helpers import (STEPS_PER_EPOCH, after_save, coarse_args, copy_dir, kill_when, masks_of, scoring_args, spawn,
                     temps, when_writing)

from fgvc.annotations import load_dataset
from fgvc.checkpoint import load_checkpoint
from fgvc.masks import save_masks
from fgvc.submission import read_submission, write_submission


def test_training_survives_five_kills_and_finishes_where_an_uninterrupted_run_does(tmp_path):
    data = make_dataset(tmp_path / "ds")
    out, ckpt = tmp_path / "run", tmp_path / "run" / "checkpoint.pt"
    args = coarse_args(data, out, "--epochs", "2", "--save-every", "1", "--resume")
    rng = random.Random(0)
    # 6 saves in all (steps 1, 2 mid-epoch and the epoch end, twice); every kill leaves at least
    # one new save behind except the first, so the sixth run finishes.
    plan = [("during the first checkpoint write", lambda: when_writing(out, 1)),
            ("at random after a save", lambda: after_save(ckpt, rng.uniform(0.0, 0.4))),
            ("during the second checkpoint write", lambda: when_writing(out, 2)),
            ("at random after a save", lambda: after_save(ckpt, rng.uniform(0.0, 0.4))),
            ("during the second checkpoint write", lambda: when_writing(out, 2)),
            ("never", lambda: (lambda: False))]
    state, kills = None, 0
    for n, (moment, trigger) in enumerate(plan):
        with open(tmp_path / f"log{n}.txt", "w") as log:
            before_temps = temps(out)
            proc = spawn("coarse/train.py", *args, log=log)
            killed = kill_when(proc, trigger(), log)
        text = (tmp_path / f"log{n}.txt").read_text()
        if moment == "never":
            assert not killed and proc.returncode == 0, text[-3000:]
            break
        assert killed, f"run {n} finished before the kill {moment}:\n{text[-3000:]}"
        kills += 1
        if "write" in moment:  # the kill landed mid-write: its temporary file is still there
            assert temps(out) - before_temps, f"run {n}: no write in progress when killed"
        for path in out.glob("*.pt"):  # every checkpoint on disk loads and is consistent
            c = load_checkpoint(path)
            assert c["step"] == c["epoch"] * STEPS_PER_EPOCH + c["step_in_epoch"]
        now = load_checkpoint(ckpt)["step"] if ckpt.exists() else None
        if moment == "during the first checkpoint write":
            assert now == state  # the previous checkpoint (here: none), never a partial one
        assert (now or 0) >= (state or 0)
        state = now
    assert kills == 5
    final = load_checkpoint(ckpt)
    assert (final["epoch"], final["step"], final["step_in_epoch"]) == (2, 2 * STEPS_PER_EPOCH, 0)
    assert not temps(out)  # the temporary files of killed writes were cleaned up by the next write
    _, splits = load_dataset(data)
    for name, split in splits.items():
        ids, masks = masks_of(out / f"masks_{name}.npz")
        assert sorted(ids.tolist()) == sorted(split.image_ids.tolist()) and masks.shape[0] == len(split)


def test_localization_killed_mid_write_leaves_previous_or_no_masks(clean, tmp_path):
    data, coarse, _, _ = clean
    out = copy_dir(coarse, tmp_path / "coarse", ["checkpoint.pt"])
    ids, masks = masks_of(coarse / "masks_val.npz")
    save_masks(out / "masks_val.npz", ids, np.ones_like(masks))  # unlike what this run writes
    previous = (out / "masks_val.npz").read_bytes()
    with open(tmp_path / "log.txt", "w") as log:
        proc = spawn("coarse/train.py", *coarse_args(data, out, "--localize-only"), log=log)
        assert kill_when(proc, when_writing(out, 2), log)  # 1: masks_train, 2: masks_val
    assert (out / "masks_val.npz").read_bytes() == previous  # previous complete file
    assert any(t.startswith(".masks_val.npz.") for t in temps(out))  # killed during its write
    assert any(t.startswith(".masks_train.npz.") for t in temps(out))  # written, waiting for the group's rename
    assert not (out / "masks_train.npz").exists()  # the group is renamed at the end only: none of this run
    assert not (out / "masks_test.npz").exists()  # not reached: none


def test_test_py_killed_mid_write_leaves_the_previous_submission(clean, tmp_path):
    data, coarse, fine, sub = clean
    target = tmp_path / "submission.csv"
    rows = read_submission(sub)
    write_submission(target, list(rows), [[40, 17, 5]] * len(rows))  # unlike what this run writes
    previous = target.read_bytes()
    with open(tmp_path / "log.txt", "w") as log:
        proc = spawn("test.py", *scoring_args(data, coarse, fine, target, "--model", "coarse"), log=log)
        assert kill_when(proc, when_writing(tmp_path, 1), log)
    assert target.read_bytes() == previous
    assert any(t.startswith(".submission.csv.") for t in temps(tmp_path))
