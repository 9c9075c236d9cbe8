"""predict.py (issue 23): the whole method on any photos, with test.py's numbers.

One tiny trained run (coarse + fine, resnet18 from scratch, the toy of harness.make_dataset) is shared
by the module. predict.py on the test images, in another order than the test json's, must give the
submission's top 5 on every row (both score through stages.score_split, and the crop centres are
drawn per (seed, the image's pixels)); the .csv and .jsonl interfaces; a folder holding a broken JPEG, a text
file and a PNG; no readable file at all; the overlays; the Python API.
"""
import csv
import json
import os

import cv2
import numpy as np
import pytest
from harness import SCORING_TINY, call, coarse_args, error_line, fine_args, make_dataset, scoring_args, spoil

from fgvc.annotations import load_dataset
from fgvc.predict import csv_header
from fgvc.submission import read_submission
from fgvc.viz import CAPTION_LINE, OVERLAY_WIDTH

pytestmark = pytest.mark.slow

K = 5


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny run of both stages and test.py's submission on its test split."""
    tmp = tmp_path_factory.mktemp("predict")
    data = make_dataset(tmp / "ds", per_class=(8, 3, 5))
    coarse, fine, sub = tmp / "coarse", tmp / "fine", tmp / "submission.csv"
    call("coarse/train.py", *coarse_args(data, coarse, "--epochs", "1"))
    call("fine/train.py", *fine_args(data, fine, coarse, "--epochs", "1"))
    call("test.py", *scoring_args(data, coarse, fine, sub))
    _, splits = load_dataset(data, splits=("train", "test"))
    test_files = [str(data / n) for n in splits["test"].file_names]
    listing = tmp / "test.txt"  # reversed: not test.py's row order
    listing.write_text("".join(f"{f}\n" for f in test_files[::-1]))
    return {"data": data, "coarse": coarse, "fine": fine, "sub": sub, "test": splits["test"], "files": test_files, "list": listing}


def predict_args(run, out, *paths, extra=()):
    return [*map(str, paths), "--coarse", run["coarse"], "--fine", run["fine"], "--out", out, *SCORING_TINY, *extra]


def read_rows(path):
    with open(path, newline="") as f:
        return list(csv.reader(f))


def test_predict_gives_the_submissions_top5_on_every_row(run, tmp_path, run_cli):
    """In chunks of 4 images (batch 2, --chunk-size 3 rounded up): 15 images, a short last chunk."""
    out = tmp_path / "p.csv"
    code, stdout, err = run_cli("predict.py", *predict_args(run, out, f"@{run['list']}", extra=["--batch-size", "2", "--chunk-size", "3"]))
    assert code == 0, err
    rows = read_rows(out)
    assert rows[0] == csv_header(K) and rows[0][:4] == ["path", "category_id_1", "name_1", "probability_1"]
    assert rows[0][-4:] == ["box_x", "box_y", "box_w", "box_h"]
    sub = read_submission(run["sub"])
    ids = [int(i) for i in run["test"].image_ids][::-1]
    assert len(rows) - 1 == len(ids) == len(sub)
    k = min(K, 3)  # the toy has 3 classes: the submission's 5 are the 3, best first
    for (image_id, row), file in zip(zip(ids, rows[1:]), run["files"][::-1]):
        assert row[0] == file
        top = [int(row[1 + 3 * j]) for j in range(k)]
        assert top == list(sub[image_id])[:k], (file, top, sub[image_id])
        probs = [float(row[3 + 3 * j]) for j in range(k)]
        assert probs == sorted(probs, reverse=True) and abs(sum(probs) - 1) < 1e-4  # all 3 classes: the whole mass
        assert all(row[2 + 3 * j] == f"species {row[1 + 3 * j]}" for j in range(k))
        assert row[1 + 3 * k:3 * K + 1] == [""] * (3 * (K - k))  # fewer classes than --topk: empty cells
        x, y, w, h = map(int, row[-4:])
        assert 0 <= x and 0 <= y and w > 0 and h > 0
    assert f"{out}: {len(ids)} rows" in stdout
    whole = tmp_path / "whole.csv"  # one chunk: the same file
    assert run_cli("predict.py", *predict_args(run, whole, f"@{run['list']}", extra=["--batch-size", "2"]))[0] == 0
    assert whole.read_bytes() == out.read_bytes()


def test_predicts_masks_are_the_coarse_stages(run):
    """predict.py localizes each image itself: the masks equal the coarse stage's masks_test.npz."""
    from fgvc.masks import load_masks
    from fgvc.predict import Inputs, Predictor

    p = Predictor(run["coarse"], run["fine"], device="cpu", workers=0, amp="off")
    split = Inputs(run["files"]).split()
    masks, _ = p.localize(split)
    theirs = load_masks(run["coarse"], run["test"])
    assert all(np.array_equal(masks[i], theirs[i]) for i in range(len(split)))


def test_model_coarse_is_test_pys_coarse_baseline(run, tmp_path, run_cli):
    sub, out = tmp_path / "coarse.csv", tmp_path / "p.jsonl"
    call("test.py", *scoring_args(run["data"], run["coarse"], run["fine"], sub, "--model", "coarse"))
    assert run_cli("predict.py", *predict_args(run, out, f"@{run['list']}", extra=["--model", "coarse"]))[0] == 0
    rows, subs = [json.loads(line) for line in out.read_text().splitlines()], read_submission(sub)
    for image_id, row in zip(run["test"].image_ids[::-1], rows):
        assert [p["category_id"] for p in row["predictions"]] == list(subs[int(image_id)])[:3]
        assert row["box"] is None  # no localization


def test_jsonl_rows_are_the_csv_rows(run, tmp_path, run_cli):
    a, b = tmp_path / "p.csv", tmp_path / "p.jsonl"
    assert run_cli("predict.py", *predict_args(run, a, *run["files"][:4], extra=["--topk", "2"]))[0] == 0
    assert run_cli("predict.py", *predict_args(run, b, *run["files"][:4], extra=["--topk", "2"]))[0] == 0
    objs = [json.loads(line) for line in b.read_text().splitlines()]
    assert [list(o) for o in objs] == [["path", "predictions", "box"]] * 4
    for o, row in zip(objs, read_rows(a)[1:]):
        assert list(o["predictions"][0]) == ["category_id", "name", "probability"] and len(o["predictions"]) == 2
        flat = [str(v) for p in o["predictions"] for v in p.values()]
        assert [o["path"], *flat, *map(str, o["box"])] == row


def test_a_folder_of_mixed_files(run, tmp_path, run_cli):
    """Images by content: a PNG and a JPEG named .txt are predicted; a text file and a truncated JPEG
    are listed with their reasons and skipped; hidden files are not looked at."""
    photos = tmp_path / "photos"
    (photos / "sub").mkdir(parents=True)
    src = run["files"]
    for i, name in enumerate(["a.jpg", "sub/b.jpg", "c.jpg"]):
        (photos / name).write_bytes(open(src[i], "rb").read())
    spoil(photos / "c.jpg", "truncated")
    cv2.imwrite(str(photos / "d.png"), cv2.imread(src[3]))
    (photos / "e.txt").write_bytes(open(src[4], "rb").read())  # a JPEG by its content
    (photos / "notes.txt").write_text("not a photo\n")
    (photos / ".hidden").write_text("never listed\n")
    os.mkfifo(photos / "pipe.jpg")  # never opened: it would block
    out, ov = tmp_path / "p.csv", tmp_path / "ov"  # chunks of 2 (a, c | d, e | b): the unreadable c.jpg ends the first
    code, stdout, err = run_cli("predict.py", *predict_args(run, out, photos, extra=["--batch-size", "1", "--chunk-size", "2", "--overlay", ov]))
    assert code == 0, err
    assert [r[0] for r in read_rows(out)[1:]] == [str(photos / n) for n in ("a.jpg", "d.png", "e.txt", "sub/b.jpg")]
    assert sorted(p.name for p in ov.iterdir() if not p.name.startswith(".")) == ["a.png", "b.png", "d.png", "e.png"]
    skipped = [line for line in err.splitlines() if line.startswith("skipped ")]
    assert skipped == [f"skipped {photos / 'notes.txt'}: not an image (by its content)", f"skipped {photos / 'pipe.jpg'}: not a regular file",
                       f"skipped {photos / 'c.jpg'}: truncated JPEG (no end-of-image marker)"], err
    assert "3 files skipped" in stdout


def test_no_readable_file_is_exit_1_and_nothing_written(run, tmp_path, run_cli):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "x.txt").write_text("text\n")
    out = tmp_path / "p.csv"
    code, _, err = run_cli("predict.py", *predict_args(run, out, bad))
    assert code == 1 and error_line(err).startswith("error: no readable image among the files given"), err
    assert "skipped " in err and not out.exists()
    (bad / "y.jpg").write_bytes(open(run["files"][0], "rb").read())  # an image by its content that cannot be decoded:
    spoil(bad / "y.jpg", "truncated")  # found out only in the pass, when the rows are being written
    code, _, err = run_cli("predict.py", *predict_args(run, out, bad))
    assert code == 1 and error_line(err).startswith("error: no readable image among the files given"), err
    assert f"skipped {bad / 'y.jpg'}: truncated JPEG" in err and not out.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".p.csv")] in ([], [".p.csv.lock"])  # no temporary file left


def test_outputs_are_refused_as_the_stages_refuse_them(run, tmp_path, run_cli):
    """outputs.claim's refusals: an output that is an input (here the @list), an odd target (a FIFO),
    and a suffix predict.py does not write; nothing is written."""
    listing = tmp_path / "list.csv"
    listing.write_text(run["files"][0] + "\n")
    code, _, err = run_cli("predict.py", *predict_args(run, listing, f"@{listing}"))
    assert code == 2 and "is an input of this run" in error_line(err), err
    assert listing.read_text() == run["files"][0] + "\n"
    fifo = tmp_path / "fifo.csv"
    os.mkfifo(fifo)
    code, _, err = run_cli("predict.py", *predict_args(run, fifo, run["files"][0]))
    assert code == 2 and "is a FIFO, not a regular file" in error_line(err), err
    code, _, err = run_cli("predict.py", *predict_args(run, tmp_path / "p.txt", run["files"][0]))
    assert code == 2 and "a .csv or a .jsonl file" in error_line(err)
    assert not (tmp_path / "p.txt").exists()


def test_torchrun_is_refused(run, tmp_path, run_cli, monkeypatch):
    """Each rank would localize only its shard and write the same --out: one process it is."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    out = tmp_path / "p.csv"
    code, _, err = run_cli("predict.py", *predict_args(run, out, run["files"][0]))
    assert code == 2 and "predict.py runs as one process, not under torchrun (WORLD_SIZE 2)" in error_line(err), err
    assert not out.exists()


def test_an_output_in_use_by_another_run_is_refused(run, tmp_path, run_cli):
    from harness import lock_holder

    target = tmp_path / "p.csv"
    holder = lock_holder("--out", target)
    try:
        code, _, err = run_cli("predict.py", *predict_args(run, target, run["files"][0]))
        assert code == 2 and f"--out {target} is in use by another run, pid {holder.pid}" in error_line(err), err
        assert not target.exists()
    finally:
        holder.kill()
        holder.wait()


def test_overlays(run, tmp_path, run_cli):
    out, ov = tmp_path / "p.csv", tmp_path / "ov"
    code, _, err = run_cli("predict.py", *predict_args(run, out, *run["files"][:2], extra=["--overlay", ov]))
    assert code == 0, err
    names = sorted(p.name for p in ov.iterdir() if not p.name.startswith("."))
    assert names == sorted(f.rsplit("/", 1)[1].replace(".jpg", ".png") for f in run["files"][:2])
    img = cv2.imread(str(ov / names[0]))
    src = cv2.imread(next(f for f in run["files"] if f.endswith(names[0].replace(".png", ".jpg"))))
    h = round(src.shape[0] * OVERLAY_WIDTH / src.shape[1])
    assert img.shape == (h + 3 * CAPTION_LINE + 8, OVERLAY_WIDTH, 3)
    assert img[:h].std() > 10 and (img[h:] < 128).any()  # a picture, and a caption written on white


def test_the_python_api_gives_the_commands_rows(run, tmp_path, run_cli):
    from fgvc.predict import Predictor

    out = tmp_path / "p.jsonl"
    assert run_cli("predict.py", *predict_args(run, out, *run["files"][:3]))[0] == 0
    command = [json.loads(line) for line in out.read_text().splitlines()]
    p = Predictor(run["coarse"], run["fine"], device="cpu", workers=0, amp="off")
    assert p.predict(run["files"][:3], topk=5) == command
    assert p.predict(run["files"][0]) == command[0]
    rgb = cv2.cvtColor(cv2.imread(run["files"][0]), cv2.COLOR_BGR2RGB)
    from_array = p.predict(rgb, topk=5)
    assert from_array["path"] == "<array>" and from_array["predictions"] == command[0]["predictions"]
    assert np.array_equal(from_array["box"], command[0]["box"])


def test_checkpoints_older_than_their_class_names_need_data(run, tmp_path, run_cli):
    """A checkpoint without class names and counts (saved before issue 23.1): a one-line error naming
    --data; with --data, the dataset's names and prior give the same rows."""
    import shutil

    import torch

    old = {}
    for kind in ("coarse", "fine"):
        old[kind] = tmp_path / kind
        old[kind].mkdir()
        ckpt = torch.load(run[kind] / "checkpoint.pt", weights_only=True)
        for key in ("class_names", "supercategories", "class_counts"):
            ckpt.pop(key, None)
        torch.save(ckpt, old[kind] / "checkpoint.pt")
    shutil.copy(run["coarse"] / "masks_test.npz", old["coarse"])
    args = ["--coarse", old["coarse"], "--fine", old["fine"], *SCORING_TINY]
    code, _, err = run_cli("predict.py", run["files"][0], "--out", tmp_path / "a.csv", *args)
    assert code == 2 and "give --data" in error_line(err) and not (tmp_path / "a.csv").exists()
    assert run_cli("predict.py", *run["files"][:3], "--out", tmp_path / "a.csv", *args, "--data", run["data"])[0] == 0
    assert run_cli("predict.py", *predict_args(run, tmp_path / "b.csv", *run["files"][:3]))[0] == 0
    assert read_rows(tmp_path / "a.csv") == read_rows(tmp_path / "b.csv")


def test_the_memory_benchmark_runs(tmp_path):
    """bench/predict_memory.py at tiny sizes, so that it does not rot (no number is asserted)."""
    from harness import run_script

    run_script("bench/predict_memory.py", "--work", tmp_path, "--sizes", "8", "16")
    res = json.loads((tmp_path / "predict_memory.json").read_text())
    assert res["sizes"] == [8, 16] and res["main_ratio"] > 0 and res["tree_ratio"] > 0
    assert sum(1 for _ in open(tmp_path / "predictions_16.csv")) == 17
