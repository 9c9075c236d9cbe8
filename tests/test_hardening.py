"""Impossible input refused at start, damaged files refused on load, and runs stopped by a signal
(README, "Reliability"): one line, the documented exit code, nothing half-written."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from harness import ROOT, call, error_line, make_dataset

from fgvc import image, interrupt
from fgvc.annotations import load_dataset
from fgvc.checkpoint import load_checkpoint
from fgvc.config import TrainConfig
from fgvc.datasets import ImageDataset
from fgvc.engine import fit
from fgvc.image import BadImage, read_rgb
from fgvc.stages import build_model, model_args
from fgvc.transforms import EvalTransform, TrainTransform

MODEL = ["--arch", "resnet18", "--pretrained", "none", "--img-size", "48", "--device", "cpu", "--workers", "0",
         "--batch-size", "8", "--amp", "off"]


def coarse_args(data, out, *extra):
    return ["--data", data, "--out", out, *MODEL, "--resize", "56", "--mask-size", "32", "32",
            "--figure", out.parent / f"{out.name}.png", *extra]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny coarse run (checkpoint and masks) and the fine stage's flags over it."""
    tmp = tmp_path_factory.mktemp("hard")
    data = make_dataset(tmp / "ds")
    call("coarse/train.py", *coarse_args(data, tmp / "coarse", "--epochs", "1"))
    return data, tmp / "coarse"


def fine_args(data, coarse, out):
    return ["--data", data, "--out", out, "--coarse", coarse, *MODEL, "--epochs", "1"]


# ---------------------------------------------------------------- flags

BAD_FLAGS = [
    ("test.py", ["--tau", "nan"], "--tau nan: not a finite number"),
    ("test.py", ["--tau", "inf"], "--tau inf: not a finite number"),
    ("test.py", ["--tau", "1e400"], "--tau inf: not a finite number"),
    ("test.py", ["--tau", "-1"], "--tau -1: must be >= 0"),
    ("test.py", ["--tta-factors", "1", "0"], "--tta-factors 0: must be > 0"),
    ("coarse/train.py", ["--localize-only", "--cam-threshold", "2"], "--cam-threshold 2: must be > 0 and <= 1"),
    ("coarse/train.py", ["--localize-only", "--cam-threshold", "nan"], "--cam-threshold nan: not a finite number"),
    ("coarse/train.py", ["--localize-only", "--cam-threshold", "-1"], "--cam-threshold -1: must be > 0 and <= 1"),
    ("coarse/train.py", ["--epochs", "0"], "--epochs 0: must be >= 1"),
    ("coarse/train.py", ["--batch-size", "0"], "--batch-size 0: must be >= 1"),
    ("coarse/train.py", ["--eval-batch-size", "0"], "--eval-batch-size 0: must be >= 1"),
    ("coarse/train.py", ["--workers", "-1"], "--workers -1: must be >= 0"),
    ("coarse/train.py", ["--img-size", "0"], "--img-size 0: must be >= 16"),
    ("coarse/train.py", ["--lr", "nan"], "--lr nan: not a finite number"),
    ("coarse/train.py", ["--dropout", "1.5"], "--dropout 1.5: must be >= 0 and <= 1"),
    ("coarse/train.py", ["--mask-size", "16", "16"], "--mask-size 16: must be >= 32 and <= 4096"),
    ("coarse/train.py", ["--device", "foo"], "--device 'foo': not a device (auto, cpu, cuda, cuda:N)"),
    ("fine/train.py", ["--crop-k", "0"], "--crop-k 0: must be > 0"),
    ("coarse/train.py", ["--epochs", "two"], "argument --epochs: invalid int value: 'two'"),
]


@pytest.mark.parametrize("script,flags,message", BAD_FLAGS, ids=[" ".join(f[1]) for f in BAD_FLAGS])
def test_impossible_flags_are_refused_at_start(tmp_path, run_cli, script, flags, message):
    out = tmp_path / "out"
    where = ["--submission", tmp_path / "s.csv"] if script == "test.py" else ["--out", out]
    code, _, err = run_cli(script, "--data", tmp_path / "nowhere", *where, *flags)
    assert code == 2 and error_line(err) == f"error: {message}", err
    assert len(err.strip().splitlines()) == 1  # no usage block, no traceback
    assert not out.exists() and not (tmp_path / "s.csv").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present")
def test_cuda_without_a_gpu_is_refused(tmp_path, run_cli):
    code, _, err = run_cli("coarse/train.py", "--data", tmp_path, "--out", tmp_path / "o", "--device", "cuda")
    assert code == 2 and "--device cuda: CUDA is not usable here" in error_line(err) and len(err.strip().splitlines()) == 1


# ---------------------------------------------------------------- dataset files

def edit_json(path, change):
    doc = json.loads(path.read_text())
    change(doc)
    path.write_text(json.dumps(doc))


@pytest.mark.parametrize("field", ["category", "image"])
def test_ids_outside_int64_are_refused_naming_the_entry(tmp_path, run_cli, field):
    data = make_dataset(tmp_path / "ds")
    if field == "category":
        edit_json(data / "train2019.json", lambda d: d["annotations"][0].update(category_id=2**63))
        want = "train2019.json: annotations[0] has 'category_id' 9223372036854775808, outside the int64 range"
    else:
        edit_json(data / "test2019.json", lambda d: d["images"][2].update(id=2**63))
        want = "test2019.json: images[2] has 'id' 9223372036854775808, outside the int64 range"
    code, _, err = run_cli("test.py", "--data", data, "--submission", tmp_path / "s.csv", "--device", "cpu")
    assert code == 2 and want in error_line(err)
    assert not (tmp_path / "s.csv").exists()


def test_deeply_nested_json_is_one_line(tmp_path, run_cli):
    data = make_dataset(tmp_path / "ds")
    (data / "val2019.json").write_text("[" * 1000 + "]" * 1000)
    code, _, err = run_cli("coarse/train.py", *coarse_args(data, tmp_path / "o"))
    assert code == 2 and "val2019.json: JSON nested too deeply" in error_line(err)
    assert not (tmp_path / "o").exists()


def test_a_split_with_no_readable_image_is_an_error(tmp_path, run_cli):
    data = make_dataset(tmp_path / "ds")
    _, splits = load_dataset(data)
    for name in splits["train"].file_names:  # every train image unreadable, fewer than --max-bad-images
        (data / name).write_bytes(b"not an image")
    code, _, err = run_cli("coarse/train.py", *coarse_args(data, tmp_path / "o", "--epochs", "1"))
    assert code == 2 and "train2019.json: no readable image in epoch 1 (24 unreadable of 24)" in error_line(err)
    assert not (tmp_path / "o" / "checkpoint.pt").exists() and not list((tmp_path / "o").glob("masks_*"))


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
def test_damaged_checkpoint_is_refused_on_resume(trained, tmp_path, run_cli, case):
    data, coarse = trained
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


# ---------------------------------------------------------------- masks files

def masks_of(path):
    with np.load(path, allow_pickle=False) as f:
        return f["image_ids"], f["masks"]


def test_masks_of_another_dataset_with_the_same_ids_are_refused(trained, tmp_path, run_cli):
    data, coarse = trained
    other = tmp_path / "other"
    shutil.copytree(data, other)
    for split in ("train", "val"):  # the same ids, other files: another dataset
        edit_json(other / f"{split}2019.json",
                  lambda d: [im.update(file_name=im["file_name"].replace(".jpg", "b.jpg")) for im in d["images"]])
        for im in json.loads((other / f"{split}2019.json").read_text())["images"]:
            os.rename(other / im["file_name"].replace("b.jpg", ".jpg"), other / im["file_name"])
    code, _, err = run_cli("fine/train.py", *fine_args(other, coarse, tmp_path / "fine"))
    assert code == 2 and "masks_train.npz: made from another train than" in error_line(err)
    assert not (tmp_path / "fine").exists()


@pytest.mark.parametrize("case", ["duplicate ids", "16 x 16", "float ids", "string ids"])
def test_malformed_masks_files_are_refused(trained, tmp_path, run_cli, case):
    data, coarse = trained
    bad = tmp_path / "coarse"
    shutil.copytree(coarse, bad)
    ids, masks = masks_of(coarse / "masks_train.npz")
    if case == "duplicate ids":
        ids, masks, want = np.concatenate([ids, ids]), np.concatenate([masks, 1 - masks]), "is listed 2 times"
    elif case == "16 x 16":
        masks, want = masks[:, :16, :16], "masks of 16 x 16, smaller than the 32 x 32 minimum"
    elif case == "float ids":
        ids, want = ids.astype(np.float64), "image_ids are float64, expected integers"
    else:
        ids, want = ids.astype(str), "image_ids are <U"
    np.savez_compressed(bad / "masks_train.npz", image_ids=ids, masks=masks)
    code, _, err = run_cli("fine/train.py", *fine_args(data, bad, tmp_path / "fine"))
    assert code == 2 and want in error_line(err), error_line(err)
    assert not (tmp_path / "fine").exists()


def test_masks_record_what_made_them(trained):
    _, coarse = trained
    with np.load(coarse / "masks_val.npz", allow_pickle=False) as f:
        made = json.loads(str(f["provenance"]))
    assert made["split"] == "val" and len(made["fingerprint"]) == 64 and made["cam_threshold"] == 0.7
    assert "checkpoint.pt" in made["checkpoint"] and made["mask_size"] == [32, 32]


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


@pytest.fixture
def sigterm_handlers():
    interrupt.install()
    yield
    for s in interrupt.PREEMPT:
        signal.signal(s, signal.SIG_DFL)


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


# ---------------------------------------------------------------- image files

def jpeg_bytes(h=60, w=80):
    img = np.random.default_rng(0).integers(0, 255, (h, w, 3), dtype=np.uint8)
    return cv2.imencode(".jpg", img)[1].tobytes()


def bomb(data):
    """The same JPEG with its frame header declaring 30000 x 30000 pixels."""
    b = bytearray(data)
    sof = next(i for i in range(2, len(b) - 1) if b[i] == 0xFF and b[i + 1] in (0xC0, 0xC2))
    b[sof + 5 : sof + 9] = (30000).to_bytes(2, "big") * 2
    return bytes(b)


def test_decompression_bomb_is_refused_from_its_header(tmp_path):
    path = tmp_path / "bomb.jpg"
    path.write_bytes(bomb(jpeg_bytes()))
    t0 = time.monotonic()
    with pytest.raises(BadImage, match=r"declares 30000 x 30000 pixels, more than --max-megapixels 100"):
        read_rgb(path)
    assert time.monotonic() - t0 < 1.0  # refused from the header, not after decoding 900 MP
    png = tmp_path / "bomb.png"
    data = bytearray(cv2.imencode(".png", np.zeros((4, 4, 3), np.uint8))[1].tobytes())
    data[16:24] = (30000).to_bytes(4, "big") * 2
    png.write_bytes(bytes(data))
    with pytest.raises(BadImage, match="declares 30000 x 30000"):
        read_rgb(png)


def test_a_fifo_in_place_of_an_image_is_unreadable_not_a_hang(tmp_path):
    fifo = tmp_path / "x.jpg"
    os.mkfifo(fifo)
    with pytest.raises(BadImage, match=r"not a regular file \(a FIFO\)"):
        read_rgb(fifo)
    real = tmp_path / "real.jpg"
    real.write_bytes(jpeg_bytes())
    (tmp_path / "link.jpg").symlink_to(real)
    assert read_rgb(tmp_path / "link.jpg").shape == (60, 80, 3)  # a symlink to a regular file is fine


@pytest.mark.parametrize("decoder", ["auto", "opencv"])
def test_corrupt_jpeg_that_still_decodes_is_unreadable_unless_lenient(tmp_path, monkeypatch, decoder):
    data = jpeg_bytes(120, 160)
    path = tmp_path / "cut.jpg"
    path.write_bytes(data[: len(data) // 2] + b"\xff\xd9")  # cut in half, an end marker appended
    with pytest.raises(BadImage, match="corrupt JPEG data"):
        read_rgb(path, decoder=decoder)
    monkeypatch.setitem(image.LIMITS, "lenient", True)
    assert read_rgb(path, decoder=decoder).shape == (120, 160, 3)


def test_bombs_fifos_and_corrupt_jpegs_are_counted_like_any_unreadable_image(trained, tmp_path, run_cli):
    data, coarse = trained
    copy = tmp_path / "ds"
    shutil.copytree(data, copy)
    _, splits = load_dataset(copy)
    names = splits["test"].file_names
    (copy / names[0]).write_bytes(bomb((copy / names[0]).read_bytes()))
    (copy / names[1]).unlink()
    os.mkfifo(copy / names[1])
    whole = (copy / names[2]).read_bytes()
    (copy / names[2]).write_bytes(whole[: len(whole) // 2] + b"\xff\xd9")
    args = ["--data", copy, "--coarse", coarse, "--model", "coarse", "--device", "cpu", "--workers", "0", "--amp", "off"]
    code, out, err = run_cli("test.py", *args, "--submission", tmp_path / "s.csv")
    assert code == 0, err[-2000:]
    assert "3 unreadable test images got the fallback prediction" in out
    code, out, _ = run_cli("test.py", *args, "--submission", tmp_path / "s2.csv", "--lenient-jpeg")
    assert code == 0 and "2 unreadable test images" in out  # the corrupt JPEG is used


def test_amp_auto_is_bf16_only_where_it_is_native():
    from fgvc.cli import resolve_amp

    assert resolve_amp("off", "cpu") == "off" and resolve_amp("bf16", "cpu") == "bf16"
    assert resolve_amp("auto", "cuda") == "bf16"
    # the CPU's own flags, read independently of torch: no AVX-512 at all -> fp32; native bf16 -> bf16
    info = Path("/proc/cpuinfo")
    if not info.is_file():
        pytest.skip("no /proc/cpuinfo to read the CPU's flags from")
    flags = set(next((l.split(":", 1)[1].split() for l in info.read_text().splitlines() if l.startswith("flags")), []))
    if not any(f.startswith("avx512") for f in flags):
        assert resolve_amp("auto", "cpu") == "off"
    elif {"avx512_bf16", "amx_bf16"} & flags:
        assert resolve_amp("auto", "cpu") == "bf16"
    else:
        pytest.skip("AVX-512 without native bf16: either answer is defensible")
