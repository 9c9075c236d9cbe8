"""Fault injection: interrupted runs, bad image files, hostile inputs, mismatches, failed writes and
a non-finite loss. Every case ends in a complete result, or in a one-line error (exit code 2 for bad
input, 1 for a failed write) with nothing half-written.

Kills and write limits need a real process: those cases run the stage scripts in a subprocess.
The others call the same entry point in-process (`cli.run(main, parser)` with sys.argv set),
which saves the interpreter start-up of every case.
"""
import json
import os
import pickle
import random
import resource
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
from conftest import ROOT, make_dataset
from harness import call, error_line
from PIL import Image

from fgvc.cam import save_masks
from fgvc.checkpoint import load_checkpoint
from fgvc.data import load_dataset
from fgvc.submission import read_submission, write_submission

MODEL = ["--arch", "resnet18", "--pretrained", "none", "--img-size", "32", "--device", "cpu", "--workers", "0",
         "--batch-size", "8", "--amp", "off"]
TEST = ["--device", "cpu", "--workers", "0", "--amp", "off"]
STEPS_PER_EPOCH = 3  # 24 train images of make_dataset, batch 8


def coarse_args(data, out, *extra):
    fig = Path(out).parent / f"{Path(out).name}_sample.png"  # never the repo's fig/sample.png
    # 48 px: resnet18's last map is 2 x 2, so a CAM is not flat (at 32 px it is 1 x 1)
    return ["--data", data, "--out", out, *MODEL, "--img-size", "48", "--resize", "56", "--mask-size", "32", "32",
            "--figure", fig, *extra]


def fine_args(data, out, coarse, *extra):
    return ["--data", data, "--out", out, "--coarse", coarse, *MODEL, *extra]


def scoring_args(data, coarse, fine, submission, *extra):
    return ["--data", data, "--coarse", coarse, "--fine", fine, "--submission", submission, *TEST, *extra]


# fsync is slowed down in the child so that a checkpoint, masks or submission write lasts long
# enough for the parent to see its temporary file and kill the child in the middle of it.
SLOW_FSYNC = """
import os, runpy, stat, sys, time
_fsync = os.fsync
def _slow_fsync(fd):
    if not stat.S_ISDIR(os.fstat(fd).st_mode):
        time.sleep(0.3)
    _fsync(fd)
os.fsync = _slow_fsync
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def spawn(script, *args, log):
    return subprocess.Popen([sys.executable, "-c", SLOW_FSYNC, str(ROOT / script), *map(str, args)], cwd=ROOT,
                            stdout=log, stderr=subprocess.STDOUT)


def temps(d):
    d = Path(d)
    return {n for n in os.listdir(d) if n.endswith(".tmp")} if d.is_dir() else set()


def signature(path):
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_mtime_ns


def when_writing(d, n):
    """True once the n-th temporary file of this run has appeared in `d` (a write in progress)."""
    before, seen = temps(d), set()

    def ready():
        seen.update(temps(d) - before)
        return len(seen) >= n

    return ready


def after_save(path, delay):
    """True `delay` seconds after `path` was replaced (a save completed)."""
    first, at = signature(path), []

    def ready():
        if not at and signature(path) not in (first, None):
            at.append(time.monotonic())
        return bool(at) and time.monotonic() - at[0] >= delay

    return ready


def kill_when(proc, ready, log, timeout=180):
    """SIGKILL `proc` as soon as ready() holds; True if killed, False if it exited first."""
    t0 = time.monotonic()
    while proc.poll() is None:
        if ready():
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return True
        if time.monotonic() - t0 > timeout:
            proc.kill()
            proc.wait()
            raise AssertionError(f"no kill point within {timeout}s\n{Path(log.name).read_text()[-2000:]}")
        time.sleep(0.001)
    return False


def limited_writes(max_bytes):
    """preexec_fn: files cannot grow past max_bytes; the write fails with EFBIG (as on a full disk)."""

    def pre():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (max_bytes, max_bytes))

    return pre


def run_limited(script, *args, max_bytes):
    return subprocess.run([sys.executable, str(ROOT / script), *map(str, args)], cwd=ROOT, capture_output=True,
                          text=True, timeout=300, preexec_fn=limited_writes(max_bytes))


def masks_of(path):
    with np.load(path, allow_pickle=False) as f:
        return f["image_ids"], f["masks"]


# ---------------------------------------------------------------- a trained pipeline to break

@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    """One tiny run of every stage: coarse checkpoint and masks, fine checkpoint, submission."""
    tmp = tmp_path_factory.mktemp("clean")
    data = make_dataset(tmp / "ds")
    coarse, fine, sub = tmp / "coarse", tmp / "fine", tmp / "submission.csv"
    call("coarse/train.py", *coarse_args(data, coarse, "--epochs", "1"))
    call("fine/train.py", *fine_args(data, fine, coarse, "--epochs", "1"))
    call("test.py", *scoring_args(data, coarse, fine, sub, "--model", "coarse"))
    return data, coarse, fine, sub


def copy_dir(src, dst, names):
    dst.mkdir(parents=True)
    for n in names:
        shutil.copy2(src / n, dst / n)
    return dst


# ---------------------------------------------------------------- 1. interruption

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
    ids, _ = masks_of(out / "masks_train.npz")  # written before the kill: complete
    assert len(ids) == 24
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


# ---------------------------------------------------------------- 2. bad image files

BAD_TRAIN = {0: "truncated", 9: "empty", 17: "text", 20: "directory"}
ODD_TRAIN = {1: "gray", 2: "gray16_png", 10: "cmyk", 18: "rgba_png", 21: "png_bytes"}
BAD_VAL, ODD_VAL = {0: "truncated"}, {4: "cmyk"}
BAD_TEST, ODD_TEST = {1: "empty", 5: "directory"}, {2: "png_bytes", 7: "gray16_png"}


def spoil(path, kind):
    """Rewrite an image file as a bad or odd one (odd ones keep the picture)."""
    rgb = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
    bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    jpeg = cv2.imencode(".jpg", bgr)[1].tobytes()
    path.unlink()
    if kind == "truncated":
        path.write_bytes(jpeg[: len(jpeg) // 2])
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "text":
        path.write_text("this is not an image\n")
    elif kind == "directory":  # unreadable (root reads through chmod 000, not through a directory)
        path.mkdir()
    elif kind == "gray":
        path.write_bytes(cv2.imencode(".jpg", cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY))[1].tobytes())
    elif kind == "gray16_png":
        path.write_bytes(cv2.imencode(".png", cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY).astype(np.uint16) * 257)[1].tobytes())
    elif kind == "cmyk":
        Image.fromarray(rgb).convert("CMYK").save(path, "JPEG")
    elif kind == "rgba_png":
        path.write_bytes(cv2.imencode(".png", np.dstack([bgr, np.full(bgr.shape[:2], 200, np.uint8)]))[1].tobytes())
    elif kind == "png_bytes":
        path.write_bytes(cv2.imencode(".png", bgr)[1].tobytes())


@pytest.fixture(scope="module")
def spoiled(tmp_path_factory):
    data = make_dataset(tmp_path_factory.mktemp("spoiled") / "ds")
    _, splits = load_dataset(data)
    for name, kinds in (("train", {**BAD_TRAIN, **ODD_TRAIN}), ("val", {**BAD_VAL, **ODD_VAL}), ("test", {**BAD_TEST, **ODD_TEST})):
        for row, kind in kinds.items():
            spoil(data / splits[name].file_names[row], kind)
    return data, splits


def test_bad_and_odd_images_through_every_stage(spoiled, tmp_path, run_cli):
    data, splits = spoiled
    coarse, fine, sub = tmp_path / "coarse", tmp_path / "fine", tmp_path / "submission.csv"

    code, out, err = run_cli("coarse/train.py", *coarse_args(data, coarse, "--epochs", "1", "--max-bad-images", "5"))
    assert code == 0, err[-3000:]
    assert "skipped 4 unreadable train images" in out  # training and localization of train
    assert "skipped 1 unreadable val images" in out and "skipped 2 unreadable test images" in out
    for name, bad, odd in (("train", BAD_TRAIN, ODD_TRAIN), ("val", BAD_VAL, ODD_VAL), ("test", BAD_TEST, ODD_TEST)):
        ids, masks = masks_of(coarse / f"masks_{name}.npz")
        assert ids.tolist() == splits[name].image_ids.tolist()
        assert all(masks[r].sum() == 0 for r in bad), name  # unreadable: empty mask -> whole image
        assert all(masks[r].sum() > 0 for r in odd), name  # odd formats decode to a real picture

    code, out, err = run_cli("fine/train.py", *fine_args(data, fine, coarse, "--epochs", "1", "--max-bad-images", "5"))
    assert code == 0, err[-3000:]
    assert "skipped 4 unreadable train images" in out

    code, out, err = run_cli("test.py", *scoring_args(data, coarse, fine, sub))
    assert code == 0, err[-3000:]
    assert "2 unreadable test images got the fallback prediction (the 5 most frequent train classes)" in out
    rows = read_submission(sub)
    assert sorted(rows) == sorted(splits["test"].image_ids.tolist())  # no row dropped
    counts = np.bincount(splits["train"].labels, minlength=3)
    fallback = [(5, 17, 40)[c] for c in np.argsort(-counts, kind="stable")]
    assert all(rows[int(splits["test"].image_ids[r])] == fallback for r in BAD_TEST)


def test_too_many_bad_images_stop_training_and_localization_with_the_list(spoiled, clean, tmp_path, run_cli):
    data, splits = spoiled
    out = tmp_path / "coarse"
    code, _, err = run_cli("coarse/train.py", *coarse_args(data, out, "--epochs", "1", "--max-bad-images", "3"))
    line = error_line(err)
    assert code == 2 and "4 unreadable images, more than --max-bad-images 3" in line
    assert all(splits["train"].file_names[r] in line for r in BAD_TRAIN)
    assert not (out / "checkpoint.pt").exists()

    loc = copy_dir(clean[1], tmp_path / "loc", ["checkpoint.pt", "masks_train.npz"])
    previous = (loc / "masks_train.npz").read_bytes()
    code, _, err = run_cli("coarse/train.py", *coarse_args(data, loc, "--localize-only", "--max-bad-images", "3"))
    line = error_line(err)
    assert code == 2 and "train2019.json: 4 unreadable images" in line
    assert (loc / "masks_train.npz").read_bytes() == previous


def test_missing_image_file_stops_every_stage_at_start(clean, tmp_path, run_cli):
    """Nothing at the path (here a dangling link) is a missing file, not a bad image."""
    data, coarse, fine, _ = clean
    copy = tmp_path / "ds"
    shutil.copytree(data, copy, symlinks=True)
    _, splits = load_dataset(copy)
    name = splits["test"].file_names[3]
    (copy / name).unlink()
    (copy / name).symlink_to(copy / "nowhere.jpg")
    code, _, err = run_cli("test.py", *scoring_args(copy, coarse, fine, tmp_path / "s.csv"))
    line = error_line(err)
    assert code == 2 and "test2019.json: 1 of 9 image files are missing" in line and name in line
    assert not (tmp_path / "s.csv").exists()


# ---------------------------------------------------------------- 3. hostile files

class RunsCode:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


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


def edit_json(root, split, fn):
    path = Path(root) / f"{split}2019.json"
    doc = json.loads(path.read_text())
    fn(doc)
    path.write_text(json.dumps(doc))


def first_image_id(doc):
    return doc["images"][0]["id"]


BAD_INPUT = {
    "absolute file_name": ("coarse/train.py", "train", lambda d: d["images"][0].update(file_name="/etc/passwd"),
                           "train2019.json: images[0] (id {id}) has file_name '/etc/passwd': absolute paths are refused"),
    "file_name climbing out": ("test.py", "test", lambda d: d["images"][0].update(file_name="test2019/../../x.jpg"),
                               "test2019.json: images[0] (id {id}) has file_name 'test2019/../../x.jpg': it climbs out"),
    "malformed JSON": ("coarse/train.py", "val", None, "val2019.json: malformed JSON at line 1 column"),
    "empty split": ("test.py", "test", lambda d: d.update(images=[]), "test2019.json: 'images' is empty"),
    "string image id": ("fine/train.py", "train", lambda d: d["images"][1].update(id="7"),
                        "train2019.json: images[1] has 'id' of type str ('7'), expected int"),
    "float category id": ("coarse/train.py", "val", lambda d: d["annotations"][2].update(category_id=5.0),
                          "val2019.json: annotations[2] has 'category_id' of type float (5.0), expected int"),
    "val category that train lacks": ("fine/train.py", "val", lambda d: d["annotations"][0].update(category_id=77),
                                      "val2019.json: annotations[0] has category id 77, which train2019.json lacks"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUT))
def test_bad_dataset_input_is_one_line_exit_2_and_writes_nothing(clean, tmp_path, run_cli, case):
    data, coarse, fine, _ = clean
    script, split, edit, expected = BAD_INPUT[case]
    copy = tmp_path / "ds"
    shutil.copytree(data, copy)
    doc = json.loads((copy / f"{split}2019.json").read_text())
    if edit is None:
        (copy / f"{split}2019.json").write_text('{"images": [1, 2,,]}')
    else:
        edit_json(copy, split, edit)
    out, sub = tmp_path / "out", tmp_path / "s.csv"
    if script == "coarse/train.py":
        args = coarse_args(copy, out, "--epochs", "1")
    elif script == "fine/train.py":
        args = fine_args(copy, out, coarse, "--epochs", "1")
    else:
        args = scoring_args(copy, coarse, fine, sub)
    code, stdout, err = run_cli(script, *args)
    assert code == 2 and err.strip() == error_line(err)  # exactly one line
    assert expected.format(id=first_image_id(doc)) in err
    assert not out.exists() and not sub.exists()


# ---------------------------------------------------------------- 4. mismatches

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


@pytest.mark.parametrize("script", ["fine/train.py", "test.py"])
def test_masks_that_do_not_cover_the_split(clean, tmp_path, run_cli, script):
    data, coarse, fine, _ = clean
    _, splits = load_dataset(data)
    masks = tmp_path / "masks"
    masks.mkdir()
    for name, split in splits.items():  # every split short of its two highest ids
        ids, m = masks_of(coarse / f"masks_{name}.npz")
        save_masks(masks / f"masks_{name}.npz", ids[:-2], m[:-2])
    out, sub = tmp_path / "fine", tmp_path / "s.csv"
    if script == "fine/train.py":
        code, _, err = run_cli(script, *fine_args(data, out, masks, "--epochs", "1"))
        name = "train"
    else:
        code, _, err = run_cli(script, *scoring_args(data, masks, fine, sub))
        name = "test"
    line = error_line(err)
    missing = splits[name].image_ids[-2:].tolist()
    assert code == 2 and f"masks_{name}.npz: masks for 2 of {len(splits[name])} {name} image ids are missing" in line
    assert str(missing) in line
    assert not out.exists() and not sub.exists()


def test_masks_file_that_is_a_pickle_is_refused(clean, tmp_path, run_cli):
    data, coarse, _, _ = clean
    masks = tmp_path / "masks"
    masks.mkdir()
    marker = tmp_path / "pwned"
    with open(masks / "masks_train.npz", "wb") as f:
        pickle.dump(RunsCode(marker), f)
    code, _, err = run_cli("fine/train.py", *fine_args(data, tmp_path / "fine", masks, "--epochs", "1"))
    assert code == 2 and "masks_train.npz: unreadable masks file" in error_line(err)
    assert not marker.exists()


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


# ---------------------------------------------------------------- 5. failed writes

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


# ---------------------------------------------------------------- 6. non-finite loss

def test_non_finite_loss_stops_cleanly_naming_epoch_and_step(tmp_path, run_cli):
    data = make_dataset(tmp_path / "ds")
    out = tmp_path / "run"
    code, _, err = run_cli("coarse/train.py", *coarse_args(data, out, "--epochs", "1", "--lr", "1e30"))
    line = error_line(err)
    assert code == 2 and "non-finite loss" in line and "at epoch 1, step 2 of the epoch" in line
    assert not (out / "checkpoint.pt").exists()  # blew up before the first save: nothing to keep
    assert "no checkpoint was written yet" in line
