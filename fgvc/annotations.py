"""The iNat 2019 reader: train2019.json, val2019.json, test2019.json under one dataset root.

Schema (COCO-like): {"images": [{id, file_name, width, height, ...}],
"annotations": [{id, image_id, category_id}], "categories": [{id, name, ...}]}.
Image paths are `root/file_name`. Nothing here assumes that images and annotations are parallel
lists or that category ids are 0..K-1: annotations are joined on image_id and category ids are
mapped to class indices in sorted id order (`Classes`). Every problem is reported as a one-line
`DatasetError` naming the file and the entry, before any training starts.
"""
import errno
import json
import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np

from .errors import DatasetError

SPLIT_FILES = {"train": "train2019.json", "val": "val2019.json", "test": "test2019.json"}


@dataclass(frozen=True)
class Classes:
    """Category ids <-> class indices, in sorted id order. Travels with every checkpoint, with the
    names (and supercategories, where the json has them) that prediction prints."""

    ids: tuple  # category id of class index i
    names: tuple = ()  # the category's 'name' of class index i ('' where absent); () when not read
    supercategories: tuple = ()  # its 'supercategory' ('' where absent); () when no category has one

    def index(self):
        return {cid: i for i, cid in enumerate(self.ids)}

    def __len__(self):
        return len(self.ids)


@dataclass
class Split:
    """One split, sorted by image id. `labels` are class indices, None for an unlabelled split."""

    name: str
    json_path: Path
    root: Path
    image_ids: np.ndarray  # int64 (N,)
    file_names: list  # str, relative to root
    labels: np.ndarray | None  # int64 (N,) class indices
    sizes: np.ndarray  # int64 (N, 2): (width, height) from the json, -1 where absent

    def __len__(self):
        return len(self.image_ids)

    def path(self, i):
        return self.root / self.file_names[i]


INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


def _is_int(x):
    return isinstance(x, int) and not isinstance(x, bool)


def _load_json(path):
    try:
        if not path.is_file():
            raise DatasetError(f"{path}: file not found")
        with open(path, "rb") as f:
            return json.load(f)
    except OSError as e:  # a --data path too long, no permission: an input, not a failed write
        raise DatasetError(f"{str(path)[:200]}: cannot read it ({e.strerror or e})") from None
    except json.JSONDecodeError as e:
        raise DatasetError(f"{path}: malformed JSON at line {e.lineno} column {e.colno}: {e.msg}") from None
    except UnicodeDecodeError as e:
        raise DatasetError(f"{path}: not UTF-8 text ({e.reason})") from None
    except RecursionError:
        raise DatasetError(f"{path}: JSON nested too deeply to be a dataset file") from None


def _entries(doc, key, path, required):
    if not isinstance(doc, dict):
        raise DatasetError(f"{path}: top level is {type(doc).__name__}, expected an object")
    if key not in doc:
        if required:
            raise DatasetError(f"{path}: missing key '{key}'")
        return None
    entries = doc[key]
    if not isinstance(entries, list):
        raise DatasetError(f"{path}: '{key}' is {type(entries).__name__}, expected a list")
    return entries


def _field(entry, key, path, where, kind=int):
    if not isinstance(entry, dict):
        raise DatasetError(f"{path}: {where} is {type(entry).__name__}, expected an object")
    if key not in entry:
        raise DatasetError(f"{path}: {where} has no '{key}': {_short(entry)}")
    value = entry[key]
    ok = _is_int(value) if kind is int else isinstance(value, kind)
    if not ok:
        raise DatasetError(
            f"{path}: {where} has '{key}' of type {type(value).__name__} ({repr(value)[:60]}), expected {kind.__name__}"
        )
    if kind is int and not INT64_MIN <= value <= INT64_MAX:
        raise DatasetError(f"{path}: {where} has '{key}' {value}, outside the int64 range of ids")
    return value


def _short(entry, n=120):
    s = json.dumps(entry)
    return s if len(s) <= n else s[: n - 3] + "..."


def _check_file_name(name, path, where):
    p = PurePosixPath(name.replace("\\", "/"))
    if not name or p.is_absolute() or name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        raise DatasetError(f"{path}: {where} has file_name {name!r}: absolute paths are refused")
    if ".." in p.parts:
        raise DatasetError(f"{path}: {where} has file_name {name!r}: it climbs out of the dataset root")
    if "\0" in name:
        raise DatasetError(f"{path}: {where} has file_name {name[:80]!r}: a NUL byte is not valid in a path")
    try:
        os.fsencode(name)
    except UnicodeEncodeError as e:
        raise DatasetError(f"{path}: {where} has file_name {name[:80]!r}: not a valid path here ({e.reason})") from None


def read_categories(path, doc):
    """Sorted category ids of a json document (its 'categories' list), or None when absent."""
    cats = _entries(doc, "categories", path, required=False)
    if cats is None:
        return None
    ids = [_field(c, "id", path, f"categories[{i}]") for i, c in enumerate(cats)]
    seen = set()
    for i, cid in enumerate(ids):
        if cid in seen:
            raise DatasetError(f"{path}: categories[{i}] repeats category id {cid}")
        seen.add(cid)
    return sorted(ids)


def category_names(categories, ids):
    """Classes of the sorted category `ids`, with each one's name and supercategory from the json's
    (already checked) `categories` entries; a missing or non-text field is ''."""
    by_id = {c["id"]: c for c in categories}
    text = lambda c, key: c.get(key) if isinstance(c.get(key), str) else ""
    supers = tuple(text(by_id[i], "supercategory") for i in ids)
    return Classes(ids, tuple(text(by_id[i], "name") for i in ids), supers if any(supers) else ())


def read_split(root, name, classes=None, check_files=True):
    """Read one split. `classes` (from train) maps category ids; None means: this is train itself.

    Returns (split, classes). Train/val must have exactly one annotation per image; test may have
    none, in which case labels is None.
    """
    root = Path(root)
    path = root / SPLIT_FILES[name]
    doc = _load_json(path)
    images = _entries(doc, "images", path, required=True)
    if not images:
        raise DatasetError(f"{path}: 'images' is empty")
    labelled = name != "test"
    annotations = _entries(doc, "annotations", path, required=labelled)
    cat_ids = read_categories(path, doc)
    if classes is None:
        if cat_ids is None:
            raise DatasetError(f"{path}: missing key 'categories'")
        if not cat_ids:
            raise DatasetError(f"{path}: 'categories' is empty")
        classes = category_names(doc["categories"], tuple(cat_ids))
    known = classes.index()

    ids, names, sizes, row = [], [], [], {}
    for i, im in enumerate(images):
        where = f"images[{i}]"
        image_id = _field(im, "id", path, where)
        file_name = _field(im, "file_name", path, f"{where} (id {image_id})", kind=str)
        _check_file_name(file_name, path, f"{where} (id {image_id})")
        if image_id in row:
            raise DatasetError(f"{path}: {where} repeats image id {image_id} (first at images[{row[image_id]}])")
        row[image_id] = i
        ids.append(image_id)
        names.append(file_name)
        sizes.append([v if _is_int(v) and 0 < v <= INT64_MAX else -1 for v in (im.get("width"), im.get("height"))])

    labels = None
    if annotations:  # test files may carry an empty list
        labels = np.full(len(ids), -1, dtype=np.int64)
        for j, ann in enumerate(annotations):
            where = f"annotations[{j}]"
            image_id = _field(ann, "image_id", path, where)
            category_id = _field(ann, "category_id", path, where)
            if image_id not in row:
                raise DatasetError(f"{path}: {where} refers to unknown image id {image_id}")
            if category_id not in known:
                lacks = "train2019.json" if name != "train" else "the categories list"
                raise DatasetError(f"{path}: {where} has category id {category_id}, which {lacks} lacks")
            r = row[image_id]
            if labels[r] >= 0:
                raise DatasetError(f"{path}: {where} is a second annotation for image id {image_id}")
            labels[r] = known[category_id]
        missing = np.flatnonzero(labels < 0)
        if len(missing):
            first = ", ".join(str(ids[r]) for r in missing[:5])
            raise DatasetError(f"{path}: {len(missing)} images have no annotation (first image ids: {first})")
    elif labelled:
        raise DatasetError(f"{path}: 'annotations' is empty")

    order = np.argsort(np.asarray(ids, dtype=np.int64), kind="stable")
    split = Split(
        name=name,
        json_path=path,
        root=root,
        image_ids=np.asarray(ids, dtype=np.int64)[order],
        file_names=[names[r] for r in order],
        labels=None if labels is None else labels[order],
        sizes=np.asarray(sizes, dtype=np.int64).reshape(-1, 2)[order],
    )
    if check_files:
        check_image_files(split)
    return split, classes


def check_image_files(split):
    """Fail at start, not at step 30,000: every listed image file must exist.

    Nothing at the path (or a link to nothing) is a missing file: the dataset is incomplete and no
    stage starts. Something there that cannot be decoded (a directory, no read permission, bad
    bytes) is a bad image: every stage skips and counts it (see datasets.ImageDataset).
    """
    missing = [f for i, f in enumerate(split.file_names) if not _file_exists(split, i)]
    if missing:
        first = ", ".join(missing[:5])
        raise DatasetError(
            f"{split.json_path}: {len(missing)} of {len(split)} image files are missing under {split.root} "
            f"(first: {first})"
        )


def _file_exists(split, i):
    """Is there something at image i's path (a link followed)? An error of the system on the way
    (a name too long, no permission to search a folder) names the json file and the entry."""
    try:
        os.stat(os.path.join(split.root, split.file_names[i]))
        return True
    except OSError as e:
        if e.errno in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP):
            return False
        name = split.file_names[i]
        raise DatasetError(f"{split.json_path}: image id {split.image_ids[i]} has file_name "
                           f"{name if len(name) <= 80 else name[:77] + '...'!r}: {e.strerror or e}") from None


def load_dataset(root, splits=("train", "val", "test"), check_files=True):
    """Read train (always: it defines the classes and the prior) and the requested splits.

    Returns (classes, {name: Split}). Val and test image ids must not collide with train's.
    """
    root = Path(root)
    try:
        found = root.is_dir()
    except OSError as e:  # a --data path too long: an input, not a failed write
        raise DatasetError(f"{str(root)[:200]}: cannot read it ({e.strerror or e})") from None
    if not found:
        raise DatasetError(f"{root}: dataset root not found (expected {', '.join(SPLIT_FILES.values())})")
    train, classes = read_split(root, "train", check_files=check_files and "train" in splits)
    out = {"train": train}
    for name in splits:
        if name != "train":
            out[name], _ = read_split(root, name, classes, check_files=check_files)
    seen = {}
    for name, split in out.items():
        for other, ids in seen.items():
            common = np.intersect1d(ids, split.image_ids)
            if len(common):
                raise DatasetError(
                    f"{split.json_path}: image id {common[0]} is also in {SPLIT_FILES[other]} "
                    f"({len(common)} shared ids)"
                )
        seen[name] = split.image_ids
    return classes, out


def class_counts(train, num_classes):
    """Per-class train image counts (int64, K)."""
    return np.bincount(train.labels, minlength=num_classes).astype(np.int64)


def class_prior(counts):
    """The training class prior p(c) = n_c / sum(n); classes without images get the smallest positive."""
    counts = np.asarray(counts, dtype=np.float64)
    prior = counts / counts.sum()
    if (prior <= 0).any():
        prior = np.where(prior > 0, prior, prior[prior > 0].min())
        prior = prior / prior.sum()
    return prior
