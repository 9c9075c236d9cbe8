"""Runs killed (SIGKILL) at random moments and in the middle of a write: training resumes to the
end an uninterrupted run reaches, and every file on disk is the previous complete one or none."""
import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from harness import ROOT, STEPS_PER_EPOCH, coarse_args, error_line, make_dataset, scoring_args
from helpers import after_save, copy_dir, kill_when, masks_of, spawn, temps, when_writing

from fgvc import interrupt
from fgvc.annotations import load_dataset
from fgvc.checkpoint import load_checkpoint
from fgvc.config import TrainConfig
from fgvc.datasets import ImageDataset
from fgvc.engine import fit
from fgvc.masks import save_masks
from fgvc.stages import build_model, model_args
from fgvc.submission import read_submission, write_submission
from fgvc.transforms import EvalTransform, TrainTransform

pytestmark = pytest.mark.slow  # whole stages run: left out of `make test-fast`


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


# ---------------------------------------------------------------- signals

def tiny_fit(data, out, epochs=2, resume=False, stop_at=None):
    """fit() of a tiny coarse model; SIGTERM is sent to this process at global step `stop_at`."""
    torch.manual_seed(0)
    classes, splits = load_dataset(data, splits=("train", "val"))
    train = ImageDataset(splits["train"], TrainTransform(48, 56, fill=(124, 116, 104)), 0)
    val = ImageDataset(splits["val"], EvalTransform(48), 0)
    model = build_model("coarse", "resnet18", len(classes))
    calls = {"n": 0}
    forward = model.forward

    def forward_then_signal(x):
        if model.training:
            calls["n"] += 1
            if calls["n"] == stop_at:
                os.kill(os.getpid(), signal.SIGTERM)
        return forward(x)

    model.forward = forward_then_signal
    cfg = dict(epochs=epochs, batch_size=8, eval_batch_size=16, lr=0.05, backbone_lr_ratio=1.0, amp="off", workers=0,
               seed=0, resume=resume, save_every=0, max_bad_images=5, log_every=1, sync_bn=False, arch="resnet18",
               img_size=48, resize=56, freeze=False, world_size=1, optimizer="sgd", dropout=0.25, frozen_bn="train")
    return fit(model, train, val, config=TrainConfig.from_flags(cfg, "cpu"), out_dir=out, class_ids=classes.ids,
               model_args=model_args("coarse", "resnet18", len(classes), False))


def test_sigterm_mid_epoch_saves_that_step_and_resumes_to_the_same_weights(tmp_path, sigterm_handlers):
    data = make_dataset(tmp_path / "ds")
    full = tiny_fit(data, tmp_path / "full").state_dict()
    with pytest.raises(interrupt.Stopped) as stopped:
        tiny_fit(data, tmp_path / "cut", stop_at=5)  # epoch 2 (3 steps an epoch), its 2nd step
    assert stopped.value.code == 143 and "stopped by SIGTERM at epoch 2/2, step 2 of 3" in str(stopped.value)
    saved = load_checkpoint(tmp_path / "cut" / "checkpoint.pt")
    assert (saved["epoch"], saved["step"], saved["step_in_epoch"]) == (1, 5, 2)
    interrupt.install()  # a new process, as after a requeue
    resumed = tiny_fit(data, tmp_path / "cut", resume=True).state_dict()
    assert all(torch.equal(full[k], resumed[k]) for k in full)


@pytest.mark.parametrize("sig,code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signalled_run_prints_one_line_and_resumes(tmp_path, sig, code):
    data = make_dataset(tmp_path / "ds")
    out = tmp_path / "coarse"
    args = [sys.executable, str(ROOT / "coarse" / "train.py"), *map(str, coarse_args(data, out, "--epochs", "40"))]
    # a shell's background job inherits SIGINT ignored (and Python then keeps it ignored, as it should):
    # give the run the SIGINT of a foreground process, whatever started this test
    proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    t0 = time.monotonic()
    while not (out / "log.jsonl").exists():  # the first epoch is done: a checkpoint is on disk
        assert proc.poll() is None and time.monotonic() - t0 < 120
        time.sleep(0.05)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    line = error_line(err)
    assert proc.returncode == code, err[-2000:]
    assert f"stopped by {signal.Signals(sig).name} at " in line and f"checkpoint on disk: {out / 'checkpoint.pt'}" in line
    assert "Traceback" not in err and "--resume" in line
    ckpt = load_checkpoint(out / "checkpoint.pt")
    assert 1 <= ckpt["epoch"] < 40
    assert not list(out.glob("masks_*"))
