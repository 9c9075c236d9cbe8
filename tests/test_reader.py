import json

import numpy as np
import pytest
from harness import ROOT, run_script

from fgvc.annotations import class_counts, class_prior, load_dataset, read_split
from fgvc.errors import DatasetError


def test_reads_all_splits_and_maps_ids_in_sorted_order(dataset):
    classes, splits = load_dataset(dataset)
    assert classes.ids == (5, 17, 40)  # sorted id order, not file order
    train = splits["train"]
    assert list(train.image_ids) == sorted(train.image_ids)  # rows sorted by id whatever the file order
    # labels joined on image_id: the class of each image is the category in its path
    for i in range(len(train)):
        assert classes.ids[train.labels[i]] == int(train.file_names[i].split("/")[2])
    assert splits["test"].labels is None
    assert class_counts(train, 3).tolist() == [8, 8, 8]
    assert np.isclose(class_prior([1, 3]).sum(), 1) and class_prior([1, 3])[1] == 0.75


def _edit(root, split, fn):
    path = root / f"{split}2019.json"
    doc = json.loads(path.read_text())
    fn(doc)
    path.write_text(json.dumps(doc))


BAD = {
    "missing images": ("train", lambda d: d.pop("images"), "missing key 'images'"),
    "missing annotations": ("val", lambda d: d.pop("annotations"), "missing key 'annotations'"),
    "missing categories": ("train", lambda d: d.pop("categories"), "missing key 'categories'"),
    "image without id": ("val", lambda d: d["images"][0].pop("id"), "images[0] has no 'id'"),
    "string id": ("train", lambda d: d["images"][1].update(id="7"), "images[1] has 'id' of type str"),
    "unknown image": ("train", lambda d: d["annotations"][2].update(image_id=999999), "annotations[2] refers to unknown image id 999999"),
    "unknown category": ("train", lambda d: d["annotations"][0].update(category_id=1234), "annotations[0] has category id 1234"),
    "val category train lacks": ("val", lambda d: d["annotations"][0].update(category_id=77), "category id 77, which train2019.json lacks"),
    "duplicate image id": ("train", lambda d: d["images"][3].update(id=d["images"][0]["id"]), "images[3] repeats image id"),
    "image without annotation": ("train", lambda d: d["annotations"].pop(4), "1 images have no annotation"),
    "two annotations": ("val", lambda d: d["annotations"].append(dict(d["annotations"][0], id=1)), "second annotation"),
    "absolute file_name": ("train", lambda d: d["images"][0].update(file_name="/etc/passwd"), "absolute paths are refused"),
    "escaping file_name": ("test", lambda d: d["images"][0].update(file_name="test2019/../../x.jpg"), "climbs out of the dataset root"),
    "empty split": ("test", lambda d: d.update(images=[]), "'images' is empty"),
    "images not a list": ("val", lambda d: d.update(images={}), "'images' is dict, expected a list"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_names_file_and_entry(dataset, case):
    split, edit, expected = BAD[case]
    _edit(dataset, split, edit)
    with pytest.raises(DatasetError) as e:
        load_dataset(dataset)
    msg = str(e.value)
    assert f"{split}2019.json" in msg and expected in msg
    assert "\n" not in msg


def test_malformed_json(dataset):
    (dataset / "val2019.json").write_text('{"images": [1, 2,,]}')
    with pytest.raises(DatasetError, match=r"val2019.json: malformed JSON at line 1 column"):
        load_dataset(dataset)


def test_missing_images_reported_at_start_with_count(dataset):
    _, splits = load_dataset(dataset)
    for name in splits["train"].file_names[:3]:
        (dataset / name).unlink()
    with pytest.raises(DatasetError, match=r"train2019.json: 3 of 24 image files are missing .*first: train_val2019/"):
        load_dataset(dataset)


def test_test_file_may_lack_annotations_and_categories(dataset):
    split, classes = read_split(dataset, "train")
    test, _ = read_split(dataset, "test", classes)
    assert test.labels is None and len(test) == 9


def test_cli_exits_nonzero_with_one_line(dataset, tmp_path):
    _edit(dataset, "train", lambda d: d["annotations"][0].update(category_id=1234))
    p = run_script(ROOT / "coarse" / "train.py", "--data", dataset, "--out", tmp_path / "o", "--pretrained", "none", check=False)
    assert p.returncode == 2
    assert p.stderr.strip().count("\n") == 0 and "train2019.json" in p.stderr and "1234" in p.stderr
    assert not (tmp_path / "o").exists()
