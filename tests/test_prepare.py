"""data/prepare.py: tiny crafted trees of each format -> this project's layout -> the reader and the stages."""
import csv
import json
import math
import os

import cv2
import numpy as np
import pytest
from harness import COLORS, ROOT, TINY, call, run_script, stage

from fgvc.annotations import load_dataset

pytestmark = pytest.mark.slow  # whole stages run: left out of `make test-fast`

PREPARE = ROOT / "data" / "prepare.py"

# The official layouts, written here independently of prepare.py: json names and where images live.
INAT = {
    "inat2017": {"json": ("train2017.json", "val2017.json", "test2017.json"),
                 "dirs": ("train_val_images/{super}/{species}", "train_val_images/{super}/{species}", "test2017")},
    "inat2018": {"json": ("train2018.json", "val2018.json", "test2018.json"),
                 "dirs": ("train_val2018/{super}/{cid}", "train_val2018/{super}/{cid}", "test2018")},
    "inat2021": {"json": ("train.json", "val.json", "public_test.json"),
                 "dirs": ("train/{dir21}", "val/{dir21}", "public_test")},
    "inat2021-mini": {"json": ("train_mini.json", "val.json", "public_test.json"),
                      "dirs": ("train_mini/{dir21}", "val/{dir21}", "public_test")},
}


def write_image(path, k, seed, size=(56, 72)):
    """A JPEG: a square of class colour k on noise (distinct bytes per seed); returns (w, h, box)."""
    rng = np.random.default_rng(seed)
    h, w = size
    img = rng.integers(0, 80, (h, w, 3)).astype(np.uint8)
    s = 20
    x, y = int(rng.integers(0, w - s)), int(rng.integers(0, h - s))
    img[y : y + s, x : x + s] = COLORS[k % len(COLORS)]
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    return w, h, (x, y, s, s)


def make_inat(root, fmt, per_class=(3, 2, 2), cids=(7, 3, 11)):
    """An iNat tree of year `fmt`: 3 classes, ids global over the splits, lists not parallel."""
    layout = INAT[fmt]
    cats, docs, image_id = [], [], 100
    for k, cid in enumerate(cids):
        cat = {"id": cid, "name": f"Genus species{k}", "supercategory": "Plantae"}
        if fmt != "inat2017":
            cat.update(kingdom="Plantae", phylum="Tracheophyta", **{"class": "Magnoliopsida"}, order="o", family="f", genus="Genus")
        if fmt.startswith("inat2021"):
            cat.update(common_name=f"plant {k}", specific_epithet=f"species{k}", image_dir_name=f"{k:05d}_Plantae_Genus_species{k}")
        cats.append(cat)
    for s, n in enumerate(per_class):
        images, anns = [], []
        for k, cat in enumerate(cats):
            for _ in range(n):
                folder = layout["dirs"][s].format(super="Plantae", species=cat["name"], cid=cat["id"], dir21=cat.get("image_dir_name"))
                name = f"{folder}/{image_id:08x}.jpg"
                w, h, _ = write_image(root / name, k, image_id)
                im = {"id": image_id, "width": w, "height": h, "file_name": name, "license": 1, "rights_holder": "x"}
                if fmt.startswith("inat2021"):
                    im.update(date="2019-05-01 10:00:00+00:00", latitude=math.nan, longitude=12.5, location_uncertainty=5)
                images.append(im)
                anns.append({"id": 9000 + image_id, "image_id": image_id, "category_id": cat["id"]})
                image_id += 1
        doc = {"info": {"year": 2000}, "images": images[::-1], "licenses": []}
        if s < 2:
            doc.update(categories=cats, annotations=anns)
        elif fmt == "inat2017":
            doc.update(categories=cats, annotations=[])  # a test file with an empty list
        docs.append(doc)
    for name, doc in zip(layout["json"], docs):
        (root / name).write_text(json.dumps(doc))
    return root


def make_cub(root, classes=3, per_class=6, train_per_class=4):
    """CUB_200_2011 as unpacked, tiny: the five txt files and images/<NNN.Name>/<Name>_<n>.jpg."""
    rows = {f: [] for f in ("images", "image_class_labels", "train_test_split", "classes", "bounding_boxes")}
    i = 1
    for c in range(1, classes + 1):
        cname = f"{c:03d}.Bird_{c}"
        rows["classes"].append(f"{c} {cname}")
        for n in range(per_class):
            name = f"{cname}/Bird_{c}_{n:04d}_{i}.jpg"
            w, h, (x, y, bw, bh) = write_image(root / "images" / name, c - 1, 500 + i)
            rows["images"].append(f"{i} {name}")
            rows["image_class_labels"].append(f"{i} {c}")
            rows["train_test_split"].append(f"{i} {int(n < train_per_class)}")
            rows["bounding_boxes"].append(f"{i} {x:.1f} {y:.1f} {bw:.1f} {bh:.1f}")
            i += 1
    for f, lines in rows.items():
        (root / f"{f}.txt").write_text("\n".join(lines) + "\n")
    return root


def make_folder(root, names=("zebra", "Aardvark", "mole rat"), per_class=5):
    """SRC/<class>/[sub/]<image>, plus a note, a hidden file and a duplicate that are skipped."""
    seed = 900
    for k, name in enumerate(names):
        for n in range(per_class):
            sub = "day2/" if n % 2 else ""
            write_image(root / name / f"{sub}img{n}.jpg", k, seed)
            seed += 1
    (root / "zebra" / "notes.txt").write_text("field notes")
    (root / "zebra" / ".DS_Store").write_bytes(b"\0")
    (root / "zebra" / "img0_copy.jpg").write_bytes((root / "zebra" / "img0.jpg").read_bytes())
    return root


def prepare(*args, check=True):
    return run_script(PREPARE, *args, check=check)


def fails(out, *args):
    """prepare must end with exactly one 'error: ...' line, exit code 2, and nothing at --out."""
    p = prepare(*args, "--out", out, check=False)
    lines = p.stderr.strip().splitlines()
    assert p.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), (p.returncode, p.stderr)
    assert not out.exists() and not list(out.parent.glob(f"{out.name}.*")), "something was written"
    return lines[0]


# ---------------------------------------------------------------- one format through every stage

@pytest.fixture(scope="module")
def cub_pipeline(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cub")
    src, data = make_cub(tmp / "CUB_200_2011"), tmp / "data"
    prep = prepare("cub", src, "--out", data, "--val-per-class", "1")
    stages = ["--epochs", "1"]
    coarse = run_script(ROOT / "coarse" / "train.py", "--data", data, "--out", tmp / "coarse", *TINY, *stages,
                        "--resize", "72", "--mask-size", "32", "32", "--figure", tmp / "sample.png")
    run_script(ROOT / "fine" / "train.py", "--data", data, "--out", tmp / "fine", "--coarse", tmp / "coarse", *TINY, *stages)
    test = run_script(ROOT / "test.py", "--data", data, "--coarse", tmp / "coarse", "--fine", tmp / "fine", "--device", "cpu",
                      "--workers", "0", "--amp", "off", "--submission", tmp / "submission.csv", "--tta-factors", "1",
                      "--tta-mirror-factors")
    return tmp, src, data, prep, coarse, test


def test_cub_runs_through_every_stage(cub_pipeline):
    tmp, _, data, prep, coarse, test = cub_pipeline
    assert "cub: 3 classes" in prep.stdout
    assert "train       9 images, per class min 3 / median 3 / max 3 over 3 classes" in prep.stdout
    assert "val         3 images" in prep.stdout and "test        6 images" in prep.stdout
    assert "truth/boxes.csv: 18 boxes" in prep.stdout
    assert "localization on val (IoU >= 0.5 with the true box)" in coarse.stdout
    assert "submission top-1 error on the hidden test labels" in test.stdout
    rows = (tmp / "submission.csv").read_text().splitlines()
    test_ids = sorted(im["id"] for im in json.loads((data / "test2019.json").read_text())["images"])
    assert rows[0] == "id,predicted" and sorted(int(r.split(",")[0]) for r in rows[1:]) == test_ids
    assert {int(c) for r in rows[1:] for c in r.split(",")[1].split()} == {1, 2, 3}  # CUB's class ids


def test_cub_layout_boxes_and_labels(cub_pipeline):
    _, src, data, _, _, _ = cub_pipeline
    classes, splits = load_dataset(data)
    assert classes.ids == (1, 2, 3)
    assert len(splits["train"]) == 9 and len(splits["val"]) == 3 and len(splits["test"]) == 6
    assert np.bincount(splits["val"].labels).tolist() == [1, 1, 1]
    assert set(splits["train"].image_ids) | set(splits["val"].image_ids) == {i for i in range(1, 19) if (i - 1) % 6 < 4}
    assert os.path.islink(data / "images") and not os.path.isabs(os.readlink(data / "images"))
    cats = json.loads((data / "train2019.json").read_text())["categories"]
    assert cats[0] == {"id": 1, "name": "Bird 1"}
    boxes = list(csv.reader(open(data / "truth" / "boxes.csv")))
    first_src = (src / "bounding_boxes.txt").read_text().split("\n")[0].split()
    assert boxes[0] == ["image_id", "x", "y", "w", "h"] and len(boxes) == 19
    assert [float(v) for v in boxes[1]] == [float(v) for v in first_src]
    labels = list(csv.reader(open(data / "truth" / "test_labels.csv")))
    assert labels[0] == ["id", "category_id"] and sorted(int(i) for i, _ in labels[1:]) == sorted(splits["test"].image_ids)


def test_cub_val_is_the_test_split_on_request(cub_pipeline, tmp_path):
    _, src, _, _, _, _ = cub_pipeline
    p = prepare("cub", src, "--out", tmp_path / "d", "--val", "test")
    _, splits = load_dataset(tmp_path / "d")
    assert sorted(splits["val"].file_names) == sorted(splits["test"].file_names) and len(splits["val"]) == 6
    assert (splits["test"].image_ids == splits["val"].image_ids + 1_000_000).all()
    assert "val = the official test split" in p.stdout


def test_same_seed_same_draw_other_seed_other_draw(cub_pipeline, tmp_path):
    _, src, data, _, _, _ = cub_pipeline
    prepare("cub", src, "--out", tmp_path / "a", "--val-per-class", "1")
    assert (tmp_path / "a" / "val2019.json").read_bytes() == (data / "val2019.json").read_bytes()
    draws = {(tmp_path / "a" / "val2019.json").read_bytes()}
    for seed in (1, 2, 3):
        prepare("cub", src, "--out", tmp_path / f"s{seed}", "--val-per-class", "1", "--seed", seed)
        draws.add((tmp_path / f"s{seed}" / "val2019.json").read_bytes())
    assert len(draws) > 1


# ---------------------------------------------------------------- the other formats: prepare + the reader

@pytest.mark.parametrize("fmt", list(INAT))
def test_inat_years_keep_ids_splits_and_drop_location(fmt, tmp_path):
    src = make_inat(tmp_path / fmt, fmt)
    p = prepare(fmt, src, "--out", tmp_path / "d")
    classes, splits = load_dataset(tmp_path / "d")
    assert classes.ids == (3, 7, 11)
    assert [len(splits[s]) for s in ("train", "val", "test")] == [9, 6, 6]
    assert splits["train"].image_ids.tolist() == list(range(100, 109)) and splits["test"].labels is None
    assert splits["val"].file_names[0].startswith(INAT[fmt]["dirs"][1].split("/")[0] + "/")
    assert not (tmp_path / "d" / "truth").exists()
    image = json.loads((tmp_path / "d" / "val2019.json").read_text())["images"][0]
    assert set(image) == {"id", "file_name", "width", "height", "license", "rights_holder"}  # no date, no NaN
    assert f"{fmt}: 3 classes" in p.stdout and "test        6 images, unlabelled" in p.stdout


def test_folder_classes_sorted_skips_reported_links_relative(tmp_path):
    src = make_folder(tmp_path / "photos")
    p = prepare("folder", src, "--out", tmp_path / "d", "--val-per-class", "1", "--test-per-class", "1")
    classes, splits = load_dataset(tmp_path / "d")
    cats = json.loads((tmp_path / "d" / "train2019.json").read_text())["categories"]
    assert cats == [{"id": 0, "name": "Aardvark"}, {"id": 1, "name": "mole rat"}, {"id": 2, "name": "zebra"}]
    assert [len(splits[s]) for s in ("train", "val", "test")] == [9, 3, 3]
    ids = np.concatenate([splits[s].image_ids for s in ("train", "val", "test")])
    assert sorted(ids.tolist()) == list(range(15))
    assert "skipped 3 files: 1 hidden, 1 not an image name (.txt), 1 same bytes as img0.jpg" in p.stdout
    assert any(f.startswith("images/zebra/day2/") for s in splits.values() for f in s.file_names)
    labels = list(csv.reader(open(tmp_path / "d" / "truth" / "test_labels.csv")))[1:]
    assert sorted(int(c) for _, c in labels) == [0, 1, 2]
    assert os.readlink(tmp_path / "d" / "images") == os.path.join("..", "photos")


def test_folder_sibling_val_and_unlabelled_test(tmp_path):
    src = make_folder(tmp_path / "mine" / "train")
    write_image(tmp_path / "mine" / "val" / "zebra" / "v.jpg", 0, 1)
    write_image(tmp_path / "mine" / "test" / "t1.jpg", 0, 2)
    write_image(tmp_path / "mine" / "test" / "t2.jpg", 0, 3)
    prepare("folder", src, "--out", tmp_path / "d")
    _, splits = load_dataset(tmp_path / "d")
    assert splits["val"].file_names == ["val/zebra/v.jpg"] and splits["test"].labels is None
    assert splits["test"].file_names == ["test/t1.jpg", "test/t2.jpg"] and len(splits["train"]) == 15
    assert not (tmp_path / "d" / "truth").exists()


@pytest.mark.parametrize("mode", ["--copy", "--link=hard"])
def test_copy_and_hard_links_make_plain_files(mode, tmp_path):
    src = make_inat(tmp_path / "src", "inat2018")
    prepare("inat2018", src, "--out", tmp_path / "d", mode)
    _, splits = load_dataset(tmp_path / "d")
    first = tmp_path / "d" / splits["train"].file_names[0]
    assert not os.path.islink(tmp_path / "d" / "train_val2018") and first.is_file()
    assert (first.stat().st_nlink == 2) == (mode == "--link=hard")


def test_existing_output_is_not_overwritten_unless_asked(tmp_path):
    src = make_inat(tmp_path / "src", "inat2017")
    (tmp_path / "d").mkdir()
    p = prepare("inat2017", src, "--out", tmp_path / "d", check=False)
    assert p.returncode == 2 and "exists; delete it or pass --overwrite" in p.stderr
    p = prepare("inat2017", src, "--out", tmp_path / "d", "--overwrite", check=False)
    assert p.returncode == 2 and "is not a prepared dataset" in p.stderr and not any((tmp_path / "d").iterdir())
    (tmp_path / "d").rmdir()
    prepare("inat2017", src, "--out", tmp_path / "d")
    prepare("inat2017", src, "--out", tmp_path / "d", "--overwrite")
    assert load_dataset(tmp_path / "d")[0].ids == (3, 7, 11)


# ---------------------------------------------------------------- malformed inputs: one line, nothing written

def drop_first_image(src, rel_json):
    doc = json.loads((src / rel_json).read_text())
    name = sorted(im["file_name"] for im in doc["images"])[0]
    (src / name).unlink()
    return name


def replace_first_image(src, rel_json, make):
    """The first image of rel_json (by name) replaced by what make(path) puts at its path."""
    doc = json.loads((src / rel_json).read_text())
    path = src / sorted(im["file_name"] for im in doc["images"])[0]
    path.unlink()
    make(path)


def edit_json(path, edit):
    doc = json.loads(path.read_text())
    edit(doc)
    path.write_text(json.dumps(doc))


INAT_BAD = {
    "missing json": (lambda src: (src / "val.json").unlink(), ["val.json: file not found"]),
    "missing image": (lambda src: drop_first_image(src, "public_test.json"), ["public_test.json: 1 of 6 image files are missing", "public_test/"]),
    # the listing of a folder finds the plain files; what it does not show as one is looked at alone
    "image is a folder": (lambda src: replace_first_image(src, "train.json", lambda p: p.mkdir()),
                          ["train.json: 1 of 9 image files are missing", "train/"]),
    "image is a broken link": (lambda src: replace_first_image(src, "val.json", lambda p: p.symlink_to(p.with_name("gone.jpg"))),
                               ["val.json: 1 of 6 image files are missing", "val/"]),
    "unknown class id": (lambda src: edit_json(src / "val.json", lambda d: d["annotations"][2].update(category_id=99)),
                         ["val.json: annotations[2] has category id 99, which train.json lacks"]),
    "image listed twice": (lambda src: edit_json(src / "train.json", lambda d: d["images"].append(dict(d["images"][0]))),
                           ["train.json: images[9] (id 108) repeats image id 108 (first at images[0])"]),
    "file listed twice": (lambda src: edit_json(src / "train.json", lambda d: d["images"][1].update(file_name=d["images"][0]["file_name"])),
                          ["train.json: images[1] (id 107) lists file train/", "again (first at images[0])"]),
    "id in two splits": (lambda src: edit_json(src / "val.json", lambda d: (d["images"][0].update(id=100), d["annotations"][-1].update(image_id=100))),
                         ["val.json: image id 100 is also in train.json"]),
}


def test_inat_images_behind_links_are_found(tmp_path):
    """An image file that is a symlink to a file elsewhere is there (a listing shows it as a link)."""
    src = make_inat(tmp_path / "src", "inat2021")
    doc = json.loads((src / "train.json").read_text())
    first = src / sorted(im["file_name"] for im in doc["images"])[0]
    (tmp_path / "elsewhere.jpg").write_bytes(first.read_bytes())
    first.unlink()
    first.symlink_to(tmp_path / "elsewhere.jpg")
    prepare("inat2021", src, "--out", tmp_path / "d")
    assert len(load_dataset(tmp_path / "d")[1]["train"]) == 9


@pytest.mark.parametrize("case", list(INAT_BAD))
def test_inat_malformed_input_fails_in_one_line(case, tmp_path):
    src = make_inat(tmp_path / "src", "inat2021", per_class=(3, 2, 2))
    mutate, expected = INAT_BAD[case]
    mutate(src)
    line = fails(tmp_path / "d", "inat2021", src)
    assert all(e in line for e in expected), line


def odd_inat(root, fmt):
    """An iNat tree whose entries are of every kind the msgspec reading takes: a non-ASCII name,
    backslashes, extras absent or of any type (a list or an object: not beside 2021's NaN
    locations), widths that are not sizes, a test file with complete labels."""
    src = make_inat(root, fmt)
    jsons = INAT[fmt]["json"]
    train = json.loads((src / jsons[0]).read_text())
    old = train["images"][0]["file_name"]
    new = old[:-4] + "_Zoë.jpg"
    os.rename(src / old, src / new)

    def edit_train(d):
        ims = d["images"]
        ims[0].update(file_name=new, license=2.5, rights_holder="Zoë \u00e9 \x7f")
        del ims[1]["license"]
        ims[1].update(width="300", height=True)
        ims[2].update(width=2**70, height=-3, rights_holder={"a": [1, None, 1.5]} if fmt != "inat2021" else 7)
        ims[3]["file_name"] = ims[3]["file_name"].replace("/", "\\")
        del ims[4]["width"]
    edit_json(src / jsons[0], edit_train)
    edit_json(src / jsons[2], lambda d: d.update(annotations=[{"id": im["id"], "image_id": im["id"], "category_id": 3} for im in d["images"]]))
    return src


def same_reading(src, fmt="inat2021"):
    """read_inat_fast's Prepared (None: it left the input to the checked reading), after checking
    that it equals read_inat_checked's and that write_split writes json.dumps's bytes."""
    P = stage("data/prepare.py")
    fast, slow = P.read_inat_fast(src, fmt), P.read_inat_checked(src, fmt)
    slow.splits = {k: P.Table.of(v) for k, v in slow.splits.items()}
    if fast is None:
        return None
    assert (fast.categories, fast.links) == (slow.categories, slow.links)
    for name in ("train", "val", "test"):
        assert fast.splits[name] == slow.splits[name], name
        P.write_split(src / "written.json", fast, name)
        assert (src / "written.json").read_bytes() == json.dumps(P.split_json(slow, name), separators=(",", ":")).encode()
    return fast


def test_fast_reading_equals_the_checked_one(tmp_path):
    """read_inat_fast (msgspec, a check per column) reads what read_inat_checked (json, a check per
    entry) reads, and write_split writes what json.dumps writes, msgspec encoding the plain splits."""
    P = stage("data/prepare.py")
    for fmt in ("inat2021", "inat2018"):
        fast = same_reading(odd_inat(tmp_path / fmt, fmt), fmt)
        assert fast is not None and fast.splits["test"].labelled() and "\\" not in "".join(fast.splits["train"].file_names)
        assert fast.splits["train"].extras["license"][1] is P.MISSING
    plain = same_reading(make_inat(tmp_path / "plain", "inat2018"), "inat2018")
    split_json, P.split_json = P.split_json, None  # a plain split never reaches json.dumps
    try:
        for name, file in P.SPLIT_FILES.items():
            P.write_split(tmp_path / file, plain, name)
    finally:
        P.split_json = split_json
    classes, splits = load_dataset(tmp_path, check_files=False)
    assert classes.ids == (3, 7, 11) and sorted(splits["train"].image_ids.tolist()) == sorted(plain.splits["train"].ids)


@pytest.mark.parametrize("value", [math.nan, "seen: NaN, twice", [math.nan]])
def test_a_nan_that_msgspec_would_read_as_null_leaves_the_file_to_json(value, tmp_path):
    """NaN is not json to msgspec; read as null, it must not reach a value prepare keeps."""
    src = make_inat(tmp_path / "src", "inat2021")
    edit_json(src / "val.json", lambda d: d["images"][1].update(rights_holder=value))
    assert same_reading(src) is None
    p = prepare("inat2021", src, "--out", tmp_path / "d")
    assert "inat2021: 3 classes" in p.stdout


def rewrite_line(path, n, text):
    lines = path.read_text().splitlines()
    lines[n - 1] = text
    path.write_text("\n".join(lines) + "\n")


CUB_BAD = {
    "missing file": (lambda src: (src / "images" / "002.Bird_2" / "Bird_2_0001_8.jpg").unlink(),
                     ["images.txt: line 8 (image id 8): images/002.Bird_2/Bird_2_0001_8.jpg: not found"]),
    "missing txt": (lambda src: (src / "bounding_boxes.txt").unlink(), ["bounding_boxes.txt: file not found"]),
    "unknown class id": (lambda src: rewrite_line(src / "image_class_labels.txt", 5, "5 201"),
                         ["image_class_labels.txt: line 5 has class id 201, which classes.txt lacks"]),
    "image listed twice": (lambda src: rewrite_line(src / "images.txt", 4, "3 001.Bird_1/Bird_1_0003_4.jpg"),
                           ["images.txt: line 4 lists image id 3 again (first at line 3)"]),
    "box outside the image": (lambda src: rewrite_line(src / "bounding_boxes.txt", 6, "6 60.0 10.0 20.0 20.0"),
                              ["bounding_boxes.txt: line 6 (image id 6): box x=60 y=10 w=20 h=20 lies outside the 72 x 56 image"]),
    "malformed line": (lambda src: rewrite_line(src / "train_test_split.txt", 2, "2 yes"),
                       ["train_test_split.txt: line 2 has is training image 'yes', expected an integer"]),
    "too few to draw val": (lambda src: None, ["class 1 has 4 train images, too few to draw --val-per-class 4"]),
}


@pytest.mark.parametrize("case", list(CUB_BAD))
def test_cub_malformed_input_fails_in_one_line(case, tmp_path):
    src = make_cub(tmp_path / "CUB_200_2011")
    mutate, expected = CUB_BAD[case]
    mutate(src)
    line = fails(tmp_path / "d", "cub", src, *(["--val-per-class", "4"] if case == "too few to draw val" else []))
    assert all(e in line for e in expected), line


FOLDER_BAD = {
    "missing folder": (lambda root: None, ["nowhere: folder not found"]),
    "unknown class": (lambda root: write_image(root / "val" / "okapi" / "x.jpg", 0, 5), ["val/okapi: class 'okapi' is not a class folder of"]),
    "image listed twice": (lambda root: (root / "train" / "mole rat" / "dup.jpg").write_bytes((root / "train" / "zebra" / "img4.jpg").read_bytes()),
                           ["the same image as", "class 'mole rat'", "listed twice"]),
    "empty class": (lambda root: (root / "train" / "yak").mkdir(), ["train/yak: no images in this class folder"]),
    "too few to draw test": (lambda root: None, ["class 'Aardvark' has 5 train images, too few to draw --test-per-class 5"]),
}


@pytest.mark.parametrize("case", list(FOLDER_BAD))
def test_folder_malformed_input_fails_in_one_line(case, tmp_path):
    root = tmp_path / "mine"
    make_folder(root / "train")
    mutate, expected = FOLDER_BAD[case]
    mutate(root)
    flags = ["--test-per-class", "5"] if case == "too few to draw test" else []
    line = fails(tmp_path / "d", "folder", root / ("nowhere" if case == "missing folder" else "train"), *flags)
    assert all(e in line for e in expected), line


# ---------------------------------------------------------------- every other format through every stage too

@pytest.mark.parametrize("fmt", list(INAT) + ["folder"])
def test_every_format_runs_through_every_stage(fmt, tmp_path):
    """The prepared root is this project's layout: coarse, fine and test.py run on it unchanged
    (in-process, tiny settings: what is tested is that each stage reads what prepare wrote)."""
    if fmt == "folder":
        prepare("folder", make_folder(tmp_path / "photos"), "--out", tmp_path / "d", "--val-per-class", "1", "--test-per-class", "1")
    else:
        prepare(fmt, make_inat(tmp_path / fmt, fmt), "--out", tmp_path / "d")
    data, tiny = tmp_path / "d", [*TINY, "--epochs", "1"]
    call("coarse/train.py", "--data", data, "--out", tmp_path / "coarse", *tiny, "--resize", "72", "--mask-size", "32", "32")
    call("fine/train.py", "--data", data, "--out", tmp_path / "fine", "--coarse", tmp_path / "coarse", *tiny)
    call("test.py", "--data", data, "--coarse", tmp_path / "coarse", "--fine", tmp_path / "fine", "--device", "cpu",
         "--workers", "0", "--amp", "off", "--submission", tmp_path / "s.csv", "--tta-factors", "1", "--tta-mirror-factors")
    _, splits = load_dataset(data)
    rows = (tmp_path / "s.csv").read_text().splitlines()
    assert rows[0] == "id,predicted" and sorted(int(r.split(",")[0]) for r in rows[1:]) == sorted(splits["test"].image_ids.tolist())
