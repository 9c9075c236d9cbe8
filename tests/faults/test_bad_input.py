"""Bad input: unreadable and odd image files, missing files, malformed dataset json, and masks files
that do not cover the split or are not masks. A run either completes (bad images within
--max-bad-images) or stops at start with one line, exit code 2, and writes nothing."""
import json
import os
import pickle
import shutil

import numpy as np
import pytest
from harness import bomb, coarse_args, error_line, fine_args, make_dataset, scoring_args
from helpers import (BAD_TEST, BAD_TRAIN, BAD_VAL, ODD_TEST, ODD_TRAIN, ODD_VAL, RunsCode, copy_dir, edit_json,
                     first_image_id, masks_of)

from fgvc.annotations import load_dataset
from fgvc.masks import save_masks
from fgvc.submission import read_submission

pytestmark = pytest.mark.slow  # whole stages run: left out of `make test-fast`


# ---------------------------------------------------------------- bad image files

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


# ---------------------------------------------------------------- bad dataset json

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


# ---------------------------------------------------------------- bad masks files

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


# ---------------------------------------------------------------- dataset json outside what the reader accepts

@pytest.mark.parametrize("field", ["category", "image"])
def test_ids_outside_int64_are_refused_naming_the_entry(tmp_path, run_cli, field):
    data = make_dataset(tmp_path / "ds")
    if field == "category":
        edit_json(data, "train", lambda d: d["annotations"][0].update(category_id=2**63))
        want = "train2019.json: annotations[0] has 'category_id' 9223372036854775808, outside the int64 range"
    else:
        edit_json(data, "test", lambda d: d["images"][2].update(id=2**63))
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


# ---------------------------------------------------------------- masks files of another dataset, or malformed

def test_masks_of_another_dataset_with_the_same_ids_are_refused(clean, tmp_path, run_cli):
    data, coarse, *_ = clean
    other = tmp_path / "other"
    shutil.copytree(data, other)
    for split in ("train", "val"):  # the same ids, other files: another dataset
        edit_json(other, split,
                  lambda d: [im.update(file_name=im["file_name"].replace(".jpg", "b.jpg")) for im in d["images"]])
        for im in json.loads((other / f"{split}2019.json").read_text())["images"]:
            os.rename(other / im["file_name"].replace("b.jpg", ".jpg"), other / im["file_name"])
    code, _, err = run_cli("fine/train.py", *fine_args(other, tmp_path / "fine", coarse, "--epochs", "1"))
    assert code == 2 and "masks_train.npz: made from another train than" in error_line(err)
    assert not (tmp_path / "fine").exists()


@pytest.mark.parametrize("case", ["duplicate ids", "16 x 16", "float ids", "string ids"])
def test_malformed_masks_files_are_refused(clean, tmp_path, run_cli, case):
    data, coarse, *_ = clean
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
    code, _, err = run_cli("fine/train.py", *fine_args(data, tmp_path / "fine", bad, "--epochs", "1"))
    assert code == 2 and want in error_line(err), error_line(err)
    assert not (tmp_path / "fine").exists()


# ---------------------------------------------------------------- image files that would hang or exhaust a reader

def test_bombs_fifos_and_corrupt_jpegs_are_counted_like_any_unreadable_image(clean, tmp_path, run_cli):
    data, coarse, *_ = clean
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
