"""The toy dataset generator (data/toy.py) and the distribution figure (fig/distribute.py).

Properties that need the default size (taxonomy, long tail) are checked on the plan alone; the rest
on a tiny dataset generated once per module (6 species, a few seconds).
"""
import csv
import importlib.util
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pytest
from harness import ROOT

REAL_SUPERS = {"Amphibians", "Birds", "Fungi", "Insects", "Plants", "Reptiles"}
TINY = dict(species=6, max_train=8, val_per_class=2, test_per_class=2)


def load(path, name):
    spec = importlib.util.spec_from_file_location(name, ROOT / path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # worker processes find toy.render by name
    spec.loader.exec_module(module)
    return module


toy = load("data/toy.py", "toy")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    out = tmp_path_factory.mktemp("toy") / "toy"
    toy.generate(out, seed=3, workers=2, **TINY)
    return out


def read_json(root, split):
    return json.loads((root / f"{split}2019.json").read_text())


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def files(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------- 1. taxonomy

@pytest.mark.parametrize("species", [16, 24, 32])
def test_taxonomy(species):
    cats, _ = toy.make_plan(0, species=species)
    assert len(cats) == species and len({c["name"] for c in cats}) == species
    supers = {c["design"]["super"] for c in cats}
    assert supers <= REAL_SUPERS and len(supers) >= 3
    for c in cats:
        for key in ("name", "kingdom", "phylum", "class", "order", "family", "genus"):
            assert isinstance(c[key], str) and c[key]
        assert c["name"].startswith(c["genus"] + " ")
    genera = {}
    for c in cats:
        genera.setdefault(c["genus"], []).append(c["design"])
    for designs in genera.values():  # a genus: one super, one shape, distinct species textures
        assert len({d["super"] for d in designs}) == 1 and len({d["shape"] for d in designs}) == 1
        assert len({d["texture"] for d in designs}) == len(designs)
    shapes = Counter((d[0]["super"], d[0]["shape"]) for d in genera.values())
    assert max(shapes.values()) == 1  # genera of one super-category differ in shape
    for s in supers:  # the super-category alone sets the body colour
        assert len({tuple(c["design"]["colour"]) for c in cats if c["design"]["super"] == s}) == 1


def test_category_ids_not_dense_nor_in_taxonomy_order():
    cats, _ = toy.make_plan(0)
    ids = [c["id"] for c in cats]
    assert len(set(ids)) == len(ids) and all(0 <= i < 1010 for i in ids)
    assert sorted(ids) != list(range(len(ids)))
    assert ids != sorted(ids)


# ---------------------------------------------------------------- 2. long tail

def test_long_tail_follows_real_curve():
    cats, images = toy.make_plan(0)
    k = len(cats)
    per_split = {s: Counter(im["category_id"] for im in images if im["split"] == s) for s in ("train", "val", "test")}
    train = np.array([per_split["train"][c["id"]] for c in cats])
    ordered = np.sort(train)[::-1]
    assert np.corrcoef(ordered, toy.resampled_curve(k))[0, 1] > 0.99
    assert ordered[0] == 120 and 20 <= ordered[0] / ordered[-1] <= 40
    by_id = train[np.argsort([c["id"] for c in cats])]
    assert not (np.all(np.diff(by_id) <= 0) or np.all(np.diff(by_id) >= 0))  # not assigned in id order
    assert set(per_split["val"].values()) == {10} and set(per_split["test"].values()) == {10}
    assert len(per_split["val"]) == len(per_split["test"]) == k


# ---------------------------------------------------------------- format and layout

def test_official_format(tiny):
    seen_ids = set()
    for split in ("train", "val", "test"):
        d = read_json(tiny, split)
        assert {"info", "images", "licenses"} <= set(d)
        licenses = {lic["id"] for lic in d["licenses"]}
        for im in d["images"]:
            assert set(im) == {"id", "width", "height", "file_name", "license", "rights_holder"}
            assert im["license"] in licenses
            name = Path(im["file_name"])
            assert not name.is_absolute() and ".." not in name.parts
            top = "test2019" if split == "test" else "train_val2019"
            assert name.parts[0] == top and name.suffix == ".jpg" and len(name.stem) == 32
            data = (tiny / name).read_bytes()
            assert data[:2] == b"\xff\xd8"  # real JPEG bytes
            img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
            assert (img.shape[1], img.shape[0]) == (im["width"], im["height"])
        ids = [im["id"] for im in d["images"]]
        assert len(set(ids)) == len(ids) and not seen_ids & set(ids)
        seen_ids |= set(ids)
        if split == "test":
            assert "annotations" not in d and "categories" not in d
            continue
        cats = {c["id"]: c for c in d["categories"]}
        for c in cats.values():
            assert set(c) == {"id", "name", "kingdom", "phylum", "class", "order", "family", "genus"}
        assert Counter(a["image_id"] for a in d["annotations"]) == Counter(ids)  # exactly one each
        assert len({a["id"] for a in d["annotations"]}) == len(d["annotations"])
        by_id = {im["id"]: im for im in d["images"]}
        for a in d["annotations"]:
            assert a["category_id"] in cats
            parts = Path(by_id[a["image_id"]]["file_name"]).parts
            assert parts[1] in REAL_SUPERS and parts[2] == str(a["category_id"])


def test_ids_ordered_by_split_lists_shuffled(tiny):
    ids = {s: [im["id"] for im in read_json(tiny, s)["images"]] for s in ("train", "val", "test")}
    assert max(ids["train"]) < min(ids["val"]) and max(ids["val"]) < min(ids["test"])
    train = read_json(tiny, "train")
    assert ids["train"] != sorted(ids["train"])
    ann_order = [a["image_id"] for a in train["annotations"]]
    assert ann_order != sorted(ann_order) and ann_order != ids["train"]


def test_truth_outside_json(tiny):
    for split in ("train", "val", "test"):
        assert "truth" not in (tiny / f"{split}2019.json").read_text()
    test_ids = {im["id"] for im in read_json(tiny, "test")["images"]}
    labels = read_csv(tiny / "truth" / "test_labels.csv")
    assert list(labels[0]) == ["id", "category_id"]
    assert {int(r["id"]) for r in labels} == test_ids and len(labels) == len(test_ids)
    cat_ids = {c["id"] for c in read_json(tiny, "train")["categories"]}
    assert {int(r["category_id"]) for r in labels} == cat_ids  # uniform test: every class present


# ---------------------------------------------------------------- 3-4. images and boxes

def test_image_sizes_and_boxes(tiny):
    images = {im["id"]: im for s in ("train", "val", "test") for im in read_json(tiny, s)["images"]}
    rows = read_csv(tiny / "truth" / "boxes.csv")
    assert list(rows[0]) == ["image_id", "x", "y", "w", "h"]
    assert sorted(int(r["image_id"]) for r in rows) == sorted(images)
    orientations = set()
    for r in rows:
        im = images[int(r["image_id"])]
        w, h = im["width"], im["height"]
        assert 500 <= max(w, h) <= 800 and 0.59 <= min(w, h) / max(w, h) <= 1
        orientations.add(w >= h)
        x, y, bw, bh = (int(r[k]) for k in "xywh")
        assert x >= 0 and y >= 0 and bw > 0 and bh > 0 and x + bw <= w and y + bh <= h
        assert 0.008 <= bw * bh / (w * h) <= 0.12
    assert orientations == {True, False}


def test_box_fraction_spread():
    design = toy.make_plan(0, species=4)[0][0]["design"]
    fracs = []
    for i in range(40):
        img, (x, y, w, h) = toy.draw(0, i, design)
        fracs.append(w * h / img.shape[0] / img.shape[1])
    fracs = np.log10(fracs)
    assert fracs.min() < -1.6 and fracs.max() > -1.2  # log-uniform in [1 %, 10 %], not one size


# ---------------------------------------------------------------- 5. the premise, without training

def test_species_texture_vanishes_whole_but_not_in_crop():
    """Two species of one genus on the same draw: the images differ only by the body texture.

    Shrunk whole to 128 px the difference is tiny (equal mean colour); in a crop around the
    box resized to 128 px it is large.
    """
    design = toy.make_plan(0, species=6)[0][0]["design"]
    ratios = []
    for i in range(8):
        a, box = toy.draw(0, i, {**design, "texture": "stripes"})
        b, _ = toy.draw(0, i, {**design, "texture": "checker"})
        x, y, w, h = box
        side = (2 * w * h) ** 0.5
        x0, y0 = int(max(0, x + w / 2 - side / 2)), int(max(0, y + h / 2 - side / 2))
        x1, y1 = int(min(a.shape[1], x + w / 2 + side / 2)), int(min(a.shape[0], y + h / 2 + side / 2))

        def diff(f):
            return np.abs(f(a).astype(float) - f(b).astype(float)).mean()

        whole = diff(lambda im: cv2.resize(im, (128, 128), interpolation=cv2.INTER_AREA))
        crop = diff(lambda im: cv2.resize(im[y0:y1, x0:x1], (128, 128), interpolation=cv2.INTER_AREA))
        ratios.append(crop / max(whole, 1e-3))
    assert np.median(ratios) > 10


# ---------------------------------------------------------------- 7. determinism, atomic output

def test_deterministic_and_worker_independent(tiny, tmp_path):
    again = tmp_path / "again"
    toy.generate(again, seed=3, workers=1, **TINY)
    assert files(again) == files(tiny)
    other = tmp_path / "other"
    toy.generate(other, seed=4, workers=1, **TINY)
    a, b = files(other), files(tiny)
    assert a["train2019.json"] != b["train2019.json"]
    assert not set(k for k in a if k.endswith(".jpg")) & set(k for k in b if k.endswith(".jpg"))


def test_refuses_to_overwrite(tmp_path):
    out = tmp_path / "toy"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError):
        toy.generate(out, species=2, max_train=2, val_per_class=1, test_per_class=1, workers=1)
    with pytest.raises(FileExistsError):  # --overwrite only replaces a toy dataset
        toy.generate(out, species=2, max_train=2, val_per_class=1, test_per_class=1, workers=1, overwrite=True)
    assert (out / "keep.txt").read_text() == "mine"
    assert [p.name for p in tmp_path.iterdir()] == ["toy"]  # no temporary folder left behind


def test_cli(tmp_path):
    out = tmp_path / "cli"
    cmd = [sys.executable, str(ROOT / "data" / "toy.py"), "--out", str(out), "--species", "4", "--max-train", "3",
           "--val-per-class", "1", "--test-per-class", "1", "--workers", "1", "--seed", "7"]
    run = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, check=True)
    assert "4 species" in run.stdout and (out / "test2019.json").exists()
    run = subprocess.run(cmd + ["--overwrite"], cwd=tmp_path, capture_output=True, text=True, check=True)
    assert (out / "test2019.json").exists()


# ---------------------------------------------------------------- fig/distribute.py

def test_distribute_figure(tiny, tmp_path):
    distribute = load("fig/distribute.py", "distribute")
    train = distribute.class_counts(tiny / "train2019.json")
    assert sum(train.values()) == len(read_json(tiny, "train")["images"])
    out = tmp_path / "fig" / "distribute.png"
    cmd = [sys.executable, str(ROOT / "fig" / "distribute.py"), "--data", str(tiny), "--out", str(out)]
    subprocess.run(cmd, cwd=tmp_path, check=True, capture_output=True)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in out.parent.iterdir()] == ["distribute.png"]
