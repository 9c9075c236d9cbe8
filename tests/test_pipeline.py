"""The three stages end to end on a tiny dataset, through their command lines."""
import json

import numpy as np
import pytest
from harness import ROOT, TINY, make_dataset, run_script

from fgvc.annotations import load_dataset
from fgvc.submission import read_submission

pytestmark = pytest.mark.slow  # whole stages run: left out of `make test-fast`


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("pipe")
    data = make_dataset(tmp / "ds")
    # from inside coarse/, with a relative --out: paths resolve against the repo root, not the cwd
    coarse = run_script("train.py", "--data", data, "--out", tmp / "coarse", *TINY, "--epochs", "2", "--resize", "72",
                        "--mask-size", "32", "32", "--figure", tmp / "sample.png", cwd=ROOT / "coarse")
    fine = run_script(ROOT / "fine" / "train.py", "--data", data, "--out", tmp / "fine", "--coarse", tmp / "coarse", *TINY, "--epochs", "2")
    test = run_script(ROOT / "test.py", "--data", data, "--coarse", tmp / "coarse", "--fine", tmp / "fine", "--device", "cpu",
                      "--workers", "0", "--submission", tmp / "submission.csv", "--eval", "--tau", "auto", "--amp", "off")
    return tmp, data, coarse, fine, test


def test_masks_cover_every_image_of_every_split(pipeline):
    tmp, data, coarse, _, _ = pipeline
    _, splits = load_dataset(data)
    for name, split in splits.items():
        with np.load(tmp / "coarse" / f"masks_{name}.npz") as f:
            assert f["image_ids"].dtype == np.int64 and f["masks"].dtype == np.uint8
            assert sorted(f["image_ids"].tolist()) == sorted(split.image_ids.tolist())
            assert f["masks"].shape == (len(split), 32, 32) and set(np.unique(f["masks"])) <= {0, 1}
    assert "localization on val (IoU >= 0.5 with the true box)" in coarse.stdout
    assert (tmp / "sample.png").stat().st_size > 1000


def test_submission_is_valid(pipeline):
    tmp, data, _, _, test = pipeline
    lines = (tmp / "submission.csv").read_text().splitlines()
    assert lines[0] == "id,predicted"
    sub = read_submission(tmp / "submission.csv")
    test_ids = [im["id"] for im in json.loads((data / "test2019.json").read_text())["images"]]
    assert sorted(sub) == sorted(test_ids) and len(lines) == len(test_ids) + 1
    for preds in sub.values():
        assert len(preds) == 3 and set(preds) == {5, 17, 40}  # real category ids (only 3 classes here)
    assert "submission top-1 error on the hidden test labels" in test.stdout
    assert "tau on val" in test.stdout and "coarse (whole image)" in test.stdout and "fine (crops)" in test.stdout


def test_hidden_label_table_agrees_with_the_submission(pipeline):
    _, _, _, _, test = pipeline
    out = test.stdout.split("scored on ")[1]  # the table on the hidden test labels
    rows = [line.split() for line in out.splitlines() if line.startswith(("coarse (whole image)", "fine (crops)"))]
    assert [r[0] for r in rows] == ["coarse", "fine"] or [r[0] for r in rows] == ["coarse", "coarse", "fine", "fine"]
    tau_used = test.stdout.split("tau = ")[1].split()[0]
    fine_used = [r for r in rows if r[0] == "fine" and r[2] == tau_used][0]
    submitted = float(test.stdout.split("submission top-1 error on the hidden test labels: ")[1].split()[0])
    assert float(fine_used[3]) == pytest.approx(submitted, abs=1e-3)


def test_class_mapping_mismatch_fails_clearly(pipeline, tmp_path):
    tmp, _, _, _, _ = pipeline
    other = make_dataset(tmp_path / "other", category_ids=(5, 17, 41))
    p = run_script(ROOT / "test.py", "--data", other, "--coarse", tmp / "coarse", "--fine", tmp / "fine", "--device", "cpu",
                   "--workers", "0", "--submission", tmp_path / "s.csv", check=False)
    assert p.returncode == 2 and "class mapping differs" in p.stderr and "41" in p.stderr
    assert not (tmp_path / "s.csv").exists()


def test_localize_only_rewrites_the_same_masks(pipeline):
    tmp, data, _, _, _ = pipeline
    before = np.load(tmp / "coarse" / "masks_val.npz")["masks"]
    run_script(ROOT / "coarse" / "train.py", "--data", data, "--out", tmp / "coarse", *TINY, "--localize-only",
               "--mask-size", "32", "32", "--figure", tmp / "sample.png")
    assert np.array_equal(np.load(tmp / "coarse" / "masks_val.npz")["masks"], before)


def test_coarse_baseline_and_val_split(pipeline):
    tmp, data, _, _, _ = pipeline
    p = run_script(ROOT / "test.py", "--data", data, "--coarse", tmp / "coarse", "--fine", tmp / "fine", "--device", "cpu",
                   "--workers", "0", "--model", "coarse", "--split", "val", "--submission", tmp / "val.csv", "--tau", "0")
    assert "val (9 images, 3 classes)" in p.stdout
    assert len((tmp / "val.csv").read_text().splitlines()) == 10
