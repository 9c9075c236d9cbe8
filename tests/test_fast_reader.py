"""The msgspec reader gives what the standard json reader (every entry checked, the reader as it
was) gives: the same splits on good and odd input, and, where it falls back, the same one-line
error. File names held as one buffer behave as the list of str they replace. The file check
split over processes reports what one process reports."""
import json
import pickle
from pathlib import Path

import numpy as np
import pytest
from harness import make_dataset

from fgvc import annotations
from fgvc.annotations import SPLIT_FILES, Split, _look_for_files, _read_checked, _read_fast, _report_files, load_dataset
from fgvc.errors import DatasetError
from fgvc.filenames import FileNames


def same_rows(a, b):
    ids, names, labels, sizes, classes = a
    ids2, names2, labels2, sizes2, classes2 = b
    assert ids.dtype == ids2.dtype == np.int64 and np.array_equal(ids, ids2)
    assert names == names2 and list(names) == list(names2)
    assert (labels is None) == (labels2 is None) and (labels is None or np.array_equal(labels, labels2))
    assert np.array_equal(sizes, sizes2) and sizes.dtype == sizes2.dtype
    assert classes == classes2


def both(root, name, classes=None):
    path = root / SPLIT_FILES[name]
    return _read_fast(path, name, classes), _read_checked(path, name, classes)


def test_the_fast_reader_reads_every_split_of_the_test_dataset_as_the_standard_one(dataset):
    fast, standard = both(dataset, "train")
    assert fast is not None  # no fallback on a good file
    same_rows(fast, standard)
    for name in ("val", "test"):
        fast_other, standard_other = both(dataset, name, fast[4])
        assert fast_other is not None
        same_rows(fast_other, standard_other)


def test_the_toy_dataset_reads_the_same(tmp_path):
    """data/toy.py's json (the demo's dataset; categories with names and supercategories)."""
    from test_toy import TINY, toy

    out = tmp_path / "toy"
    toy.generate(out, seed=3, workers=1, **TINY)
    fast, standard = both(out, "train")
    assert fast is not None
    same_rows(fast, standard)
    for name in ("val", "test"):
        same_rows(*both(out, name, fast[4]))


def edit(root, split, fn):
    path = root / f"{split}2019.json"
    doc = json.loads(path.read_text())
    fn(doc)
    path.write_bytes(json.dumps(doc, ensure_ascii=False).encode("utf-8", "surrogatepass"))


def int64_edges(doc):
    """The first image's id made -2**63, its annotation's too, and the second's 2**63 - 1."""
    for im, new in zip(doc["images"][:2], (-(2**63), 2**63 - 1)):
        for ann in doc["annotations"]:
            if ann["image_id"] == im["id"]:
                ann["image_id"] = new
        im["id"] = new


ODD_BUT_GOOD = {  # (edit, the fast reader keeps it: no fallback)
    "unicode names": (lambda d: [im.update(file_name=im["file_name"].replace(".jpg", "é🌿.jpg")) for im in d["images"]], True),
    "dots and colons inside names": (lambda d: d["images"][0].update(file_name="train_val2019/a..b:c.jpg"), True),
    "a name led by a dot folder": (lambda d: d["images"][1].update(file_name="./train_val2019/x.jpg"), True),
    "backslashes inside a name": (lambda d: d["images"][2].update(file_name="train_val2019\\x.jpg"), True),
    "extra fields everywhere": (lambda d: (d.update(info={"a": [[{"b": None}]]}, extra=[1.5, True, "x"]),
                                           d["images"][0].update(date="2019", location={"lat": 1.25})), True),
    "odd widths and heights": (lambda d: [d["images"][i].update(width=w) for i, w in
                                          enumerate(["7", 2.0, True, None, 0, -3, 2**63, 2**63 - 1, 10**30, [1], {}])], True),
    "no width or height": (lambda d: [im.pop("width") for im in d["images"]], True),
    "ids at the int64 edges": (int64_edges, True),
    "categories without names": (lambda d: [c.pop("name") for c in d["categories"]], True),
    "empty test annotations": (lambda d: d.update(annotations=[]), True),
    "not a number to json, but a NaN width": (lambda d: d["images"][0].update(width=float("nan")), False),
    "infinite width": (lambda d: d["images"][0].update(width=float("inf")), False),
    "a lone surrogate (raw) in a skipped field": (lambda d: d["images"][0].update(rights_holder="\ud800"), True),
}


@pytest.mark.parametrize("case", sorted(ODD_BUT_GOOD))
def test_odd_but_good_input_reads_as_the_standard_reader_reads_it(dataset, case):
    fn, kept = ODD_BUT_GOOD[case]
    split = "test" if case == "empty test annotations" else "train"
    edit(dataset, split, fn)
    classes = None if split == "train" else _read_checked(dataset / "train2019.json", "train", None)[4]
    fast, standard = both(dataset, split, classes)
    assert (fast is not None) == kept
    if fast is not None:
        same_rows(fast, standard)
    _, splits = load_dataset(dataset, check_files=False)
    assert splits[split].file_names == list(standard[1]) and np.array_equal(splits[split].sizes, standard[3])


def raw_edit(root, split, fn):
    path = root / f"{split}2019.json"
    path.write_bytes(fn(path.read_bytes()))


RAW = {  # bytes that json.load reads (or refuses) and msgspec refuses: the standard reader decides
    "a byte-order mark": lambda b: b"\xef\xbb\xbf" + b,
    "a surrogate pair split by an escape": lambda b: b.replace(b'"info": {}', b'"info": "\\ud83d\\u0041"'),
    "a float id": lambda b: b.replace(b'"id": 1000,', b'"id": 1000.0,', 1),
    "a boolean id": lambda b: b.replace(b'"id": 1000,', b'"id": true,', 1),
    "an id past int64": lambda b: b.replace(b'"id": 1000,', b'"id": 9223372036854775808,', 1),
    "a string id": lambda b: b.replace(b'"id": 1000,', b'"id": "1000",', 1),
    "a null list": lambda b: b.replace(b'"licenses": []', b'"licenses": [], "annotations": null'),
    "bad UTF-8 in a skipped field": lambda b: b.replace(b'"info": {}', b'"info": "\xff"'),
    "a control character in a skipped field": lambda b: b.replace(b'"info": {}', b'"info": "\t"'),
    "trailing text": lambda b: b + b" x",
    "images an object": lambda b: b.replace(b'"images": [', b'"images": {"a": [', 1),
}


def outcome(fn):
    try:
        split, classes = fn()
        return "ok", list(split.image_ids), list(split.file_names), split.sizes.tolist(), classes
    except DatasetError as e:
        return "error", str(e)


@pytest.mark.parametrize("case", sorted(RAW))
def test_raw_oddities_give_the_standard_readers_result_or_message(dataset, case):
    target = "test" if case in ("a null list", "images an object") else "val" if "control" in case else "train"
    raw_edit(dataset, target, RAW[case])
    path = dataset / SPLIT_FILES[target]
    classes = None if target == "train" else _read_checked(dataset / "train2019.json", "train", None)[4]
    assert _read_fast(path, target, classes) is None  # each one is the standard reader's to judge
    got = outcome(lambda: annotations.read_split(dataset, target, classes, check_files=False))

    def standard():
        rows = _read_checked(path, target, classes)
        return Split(target, path, dataset, rows[0], rows[1], rows[2], rows[3]), rows[4]

    assert got == outcome(standard)
    if case == "bad UTF-8 in a skipped field":
        assert got[0] == "error" and "not UTF-8 text" in got[1]


def test_nesting_at_every_depth_around_json_s_limit_gives_json_s_answer(dataset):
    """json.load reports "nested too deeply" a few levels before msgspec would: below the
    reader's NESTING msgspec reads, above it json decides, so no depth is read differently."""
    path = dataset / "test2019.json"
    good = path.read_bytes()
    classes = _read_checked(dataset / "train2019.json", "train", None)[4]
    seen = set()
    for depth in [3, 50, annotations.NESTING - 10, annotations.NESTING + 10, *range(960, 1010, 3)]:
        path.write_bytes(good.replace(b'"info": {}', b'"info": ' + b"[" * depth + b"]" * depth))
        got = outcome(lambda: annotations.read_split(dataset, "test", classes, check_files=False))
        rows = None
        try:
            rows = _read_checked(path, "test", classes)
        except DatasetError as e:
            assert got == ("error", str(e)) and "nested too deeply" in str(e)
        if rows is not None:
            assert got[0] == "ok" and got[1] == list(rows[0])
        seen.add(got[0])
    assert seen == {"ok", "error"}  # both sides of the limit were tried


def test_file_names_behave_as_the_list_of_str():
    names = ["a/b.jpg", "", "é/🌿.jpg", "\udc80x", "\ud800", "a" * 300]
    f = FileNames(names)
    assert len(f) == 6 and list(f) == names and f == names and names == f and f != names[:-1]
    assert [f[i] for i in range(-6, 6)] == names + names and f[1:4] == names[1:4] and f[np.int64(2)] == names[2]
    with pytest.raises(IndexError):
        f[6]
    assert pickle.loads(pickle.dumps(f)) == f and FileNames(f) == f
    assert f.first_bytes().tolist() == [ord("a"), -1, 0xC3, 0xED, 0xED, ord("a")]
    assert f.rows_holding([b".jpg", b"\xed"]).tolist() == [0, 2, 3, 4]
    assert isinstance(f.data, bytes) and f.offsets.dtype == np.int64  # two objects, whatever the number of names
    split = Split("t", None, Path("."), np.arange(2), ["x.jpg", "y.jpg"], None, np.zeros((2, 2), np.int64))
    assert isinstance(split.file_names, FileNames) and str(split.path(1)) == "y.jpg"


@pytest.fixture
def holes(tmp_path):
    """A dataset with missing image files (rows 1, 4, 5, 8, 11, 12, 17) and one whose name is
    too long for the system (row 14): an error at stat, not a missing file."""
    root = make_dataset(tmp_path / "ds", per_class=(8, 3, 3))
    _, splits = load_dataset(root)
    split = splits["train"]
    for r in (1, 4, 5, 8, 11, 12, 17):
        (root / split.file_names[r]).unlink()
    return split


def looks(split, world):
    return [_look_for_files(split, range(rank, len(split), world)) for rank in range(world)]


def message(split, world):
    with pytest.raises(DatasetError) as e:
        _report_files(split, looks(split, world))
    return str(e.value)


def test_the_file_check_split_over_processes_reports_what_one_process_reports(holes):
    one = message(holes, 1)
    assert "7 of 24 image files are missing" in one and one.count(", ") == 4  # the first 5 of 7
    assert all(message(holes, world) == one for world in (2, 3, 5, 24, 30))


def test_an_error_at_stat_is_reported_by_every_process_the_lowest_row_first(holes):
    names = list(holes.file_names)
    for r in (14, 20):
        names[r] = "x" * 300 + "/" + names[r]  # ENAMETOOLONG: not a missing file
    split = Split(holes.name, holes.json_path, holes.root, holes.image_ids, names, holes.labels, holes.sizes)
    one = message(split, 1)
    assert f"image id {split.image_ids[14]} has file_name" in one and "File name too long" in one
    assert all(message(split, world) == one for world in (2, 3, 7))
