import json

import pytest
import torch

from fgvc.annotations import load_dataset
from fgvc.checkpoint import load_checkpoint
from fgvc.config import TrainConfig
from fgvc.datasets import EpochSampler, ImageDataset
from fgvc.engine import fit, triangle
from fgvc.errors import CheckpointError, NonFiniteLoss
from fgvc.stages import build_model, model_args
from fgvc.transforms import EvalTransform, TrainTransform


def cfg(**kw):
    c = dict(epochs=3, batch_size=8, eval_batch_size=16, lr=0.05, backbone_lr_ratio=1.0, amp="off", workers=0, seed=0,
             resume=False, save_every=0, max_bad_images=5, log_every=1, sync_bn=False, arch="resnet18", img_size=48,
             resize=56, freeze=True, world_size=1, optimizer="sgd", dropout=0.25, frozen_bn="train")
    c.update(kw)
    return c


def setup(root, seed=0):
    torch.manual_seed(seed)
    classes, splits = load_dataset(root, splits=("train", "val"))
    train = ImageDataset(splits["train"], TrainTransform(48, 56, fill=(124, 116, 104)), seed)
    val = ImageDataset(splits["val"], EvalTransform(48), seed)
    model = build_model("coarse", "resnet18", len(classes))
    return classes, train, val, model


def run(root, out, **kw):
    classes, train, val, model = setup(root, kw.get("seed", 0))
    c = cfg(**kw)
    fit(model, train, val, config=TrainConfig.from_flags(c, "cpu"), out_dir=out, class_ids=classes.ids,
        model_args=model_args("coarse", "resnet18", len(classes), True))
    return [json.loads(l) for l in (out / "log.jsonl").read_text().splitlines()]


def test_triangle_schedule_is_the_original():
    f = [triangle(e, 32) for e in range(32)]
    assert f[0] == pytest.approx(2 / 33) and max(f) == pytest.approx(1 - 1 / 33) and f[-1] == pytest.approx(2 / 33)
    assert f[15] == max(f)


def test_training_lowers_the_loss_and_logs(dataset, tmp_path):
    log = run(dataset, tmp_path / "o", epochs=4)
    assert log[-1]["train_loss"] < log[0]["train_loss"]
    assert {"epoch", "lr", "val_top1_err", "val_top5_err", "images_per_s"} <= set(log[0])
    ckpt = load_checkpoint(tmp_path / "o" / "checkpoint.pt")
    assert ckpt["epoch"] == 4 and ckpt["step"] == 4 * 3 and ckpt["class_ids"] == [5, 17, 40]
    assert any(p.name.startswith("events.out.tfevents") for p in (tmp_path / "o" / "tb").iterdir())


def test_same_seed_same_run(dataset, tmp_path):
    a = run(dataset, tmp_path / "a", epochs=2)
    b = run(dataset, tmp_path / "b", epochs=2)
    assert [r["train_loss"] for r in a] == [r["train_loss"] for r in b]
    sa = load_checkpoint(tmp_path / "a" / "checkpoint.pt")["model"]
    sb = load_checkpoint(tmp_path / "b" / "checkpoint.pt")["model"]
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_resume_continues_from_the_saved_epoch_with_its_optimizer(dataset, tmp_path):
    full = run(dataset, tmp_path / "full", epochs=3)
    # an interrupted run: stop after epoch 2 by running a 3-epoch schedule for 2 epochs only
    classes, train, val, model = setup(dataset)
    c = cfg(epochs=3)
    margs = model_args("coarse", "resnet18", 3, True)
    import fgvc.engine as engine

    calls = {"n": 0}
    real = engine.evaluate

    def stop_after_two(*a, **k):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(*a, **k)

    engine.evaluate = stop_after_two
    try:
        with pytest.raises(KeyboardInterrupt):
            fit(model, train, val, config=TrainConfig.from_flags(c, "cpu"), out_dir=tmp_path / "part", class_ids=classes.ids, model_args=margs)
    finally:
        engine.evaluate = real
    saved = load_checkpoint(tmp_path / "part" / "checkpoint.pt")
    assert saved["epoch"] == 2 and saved["step"] == 6
    with pytest.raises(CheckpointError, match="pass --resume"):
        run(dataset, tmp_path / "part", epochs=3)
    with pytest.raises(CheckpointError, match=r"--resume with changed essential flags: --lr 0.05 -> 0.1"):
        run(dataset, tmp_path / "part", epochs=3, lr=0.1, resume=True)
    resumed = run(dataset, tmp_path / "part", epochs=3, resume=True)
    assert resumed[-1]["epoch"] == 3 and resumed[-1]["step"] == full[-1]["step"] == 9
    opt_full = load_checkpoint(tmp_path / "full" / "checkpoint.pt")["optimizer"]
    opt_part = load_checkpoint(tmp_path / "part" / "checkpoint.pt")["optimizer"]
    assert opt_full["param_groups"][0]["lr"] == opt_part["param_groups"][0]["lr"]
    assert set(opt_part["state"]) == set(opt_full["state"])  # momentum buffers carried over
    # resumed at an epoch boundary, it is the same run: same losses, same weights
    assert resumed[-1]["train_loss"] == full[-1]["train_loss"]
    w_full = load_checkpoint(tmp_path / "full" / "checkpoint.pt")["model"]
    w_part = load_checkpoint(tmp_path / "part" / "checkpoint.pt")["model"]
    assert all(torch.equal(w_full[k], w_part[k]) for k in w_full)


def test_non_finite_loss_stops_cleanly_and_keeps_the_checkpoint(dataset, tmp_path, monkeypatch):
    import fgvc.engine as engine

    real, calls = engine.F.cross_entropy, {"n": 0}

    def nan_in_epoch_two(*a, **k):
        calls["n"] += 1
        loss = real(*a, **k)
        return loss * float("nan") if calls["n"] == 5 else loss  # 3 steps per epoch: epoch 2, step 2

    monkeypatch.setattr(engine.F, "cross_entropy", nan_in_epoch_two)
    with pytest.raises(NonFiniteLoss, match=r"non-finite loss \(nan\) at epoch 2, step 2 .*checkpoint.pt is kept"):
        run(dataset, tmp_path / "o", epochs=3)
    assert load_checkpoint(tmp_path / "o" / "checkpoint.pt")["epoch"] == 1


def test_epoch_sampler_shards_and_skips():
    s = EpochSampler(10, seed=3, rank=0, world=1)
    s.set_epoch(1)
    full = [i for _, i, *_ in s]
    assert sorted(full) == list(range(10))
    s.set_epoch(1, start=4)
    assert [i for _, i, *_ in s] == full[4:]
    parts = []
    for r in range(3):
        t = EpochSampler(10, seed=3, rank=r, world=3)
        t.set_epoch(1)
        parts.append([i for _, i, *_ in t])
    assert all(len(p) == 4 for p in parts) and set(sum(parts, [])) == set(range(10))
