"""Other datasets in this project's layout, so that every stage runs on them unchanged.

    python3 data/prepare.py inat2017 SRC --out DIR        # also inat2018, inat2021, inat2021-mini
    python3 data/prepare.py cub SRC --out DIR [--val-per-class 3 | --val test]
    python3 data/prepare.py folder SRC --out DIR [--val-per-class 3] [--test-per-class 3]

Reads SRC, one of:
    inat2017        train2017.json, val2017.json, test2017.json, train_val_images/, test2017/
    inat2018        train2018.json, val2018.json, test2018.json, train_val2018/, test2018/
    inat2021        train.json, val.json, public_test.json, train/, val/, public_test/
    inat2021-mini   train_mini.json, val.json, public_test.json, train_mini/, val/, public_test/
    cub             CUB_200_2011 as unpacked: images.txt, image_class_labels.txt, train_test_split.txt,
                    classes.txt, bounding_boxes.txt, images/
    folder          SRC/<class name>/**/<image> (any depth); when SRC is named `train`, its siblings
                    SRC/../val and SRC/../test are used where they exist (test: class folders, or
                    loose images without labels)
Writes DIR/train2019.json, DIR/val2019.json, DIR/test2019.json (the schema fgvc/annotations.py reads),
    the images under DIR (a relative symlink per top folder by default; --link hard, or --copy),
    DIR/truth/test_labels.csv (id,category_id) where the test labels are known (cub, folder),
    DIR/truth/boxes.csv (image_id,x,y,w,h) for cub, so that the coarse stage reports localization.

Splits: the iNat years keep their own train/val/test (test without labels) and their ids. cub keeps
the official train/test split and its ids; val is drawn from train, --val-per-class per class with
--seed, or is the test split (--val test; test2019.json then lists the same images under ids
+ TEST_ID_OFFSET, since the reader refuses ids shared by two splits). folder: category ids 0..K-1
in sorted class-name order, image ids 0..N-1; val and test drawn per class with --seed unless
sibling folders give them.

Everything is read and checked first; a problem ends with one line naming the file and the entry
(exit code 2) and nothing written. The output is built in DIR.tmp-<pid>, read back with the
project's reader (every image file was found once, when read: not looked for again), and renamed
to DIR: DIR is complete or absent. DIR/.prepared.json lists every entry prepare wrote;
--overwrite replaces only a DIR that holds nothing else, and never a DIR that is, contains or lies
inside a source folder. The tree a killed run left beside DIR (DIR.tmp-<pid>,
DIR.old-<pid>) is removed by the next run (the previous dataset put back if DIR is gone). SIGINT
and SIGTERM end it with one line and exit 130 / 143, DIR as it was.
"""
import argparse
import csv
import errno
import fcntl
import gc
import hashlib
import json
import os
import re
import shutil
import signal
import stat
import sys
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from itertools import chain
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]; sys.path.insert(0, str(ROOT))

import msgspec
import numpy as np

from fgvc.annotations import (INT64_MAX, INT64_MIN, NESTING, SPLIT_FILES, _Annotation, _check_file_name, _entries, _field, _Image,
                              _is_int, _is_utf8, _load_json, _nesting_limit, load_dataset)
from fgvc import interrupt
from fgvc.errors import DatasetError, UserError, fail
from fgvc.image import BadImage, read_rgb
from fgvc.paths import resolve

INAT_FILES = {  # format: (train, val, test) json names in SRC
    "inat2017": ("train2017.json", "val2017.json", "test2017.json"),
    "inat2018": ("train2018.json", "val2018.json", "test2018.json"),
    "inat2021": ("train.json", "val.json", "public_test.json"),
    "inat2021-mini": ("train_mini.json", "val.json", "public_test.json"),
}
FORMATS = (*INAT_FILES, "cub", "folder")
IMAGE_KEYS = ("id", "file_name", "width", "height", "license", "rights_holder")  # date, location: dropped
EXTRA_KEYS = IMAGE_KEYS[4:]  # kept as they are in the json
CUB_FILES = ("images.txt", "image_class_labels.txt", "train_test_split.txt", "classes.txt", "bounding_boxes.txt")
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}
TEST_ID_OFFSET = 1_000_000  # cub --val test: test image id = val image id + this
BOX_SLACK = 1.0  # px a box may pass the image edge (CUB's boxes are integers, some 1-based)


@dataclass(slots=True)
class Image:
    id: int
    file_name: str  # relative to DIR, '/'-separated; its first part is a key of Prepared.links
    category_id: int | None  # None: unlabelled (test)
    width: int = -1
    height: int = -1
    extra: dict = field(default_factory=dict)  # other official fields kept in the json (license, ...)


MISSING = msgspec.UNSET  # an extra field the image entry lacks


@dataclass
class Table:
    """One split's images as columns, in the order written (millions of rows: no object per image)."""

    ids: list  # int
    file_names: list  # str, as Image.file_name
    category_ids: list  # int, or None where unlabelled
    widths: list  # as Image.width
    heights: list
    extras: dict  # key of EXTRA_KEYS -> its value per image, MISSING where the entry lacks it; absent: no image has it

    @classmethod
    def of(cls, images):
        """The Table of a list of Image (cub, folder, iNat read entry by entry); a Table as it is."""
        if isinstance(images, Table):
            return images
        extras = {k: [im.extra.get(k, MISSING) for im in images] for k in EXTRA_KEYS if any(k in im.extra for im in images)}
        return cls([im.id for im in images], [im.file_name for im in images], [im.category_id for im in images],
                   [im.width for im in images], [im.height for im in images], extras)

    def __len__(self):
        return len(self.ids)

    def labelled(self):
        return all(c is not None for c in self.category_ids)


@dataclass
class Prepared:
    """A dataset in memory: everything prepare writes, checked, before anything is written."""

    categories: list  # [{id, name, ...}], written to train and val json
    splits: dict  # "train" / "val" / "test" -> [Image] or Table (main makes every one a Table before writing)
    links: dict  # top folder (or file) name under DIR -> its source path
    boxes: dict = field(default_factory=dict)  # image id -> (x, y, w, h)
    skipped: list = field(default_factory=list)  # (path, why)
    notes: list = field(default_factory=list)  # lines for the summary


# ---------------------------------------------------------------- iNat 2017 / 2018 / 2021

def read_inat(src, fmt):
    """The official json of one iNat year. Their schema is 2019's (images, annotations, categories);
    2017 and 2018 add `supercategory`, 2021 taxonomy fields, `common_name`, `image_dir_name`, and
    date and location per image, which are dropped. Ids and the official splits are kept.

    Read as the project's reader reads (fgvc/annotations.py): msgspec into typed structs, checked a
    whole column at a time (iNat 2021's 2.7 million images: no dict or object per image), and,
    wherever that finds anything amiss or anything msgspec reads otherwise than json, again with
    the standard library's json and a check of every entry in file order, which names the problem."""
    return read_inat_fast(src, fmt) or read_inat_checked(src, fmt)


def inat_categories(doc, train_path):
    """(categories, {category id: its row}) of the train json, checked."""
    categories = _entries(doc, "categories", train_path, required=True)
    if not categories:
        raise DatasetError(f"{train_path}: 'categories' is empty")
    known = {}
    for i, c in enumerate(categories):
        cid = _field(c, "id", train_path, f"categories[{i}]")
        if cid in known:
            raise DatasetError(f"{train_path}: categories[{i}] repeats category id {cid} (first at categories[{known[cid]}])")
        known[cid] = i
    return categories, known


def read_inat_checked(src, fmt):
    """read_inat with json.load and a check of each entry: the first problem in file order is the one named."""
    names = INAT_FILES[fmt]
    docs = [(name, src / name, _load_json(src / name)) for name in names]
    categories, known = inat_categories(docs[0][2], docs[0][1])
    splits, first_split = {}, {}
    for split, (name, path, doc) in zip(("train", "val", "test"), docs):
        splits[split] = inat_split(src, path, doc, split, known, names[0])
        for im in splits[split]:
            if im.id in first_split:
                raise DatasetError(f"{path}: image id {im.id} is also in {first_split[im.id]}")
            first_split[im.id] = name
    tops = sorted({im.file_name.split("/")[0] for images in splits.values() for im in images})
    for top in tops:
        if top in RESERVED:
            raise DatasetError(f"{src}: an image file_name starts with {top!r}, a name the output needs itself")
    cats = [dict(c) for c in sorted(categories, key=lambda c: c["id"])]
    return Prepared(cats, splits, {top: src / top for top in tops})


RESERVED = (*SPLIT_FILES.values(), "truth")  # names under DIR that prepare writes itself


def inat_split(src, path, doc, split, known, train_name):
    """[Image] of one official json, checked: ids, file names, one label per image, the files.
    An entry of plain ints and strs is taken as it is; any other goes through _field, which names
    what is wrong with it (millions of entries: the common case without a call per field)."""
    images = _entries(doc, "images", path, required=True)
    if not images:
        raise DatasetError(f"{path}: 'images' is empty")
    out, row, names = [], {}, set()
    for i, im in enumerate(images):
        image_id, name = (im.get("id"), im.get("file_name")) if type(im) is dict else (None, None)
        if type(image_id) is not int or not INT64_MIN <= image_id <= INT64_MAX or type(name) is not str:
            image_id = _field(im, "id", path, f"images[{i}]")
            name = _field(im, "file_name", path, f"images[{i}] (id {image_id})", kind=str)
        _check_file_name(name, path, f"images[{i}] (id {image_id})")
        name = name.replace("\\", "/")
        if image_id in row:
            raise DatasetError(f"{path}: images[{i}] (id {image_id}) repeats image id {image_id} (first at images[{row[image_id]}])")
        if name in names:
            first = next(k for k, other in enumerate(out) if other.file_name == name)
            raise DatasetError(f"{path}: images[{i}] (id {image_id}) lists file {name} again (first at images[{first}])")
        row[image_id] = i
        names.add(name)
        w, h = im.get("width"), im.get("height")
        extra = {}
        for k in EXTRA_KEYS:
            if k in im:
                extra[k] = im[k]
        out.append(Image(image_id, name, None, w if type(w) is int or _is_int(w) else -1,
                         h if type(h) is int or _is_int(h) else -1, extra))
    del names

    annotations = _entries(doc, "annotations", path, required=split != "test") or []
    if not annotations and split != "test":
        raise DatasetError(f"{path}: 'annotations' is empty")
    for j, ann in enumerate(annotations):  # a test file with labels gives truth/test_labels.csv
        image_id, category_id = (ann.get("image_id"), ann.get("category_id")) if type(ann) is dict else (None, None)
        if (type(image_id) is not int or type(category_id) is not int
                or not INT64_MIN <= image_id <= INT64_MAX or not INT64_MIN <= category_id <= INT64_MAX):
            image_id = _field(ann, "image_id", path, f"annotations[{j}]")
            category_id = _field(ann, "category_id", path, f"annotations[{j}]")
        if image_id not in row:
            raise DatasetError(f"{path}: annotations[{j}] refers to unknown image id {image_id}")
        if category_id not in known:
            lacks = train_name if split != "train" else "its categories list"
            raise DatasetError(f"{path}: annotations[{j}] has category id {category_id}, which {lacks} lacks")
        im = out[row[image_id]]
        if im.category_id is not None:
            raise DatasetError(f"{path}: annotations[{j}] is a second annotation for image id {image_id}")
        im.category_id = category_id
    unlabelled = [im.id for im in out if im.category_id is None]
    if annotations and unlabelled:
        raise DatasetError(f"{path}: {len(unlabelled)} images have no annotation (first image ids: {unlabelled[:5]})")

    missing = missing_files(src, out, path)
    if missing:
        i = missing[0]
        raise DatasetError(f"{path}: {len(missing)} of {len(out)} image files are missing under {src} "
                           f"(first: images[{i}] (id {out[i].id}) {out[i].file_name})")
    return out


def missing_files(src, images, path):
    """Rows of `images` (sorted) whose file_name is not a file under src (a link followed), as
    is_file says of each: one listing per folder finds the plain files, and is_file runs only on
    the rest (links, anything the listing does not show). The lowest row with an error of the
    system (is_file's) is the one reported."""
    root, by_folder = os.fspath(src), defaultdict(list)
    for i, im in enumerate(images):
        by_folder[im.file_name.rpartition("/")[0]].append(i)
    missing, errors = [], []
    for folder, rows in by_folder.items():
        try:
            with os.scandir(os.path.join(root, folder)) as entries:
                plain = {e.name for e in entries if e.is_file(follow_symlinks=False)}
        except OSError:  # not there, not a folder, not readable: is_file decides for each
            plain = set()
        start = len(folder) + 1 if folder else 0
        for i in rows:
            name = images[i].file_name
            if name[start:] in plain:
                continue
            try:
                if not is_file(root, name, path, f"images[{i}] (id {images[i].id})"):
                    missing.append(i)
            except DatasetError as e:
                errors.append((i, e))
    if errors:
        raise min(errors, key=lambda e: e[0])[1]
    return sorted(missing)


def is_file(root, name, path, where):
    """Is root/name a file (a link followed)? As Path.is_file, without building a Path: an error of
    the system on the way (a name too long) names the json file and the entry."""
    try:
        return stat.S_ISREG(os.stat(os.path.join(root, name)).st_mode)
    except ValueError:  # a NUL byte: refused by _check_file_name before this
        return False
    except OSError as e:
        if e.errno in (errno.ENOENT, errno.ENOTDIR, errno.EBADF, errno.ELOOP):
            return False
        shown = name if len(name) <= 80 else name[:77] + "..."
        raise DatasetError(f"{path}: {where} has file_name {shown!r}: {e.strerror or e}") from None


# ---------------------------------------------------------------- iNat, the fast reading (msgspec)

class _SrcImage(_Image):
    """The reader's image entry, and the official fields prepare keeps beside it."""

    license: Any = MISSING  # EXTRA_KEYS: kept as json.load gives them
    rights_holder: Any = MISSING


class _SrcFile(msgspec.Struct):
    """What prepare keeps of an official json; every other field (date, location, info) is skipped unbuilt."""

    images: list[_SrcImage]
    annotations: list[_Annotation] | msgspec.UnsetType = MISSING
    categories: msgspec.Raw = msgspec.Raw()  # its json text, read by the standard json (train's only)


_SRC_DECODER = msgspec.json.Decoder(_SrcFile)
NAN_VALUES = ((b": NaN", b": null"), (b":NaN", b":null"))  # 2021's NaN locations (json.dump's), which msgspec refuses
EXTRA_TYPES = {int, str, float, bool, msgspec.UnsetType}  # of an extra field that json.load and a NaN-less read agree on


def read_inat_fast(src, fmt):
    """read_inat's Prepared, or None wherever read_inat_checked would raise or read anything otherwise."""
    names = INAT_FILES[fmt]
    docs = []
    for name in names:
        decoded = decode_fast(src / name)
        if decoded is None:
            return None
        docs.append(decoded)
    train_path = src / names[0]
    try:
        raw = bytes(docs[0][0].categories)
        if not raw or (docs[0][1] and b"null" in raw):  # absent; or a null that was a NaN
            return None
        categories, known = inat_categories({"categories": json.loads(raw)}, train_path)
    except (ValueError, RecursionError, DatasetError):
        return None
    splits, folders = {}, set()
    for split, name, (doc, nan) in zip(("train", "val", "test"), names, docs):
        read = inat_split_fast(src, src / name, doc, split, known, nan)
        if read is None:
            return None
        splits[split], split_folders = read
        folders |= split_folders
        doc.images = doc.annotations = None
    ids = np.sort(np.concatenate([np.asarray(t.ids, np.int64) for t in splits.values()]))
    if (ids[1:] == ids[:-1]).any():  # an id in two splits
        return None
    tops = {f.partition("/")[0] for f in folders if f}
    if "" in folders:  # files at the top of SRC
        tops |= {n for t in splits.values() for n in t.file_names if "/" not in n}
    if tops & set(RESERVED):
        return None
    cats = [dict(c) for c in sorted(categories, key=lambda c: c["id"])]
    return Prepared(cats, splits, {top: src / top for top in sorted(tops)})


def decode_fast(path):
    """(_SrcFile, whether a NaN was read as null) of one json, or None where msgspec cannot read it
    as json.load would: not there, not UTF-8, nested too deeply, malformed, a field of another type."""
    try:
        raw = path.read_bytes()
    except OSError:
        return None
    if not _is_utf8(raw):
        return None
    nan = b"NaN" in raw
    if nan:  # read as null; read_inat_fast refuses every kept value such a null could have changed
        for a, b in NAN_VALUES:
            raw = raw.replace(a, b)
    try:
        with _nesting_limit(NESTING):
            return _SRC_DECODER.decode(raw), nan
    except (msgspec.MsgspecError, ValueError, RecursionError):
        return None


def inat_split_fast(src, path, doc, split, known, nan):
    """(Table, the folders its files are in) of one official json, or None wherever inat_split
    would raise. `nan`: the json had a NaN, read as null: None too where that could show."""
    images = doc.images
    n = len(images)
    if not n:
        return None
    ids = np.fromiter((im.id for im in images), np.int64, n)
    order = np.argsort(ids, kind="stable")
    if (ids[order][1:] == ids[order][:-1]).any():
        return None
    names = clean_names([im.file_name for im in images], path, nan)
    if names is None:
        return None
    unique = set(names)
    if len(unique) != n:
        return None
    sizes = []
    for key in ("width", "height"):
        values = [getattr(im, key) for im in images]
        sizes.append(values if set(map(type, values)) <= {int} else [v if type(v) is int else -1 for v in values])
    extras = {}
    for key in EXTRA_KEYS:
        values = [getattr(im, key) for im in images]
        types = set(map(type, values))
        if types == {msgspec.UnsetType}:
            continue
        if nan and (types - EXTRA_TYPES or any(":null" in v or ": null" in v for v in values if type(v) is str)):
            return None
        extras[key] = values
    categories = inat_labels(doc.annotations, ids, order, known, split)
    if categories is None:
        return None
    folders = {name.rpartition("/")[0] for name in names}
    if not files_found(src, folders, unique):
        return None
    return Table(ids.tolist(), names, categories, *sizes, extras), folders


def clean_names(names, path, nan):
    """`names` with '\\' made '/', or None where _check_file_name refuses one (or a NaN read as null could be in one)."""
    joined = "\0".join(names)
    if nan and (":null" in joined or ": null" in joined):
        return None
    if (joined.isascii() and joined.count("\0") == len(names) - 1 and "" not in (names[0][:1], names[-1][:1])
            and names[0][0] != "/" and not any(s in joined for s in (":", "\\", "..", "\0\0", "\0/"))):
        return names  # no name that any refusal of _check_file_name fits, nor one to rewrite
    try:
        for name in names:
            _check_file_name(name, path, "")
    except DatasetError:
        return None
    return [name.replace("\\", "/") for name in names]


def inat_labels(annotations, ids, order, known, split):
    """Category id per image (None each: unlabelled test), or None unless every image has exactly
    one annotation, of a known image id and a known category (`order` sorts `ids`)."""
    if annotations is MISSING or not annotations:
        return None if split != "test" else [None] * len(ids)
    if len(annotations) != len(ids):  # fewer: an image without one; more: a second one, or an unknown image
        return None
    image_id = np.fromiter((a.image_id for a in annotations), np.int64, len(annotations))
    category = np.fromiter((a.category_id for a in annotations), np.int64, len(annotations))
    by_id = ids[order]
    at = np.searchsorted(by_id, image_id).clip(max=len(ids) - 1)
    cats = np.sort(np.fromiter(known, np.int64, len(known)))
    if (by_id[at] != image_id).any() or (cats[np.searchsorted(cats, category).clip(max=len(cats) - 1)] != category).any():
        return None
    rows = order[at]
    if np.bincount(rows, minlength=len(ids)).max() > 1:
        return None
    out = np.empty(len(ids), np.int64)
    out[rows] = category
    return out.tolist()


def files_found(src, folders, names):
    """Is each of `names` (a set, emptied here) a file under src, a link followed, as is_file says?
    One listing per folder finds the plain files; is_file looks only at the rest. False at the
    first that is not, or on an error of the system: read_inat_checked then names it."""
    root = os.fspath(src)
    for folder in folders:
        prefix = folder + "/" if folder else ""
        try:
            with os.scandir(os.path.join(root, folder)) as entries:
                names.difference_update([prefix + e.name for e in entries if e.is_file(follow_symlinks=False)])
        except OSError:  # not there, not a folder, not readable: is_file decides for each
            pass
    try:
        return all(is_file(root, name, "", "") for name in names)
    except DatasetError:
        return False


# ---------------------------------------------------------------- CUB-200-2011

def read_table(path, columns):
    """Lines of a CUB txt file as (line number, fields); `columns` names them for the error."""
    if not path.is_file():
        raise DatasetError(f"{path}: file not found")
    rows = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, start=1):
            if not line.strip():
                continue
            fields = line.split()
            if len(fields) != len(columns):
                raise DatasetError(f"{path}: line {n} is not '{' '.join(f'<{c}>' for c in columns)}': {line.strip()[:80]!r}")
            rows.append((n, fields))
    if not rows:
        raise DatasetError(f"{path}: empty")
    return rows


def as_number(value, kind, path, n, column):
    try:
        return kind(value)
    except ValueError:
        raise DatasetError(f"{path}: line {n} has {column} {value!r}, expected {'an integer' if kind is int else 'a number'}") from None


def read_keyed(path, columns, known, kinds):
    """{image id: (line, values)} of a CUB file keyed by image id; every id of images.txt (`known`) once."""
    out = {}
    for n, fields in read_table(path, columns):
        key = as_number(fields[0], int, path, n, columns[0])
        if key not in known:
            raise DatasetError(f"{path}: line {n} refers to image id {key}, which images.txt lacks")
        if key in out:
            raise DatasetError(f"{path}: line {n} lists image id {key} again (first at line {out[key][0]})")
        out[key] = (n, [as_number(v, k, path, n, c) for v, k, c in zip(fields[1:], kinds, columns[1:])])
    absent = [k for k in known if k not in out]
    if absent:
        raise DatasetError(f"{path}: no line for {len(absent)} image ids of images.txt (first: {absent[:5]})")
    return out


def read_cub(src, val, val_per_class, seed):
    """CUB-200-2011 with its official train/test split, its boxes, and val drawn from train (or = test)."""
    for name in CUB_FILES:
        if not (src / name).is_file():
            raise DatasetError(f"{src / name}: file not found (is {src} the unpacked CUB_200_2011 folder?)")
    classes = {}
    for n, fields in read_table(src / "classes.txt", ("class id", "class name")):
        cid = as_number(fields[0], int, src / "classes.txt", n, "class id")
        if cid in classes:
            raise DatasetError(f"{src / 'classes.txt'}: line {n} lists class id {cid} again")
        classes[cid] = fields[1]
    files, by_name = {}, {}
    path = src / "images.txt"
    for n, (i, name) in read_table(path, ("image id", "path")):
        i = as_number(i, int, path, n, "image id")
        if i in files:
            raise DatasetError(f"{path}: line {n} lists image id {i} again (first at line {files[i][0]})")
        if name in by_name:
            raise DatasetError(f"{path}: line {n} lists {name} again (first at line {by_name[name]})")
        _check_file_name(name, path, f"line {n}")
        files[i], by_name[name] = (n, name), n
    labels = read_keyed(src / "image_class_labels.txt", ("image id", "class id"), files, (int,))
    for i, (n, (cid,)) in labels.items():
        if cid not in classes:
            raise DatasetError(f"{src / 'image_class_labels.txt'}: line {n} has class id {cid}, which classes.txt lacks")
    is_train = read_keyed(src / "train_test_split.txt", ("image id", "is training image"), files, (int,))
    for i, (n, (flag,)) in is_train.items():
        if flag not in (0, 1):
            raise DatasetError(f"{src / 'train_test_split.txt'}: line {n} has is_training_image {flag}, expected 0 or 1")
    boxes = read_keyed(src / "bounding_boxes.txt", ("image id", "x", "y", "width", "height"), files, (float,) * 4)

    images = {}
    for i in sorted(files):
        n, name = files[i]
        where = f"{path}: line {n} (image id {i})"
        try:
            h, w = read_rgb(src / "images" / name).shape[:2]
        except BadImage as e:
            raise DatasetError(f"{where}: images/{name}: {'not found' if not (src / 'images' / name).exists() else e.reason}") from None
        bn, (x, y, bw, bh) = boxes[i]
        if bw <= 0 or bh <= 0 or x < 0 or y < 0 or x + bw > w + BOX_SLACK or y + bh > h + BOX_SLACK:
            raise DatasetError(f"{src / 'bounding_boxes.txt'}: line {bn} (image id {i}): box x={x:g} y={y:g} "
                               f"w={bw:g} h={bh:g} lies outside the {w} x {h} image images/{name}")
        images[i] = Image(i, f"images/{name}", labels[i][1][0], w, h)

    train = [images[i] for i in sorted(images) if is_train[i][1][0] == 1]
    test = [images[i] for i in sorted(images) if is_train[i][1][0] == 0]
    prepared = Prepared(
        categories=[{"id": c, "name": classes[c].split(".", 1)[-1].replace("_", " ")} for c in sorted(classes)],
        splits={}, links={"images": src / "images"}, boxes={i: tuple(b) for i, (_, b) in boxes.items()})
    if val == "test":
        offset = [Image(im.id + TEST_ID_OFFSET, im.file_name, im.category_id, im.width, im.height) for im in test]
        prepared.splits = {"train": train, "val": test, "test": offset}
        prepared.boxes.update({im.id: prepared.boxes[im.id - TEST_ID_OFFSET] for im in offset})
        prepared.notes.append(f"val = the official test split; test2019.json lists it again with ids + {TEST_ID_OFFSET}")
    else:
        keep, drawn = draw_per_class(train, val_per_class, seed, src / "train_test_split.txt", "--val-per-class")
        prepared.splits = {"train": keep, "val": drawn, "test": test}
        prepared.notes.append(f"val = {val_per_class} per class drawn from the official train split (seed --seed = {seed})")
    return prepared


def draw_per_class(images, n, seed, where, flag, names=None):
    """Split `images` into (kept, drawn): n drawn per class with a seeded generator, kept >= 1 per class.
    `names` (category id -> name) only makes the error clearer."""
    by_class = defaultdict(list)
    for im in images:
        by_class[im.category_id].append(im)
    rng = np.random.default_rng(seed)
    kept, drawn = [], []
    for cid in sorted(by_class):
        members = sorted(by_class[cid], key=lambda im: im.id)
        if len(members) <= n:
            name = f"class {cid}" if names is None else f"class {names[cid]!r}"
            raise DatasetError(f"{where}: {name} has {len(members)} train images, too few to draw {flag} {n} "
                               f"and keep one for training")
        order = rng.permutation(len(members))
        drawn += [members[k] for k in order[:n]]
        kept += [members[k] for k in order[n:]]
    return sorted(kept, key=lambda im: im.id), sorted(drawn, key=lambda im: im.id)


# ---------------------------------------------------------------- a folder of class folders

def scan_images(folder, skipped):
    """Image files below `folder`, sorted, as (path, md5, width, height); the rest goes to `skipped`."""
    out = []
    for path in sorted(p for p in folder.rglob("*") if not p.is_dir()):
        rel = path.relative_to(folder)
        if any(part.startswith(".") for part in rel.parts):
            skipped.append((path, "hidden"))
        elif path.suffix.lower() not in IMAGE_SUFFIXES:
            skipped.append((path, f"not an image name ({path.suffix or 'no suffix'})"))
        else:
            try:
                h, w = read_rgb(path).shape[:2]
            except BadImage as e:
                skipped.append((path, e.reason))
                continue
            out.append((path, hashlib.md5(path.read_bytes()).hexdigest(), w, h))
    return out


def class_folders(root, skipped):
    """Sorted class folder names of `root`; loose files in it go to `skipped`."""
    names = []
    for p in sorted(root.iterdir()):
        if p.name.startswith("."):
            skipped.append((p, "hidden"))
        elif p.is_dir():
            names.append(p.name)
        else:
            skipped.append((p, "not in a class folder"))
    return names


def read_folder(src, val_per_class, test_per_class, seed):
    """SRC/<class>/**/<image>: classes in sorted name order get ids 0..K-1."""
    if not src.is_dir():
        raise DatasetError(f"{src}: folder not found")
    skipped, seen = [], {}  # seen: md5 -> (path, (split, class name))
    siblings = {s: src.parent / s for s in ("val", "test") if src.name == "train" and (src.parent / s).is_dir()}
    names = class_folders(src, skipped)
    if not names:
        raise DatasetError(f"{src}: no class folders")
    index = {name: k for k, name in enumerate(names)}

    def collect(root, top, split, labelled=True):
        images = []
        for name in (class_folders(root, skipped) if labelled else [""]):
            if labelled and name not in index:
                raise DatasetError(f"{root / name}: class {name!r} is not a class folder of {src}")
            for path, md5, w, h in scan_images(root / name, skipped):
                if md5 in seen:  # a copy in the same class folder is skipped; elsewhere it is a conflict
                    other, where = seen[md5]
                    if where != (split, name):
                        raise DatasetError(f"{path}: the same image as {other} ({where[0]}, class {where[1]!r}): listed twice")
                    skipped.append((path, f"same bytes as {other.name}"))
                    continue
                seen[md5] = (path, (split, name))
                file_name = "/".join((top, *path.relative_to(root).parts))
                images.append(Image(-1, file_name, index[name] if labelled else None, w, h))
        return images

    train = collect(src, "images", "train")
    for k, name in enumerate(names):
        if not any(im.category_id == k for im in train):
            raise DatasetError(f"{src / name}: no images in this class folder")
    val = test = None
    if "val" in siblings:
        val = collect(siblings["val"], "val", "val")
    if "test" in siblings:
        root = siblings["test"]
        loose = [p for p in root.iterdir() if not p.is_dir() and not p.name.startswith(".")]
        dirs = [p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")]
        if loose and dirs:
            raise DatasetError(f"{root}: holds both class folders and loose files; test needs one or the other")
        test = collect(root, "test", "test", labelled=bool(dirs))
    # ids: train in (class, path) order (drawn val and test keep theirs), then sibling val, then test
    for im_id, im in enumerate(train):
        im.id = im_id
    next_id = len(train)
    notes = []
    if test is None:
        train, test = draw_per_class(train, test_per_class, seed, src, "--test-per-class", names)
        notes.append(f"test = {test_per_class} per class drawn from {src} (seed --seed = {seed})")
    if val is None:
        train, val = draw_per_class(train, val_per_class, seed + 1, src, "--val-per-class", names)
        notes.append(f"val = {val_per_class} per class drawn from {src} (seed --seed + 1 = {seed + 1})")
    for im in (*val, *test):
        if im.id < 0:
            im.id, next_id = next_id, next_id + 1
    notes += [f"{s} = {p}" for s, p in siblings.items()]
    links = {"images": src, **siblings}
    categories = [{"id": k, "name": name} for k, name in enumerate(names)]
    return Prepared(categories, {"train": train, "val": val, "test": test}, links, skipped=skipped, notes=notes)


# ---------------------------------------------------------------- writing

def link_images(prepared, tmp, mode):
    """Make every image reachable under tmp: one relative symlink per top folder, or per file."""
    if mode == "symlink":
        for top, source in prepared.links.items():
            os.symlink(os.path.relpath(source, tmp), tmp / top)  # DIR.tmp-<pid> and DIR share a parent
        return
    done = set()
    for table in prepared.splits.values():
        for file_name in table.file_names:
            if file_name in done:
                continue
            top, *rest = file_name.split("/")
            source, target = prepared.links[top].joinpath(*rest), tmp / file_name
            target.parent.mkdir(parents=True, exist_ok=True)
            if mode == "hard":
                try:
                    os.link(source, target)
                except OSError as e:
                    raise UserError(f"{source}: cannot hard-link it into {tmp.parent} ({e.strerror}); "
                                    f"use the default symlinks or --copy") from None
            else:
                shutil.copy2(source, target)
            done.add(file_name)


def check_links(prepared, tmp, mode):
    """The images reachable under tmp without a stat per image: the reading found every file under
    its source, so each top folder linked back to that source (symlink), or each file made
    (hard, copy: os.link and copy raise on a missing source), makes all of them reachable."""
    if mode != "symlink":
        return
    for top, source in prepared.links.items():
        try:
            same = os.path.samefile(tmp / top, source)
        except OSError:
            same = False
        if not same:
            raise UserError(f"{tmp / top}: does not lead to {source}; nothing written")


def write_split(path, prepared, name):
    """split_json(prepared, name) as json.dumps(..., separators=(",", ":")) writes it, byte for byte:
    its images and annotations encoded by msgspec where every value is one both write alike (ints,
    printable ASCII text, true, false, null; iNat 2021's train json: a few seconds, not 15), the
    rest, and every split holding anything else, by json.dumps."""
    table = prepared.splits[name]
    columns = [table.ids, table.widths, table.heights, *table.extras.values(), table.category_ids]
    text = "".join(chain(table.file_names, *([v for v in c if type(v) is str] for c in table.extras.values())))
    if not (text.isascii() and text.isprintable() and all(set(map(type, c)) <= PLAIN_TYPES for c in columns)):
        path.write_text(json.dumps(split_json(prepared, name), separators=(",", ":")))
        return
    del text
    image = msgspec.defstruct("Image", [("id", Any), ("file_name", Any), ("width", Any), ("height", Any),
                                        *((k, Any, MISSING) for k in table.extras)], gc=False)
    dumps = lambda v: json.dumps(v, separators=(",", ":")).encode()
    with open(path, "wb") as f:
        f.write(b'{"info":' + dumps(split_json_info()) + b',"images":')
        f.write(msgspec.json.encode(list(map(image, table.ids, table.file_names, table.widths, table.heights, *table.extras.values()))))
        if name != "test":
            f.write(b',"categories":' + dumps(prepared.categories) + b',"annotations":')
            f.write(msgspec.json.encode(list(map(_Annotation, table.ids, table.ids, table.category_ids))))
        f.write(b"}")


class _Annotation(msgspec.Struct, gc=False):
    id: Any
    image_id: Any
    category_id: Any


PLAIN_TYPES = {int, str, bool, type(None), msgspec.UnsetType}  # values json.dumps and msgspec write alike (text: printable ASCII)


def split_json_info():
    return {"description": "written by data/prepare.py"}


def split_json(prepared, name):
    table = prepared.splits[name]
    images = [{"id": i, "file_name": f, "width": w, "height": h}
              for i, f, w, h in zip(table.ids, table.file_names, table.widths, table.heights)]
    for key, values in table.extras.items():  # in EXTRA_KEYS order, after the four above
        for image, value in zip(images, values):
            if value is not MISSING:
                image[key] = value
    doc = {"info": split_json_info(), "images": images}
    if name != "test":
        doc["categories"] = prepared.categories
        doc["annotations"] = [{"id": i, "image_id": i, "category_id": c} for i, c in zip(table.ids, table.category_ids)]
    return doc


# ---------------------------------------------------------------- replacing --out: only what prepare wrote

MANIFEST = ".prepared.json"  # in DIR: every entry prepare made there, so that --overwrite removes only those
PARTIAL = ".prepare-partial"  # in DIR.tmp-<pid> from its first moment: the tree is prepare's own
WRITTEN = []  # --out, once the new dataset is in place (for the message of a signal that came during the swap)
WORK = re.compile(r"^(?P<name>.+)\.(?P<kind>tmp|old)-(?P<pid>\d+)$")  # DIR.tmp-<pid>, DIR.old-<pid>


def tree_entries(root):
    """[(relative path, kind, size)] of everything below `root`, symlinks not followed, sorted."""
    out = []
    for parent, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(parent) / name
            st = os.lstat(path)
            kind = "link" if stat.S_ISLNK(st.st_mode) else "dir" if stat.S_ISDIR(st.st_mode) else "file"
            out.append((path.relative_to(root).as_posix(), kind, st.st_size if kind == "file" else 0))
    return sorted(out)


def write_manifest(root):
    entries = [e for e in tree_entries(root) if e[0] != PARTIAL]
    (root / MANIFEST).write_text(json.dumps({"written_by": "data/prepare.py", "entries": entries}))


def read_manifest(root):
    """The entries of root's manifest, or None if it has none (or one this script cannot read)."""
    try:
        doc = json.loads((root / MANIFEST).read_text())
        return {e[0]: (e[1], e[2]) for e in doc["entries"]}
    except (OSError, ValueError, KeyError, TypeError, IndexError):
        return None


def foreign_entry(root, manifest):
    """The first entry below `root` that prepare did not write (absent from the manifest, or of
    another kind or size than it wrote), or None. Entries it wrote and that are gone are fine."""
    for rel, kind, size in tree_entries(root):
        if rel in (MANIFEST, PARTIAL):
            continue
        made = manifest.get(rel)
        if made is None:
            return f"{rel} (not written by data/prepare.py)"
        if made != (kind, size):
            return f"{rel} (changed since data/prepare.py wrote it: {kind} of {size} bytes, was {made[0]} of {made[1]})"
    return None


def remove_manifested(root, manifest):
    """Delete what the manifest lists (files and links unlinked, folders removed only when empty), then
    the manifest and root itself if empty. Never follows a symlink; never removes anything else."""
    for rel in sorted(manifest, key=lambda r: r.count("/"), reverse=True):
        path = root / rel
        try:
            if manifest[rel][0] == "dir":
                os.rmdir(path)
            elif not stat.S_ISDIR(os.lstat(path).st_mode):
                os.unlink(path)
        except (FileNotFoundError, OSError):
            pass
    for name in (MANIFEST, PARTIAL):
        try:
            os.unlink(root / name)
        except FileNotFoundError:
            pass
    try:
        os.rmdir(root)
    except OSError:
        pass


def lock_tree(path):
    """An exclusive flock on the folder `path` (released by the kernel when the process dies);
    None if another live process holds it."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def clean_stale(out):
    """Find what killed runs for `out` left beside it and remove it: DIR.tmp-<pid> (a tree being built)
    and DIR.old-<pid> (the previous dataset, being replaced; put back if DIR is absent). A tree whose
    owner is alive (it holds its flock) means another prepare.py is writing DIR: refused. A folder of
    that name without prepare's marker is not ours and is left alone. Says what it did on stdout."""
    try:
        names = sorted(os.listdir(out.parent))
    except FileNotFoundError:
        return
    for name in names:
        m = WORK.match(name)
        path = out.parent / name
        if not m or m["name"] != out.name or not path.is_dir() or path.is_symlink():
            continue
        fd = lock_tree(path)
        if fd is None:
            raise UserError(f"{out}: another data/prepare.py (pid {m['pid']}) is writing it ({path}); "
                            "wait for it to end")
        try:
            manifest = read_manifest(path)
            if m["kind"] == "old" and manifest is not None and not os.path.lexists(out):
                path.rename(out)  # killed between the two renames: the previous dataset goes back
                print(f"put back {out} from {name}, left by a killed run", flush=True)
            elif manifest is not None and foreign_entry(path, manifest) is None:
                remove_manifested(path, manifest)
                print(f"removed {path}, left by a killed run", flush=True)
            elif m["kind"] == "tmp" and (path / PARTIAL).is_file():
                shutil.rmtree(path)  # a tree being built: everything in it is prepare's (links not followed)
                print(f"removed {path}, left by a killed run", flush=True)
        finally:
            os.close(fd)


def check_replaceable(out, overwrite):
    """Refuse an --out that exists unless --overwrite and prepare wrote everything in it."""
    if not os.path.lexists(out):
        return
    if not overwrite:
        raise UserError(f"{out}: exists; delete it or pass --overwrite")
    if out.is_symlink() or not out.is_dir():
        raise UserError(f"{out}: exists and is not a prepared dataset (not a folder); not overwriting it")
    manifest = read_manifest(out)
    if manifest is None:
        raise UserError(f"{out}: exists and is not a prepared dataset (no {MANIFEST}, the list of what "
                        f"data/prepare.py wrote); not overwriting it")
    foreign = foreign_entry(out, manifest)
    if foreign:
        raise UserError(f"{out}: holds {foreign}; --overwrite removes only what data/prepare.py wrote: "
                        "move it away or choose another --out")


def check_apart(out, sources):
    """--out must neither be nor contain nor lie inside any folder images are read from."""
    real = Path(os.path.realpath(out))
    for source in sources:
        source = Path(os.path.realpath(source))
        if real == source or source in real.parents:
            raise UserError(f"{out}: inside the source {source}; write it elsewhere")
        if real in source.parents:
            raise UserError(f"{out}: contains the source {source}; --overwrite would delete it: write it elsewhere")


def write_dataset(prepared, out, mode):
    """Write DIR.tmp-<pid>, check it with the project's reader, then swap it in for DIR.

    The tree is prepare's from its first moment (marker, flock); a kill at any point leaves DIR whole
    (the previous one or the new one) and a tree beside it that the next run removes. The swap itself
    runs with SIGINT / SIGTERM held back."""
    tmp = out.with_name(f"{out.name}.tmp-{os.getpid()}")
    tmp.mkdir()
    fd = lock_tree(tmp)
    try:
        (tmp / PARTIAL).write_text(f"pid {os.getpid()}\n")
        link_images(prepared, tmp, mode)
        for name, file in SPLIT_FILES.items():
            write_split(tmp / file, prepared, name)
        test = prepared.splits["test"]
        if prepared.boxes or test.labelled():
            (tmp / "truth").mkdir()
        if test.labelled():
            write_csv(tmp / "truth" / "test_labels.csv", ("id", "category_id"), zip(test.ids, test.category_ids))
        if prepared.boxes:
            write_csv(tmp / "truth" / "boxes.csv", ("image_id", "x", "y", "w", "h"),
                      [(i, *(f"{v:g}" for v in prepared.boxes[i])) for i in sorted(prepared.boxes)])
        load_dataset(tmp, check_files=False)  # what every stage will read: same classes and ids
        check_links(prepared, tmp, mode)  # every file reachable: each was found when read, and is under a link to its source
        write_manifest(tmp)
        os.unlink(tmp / PARTIAL)
        held = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM, signal.SIGUSR1})
        try:
            if os.path.lexists(out):  # --overwrite of a dataset prepare wrote (check_replaceable)
                old = out.with_name(f"{out.name}.old-{os.getpid()}")
                manifest = read_manifest(out)
                out.rename(old)
                tmp.rename(out)
                remove_manifested(old, manifest)
            else:
                tmp.rename(out)
            WRITTEN.append(out)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, held)
    except BaseException:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        os.close(fd)


def write_csv(path, header, rows):
    with open(path, "w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)


def summary(prepared, fmt, out, mode):
    """The lines prepare prints: classes, images per split, per-class spread, what was skipped."""
    lines = [f"{fmt}: {len(prepared.categories)} classes -> {out} (images by {mode})"]
    for name, images in prepared.splits.items():
        counts = Counter(c for c in images.category_ids if c is not None)
        spread = (f", per class min {min(counts.values())} / median {np.median(list(counts.values())):g} / "
                  f"max {max(counts.values())} over {len(counts)} classes") if counts else ", unlabelled"
        lines.append(f"  {name:5s} {len(images):7d} images{spread}")
    lines += [f"  {note}" for note in prepared.notes]
    if prepared.boxes:
        lines.append(f"  truth/boxes.csv: {len(prepared.boxes)} boxes")
    if prepared.splits["test"].labelled():
        lines.append(f"  truth/test_labels.csv: {len(prepared.splits['test'])} test labels (test.py scores the submission)")
    why = Counter(reason for _, reason in prepared.skipped)
    lines.append(f"  skipped {len(prepared.skipped)} files" + (": " + ", ".join(f"{n} {r}" for r, n in why.most_common()) if why else ""))
    lines += [f"    {path}: {reason}" for path, reason in prepared.skipped[:10]]
    if len(prepared.skipped) > 10:
        lines.append(f"    ... and {len(prepared.skipped) - 10} more")
    return "\n".join(lines)


def get_args_parser():
    p = argparse.ArgumentParser(description="Write another dataset in this project's layout (train2019.json, ...).")
    p.add_argument("format", choices=FORMATS, help="layout of SRC")
    p.add_argument("src", help="the unpacked dataset (folder: the folder of class folders); relative to the repo root")
    # where
    p.add_argument("--out", required=True, help="dataset root to write; must not exist (a relative path resolves against the repo root, as in the stages)")
    p.add_argument("--overwrite", action="store_true", help="replace --out if data/prepare.py wrote everything in it (its .prepared.json lists it)")
    p.add_argument("--link", choices=("symlink", "hard"), default="symlink",
                   help="how images are reachable under --out: relative symlinks of the top folders, or hard links per file (default: symlink)")
    p.add_argument("--copy", action="store_true", help="copy the images instead of linking them")
    # splits (cub, folder)
    p.add_argument("--val", choices=("draw", "test"), default="draw",
                   help="cub: val drawn from train per class, or the official test split (default: draw)")
    p.add_argument("--val-per-class", type=int, default=3, help="cub, folder: val images drawn per class (default: 3)")
    p.add_argument("--test-per-class", type=int, default=3, help="folder: test images drawn per class (default: 3)")
    p.add_argument("--seed", type=int, default=0, help="seed of the per-class draws (default: 0)")
    return p


def main(args):
    # millions of json dicts and Images, none of them in a cycle: the collector's passes over them
    # were a fifth of the time at 200,000 images and grow with the dataset; the process is short
    gc.disable()
    src, out = resolve(args.src).resolve(), resolve(args.out)
    out = out.parent.resolve() / out.name  # links are made relative to the real parent
    mode = "copy" if args.copy else args.link
    check_apart(out, [src])
    clean_stale(out)
    check_replaceable(out, args.overwrite)
    if args.val != "draw" and args.format != "cub":
        raise UserError(f"--val {args.val}: cub only (the iNat years have their own val; folder: a sibling val/ folder)")
    if min(args.val_per_class, args.test_per_class) < 1:
        raise UserError("--val-per-class and --test-per-class: at least 1")
    if not src.is_dir():
        raise DatasetError(f"{src}: folder not found")
    if args.format in INAT_FILES:
        prepared = read_inat(src, args.format)
    elif args.format == "cub":
        prepared = read_cub(src, args.val, args.val_per_class, args.seed)
    else:
        prepared = read_folder(src, args.val_per_class, args.test_per_class, args.seed)
    prepared.splits = {name: Table.of(images) for name, images in prepared.splits.items()}
    check_apart(out, prepared.links.values())  # folder: its sibling val/ and test/ too
    write_dataset(prepared, out, mode)
    print(summary(prepared, args.format, out, mode), flush=True)


def run(args):
    """main(args), with a problem as one line: exit code 2 for the input, 1 for a failed write.
    (The stages' fgvc.cli.run does the same but imports torch, which preparing does not need.)"""
    interrupt.install()  # SIGTERM / SIGUSR1 raise interrupt.Stopped, SIGINT KeyboardInterrupt
    try:
        main(args)
    except (KeyboardInterrupt, interrupt.Stopped) as e:
        signum = getattr(e, "signum", signal.SIGINT)
        done = f"{WRITTEN[0]} was written before it stopped" if WRITTEN else "--out left as it was, nothing written"
        fail(f"stopped by {signal.Signals(signum).name}; {done}", interrupt.EXIT_CODES[signum])
    except UserError as e:
        fail(e, 2)
    except OSError as e:
        fail(f"{e.filename or ''}: {e.strerror or e} (nothing written)", 1)


if __name__ == "__main__":
    run(get_args_parser().parse_args())
