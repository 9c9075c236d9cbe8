"""The iNat 2019 reader: train2019.json, val2019.json, test2019.json under one dataset root.

Schema (COCO-like): {"images": [{id, file_name, width, height, ...}],
"annotations": [{id, image_id, category_id}], "categories": [{id, name, ...}]}.
Image paths are `root/file_name`. Nothing here assumes that images and annotations are parallel
lists or that category ids are 0..K-1: annotations are joined on image_id and category ids are
mapped to class indices in sorted id order (`Classes`). Every problem is reported as a one-line
`DatasetError` naming the file and the entry, before any training starts.

Two readers give the same splits: msgspec into typed structs (fast, and a fraction of the memory of
Python dicts at iNat 2021's 2.7 million images), and, wherever that one finds anything amiss, the
standard library's json with a check of every entry in file order, which names the problem.
"""
import codecs
import errno
import json
import os
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Annotated, Any

import msgspec
import numpy as np

from .errors import DatasetError
from .filenames import FileNames

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
    file_names: FileNames  # str, relative to root (a list of str is taken and stored as FileNames)
    labels: np.ndarray | None  # int64 (N,) class indices
    sizes: np.ndarray  # int64 (N, 2): (width, height) from the json, -1 where absent

    def __post_init__(self):
        if not isinstance(self.file_names, FileNames):
            self.file_names = FileNames(self.file_names)

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
    if name.isascii() and name[:1] not in ("", "/", "\\") and ":" not in name and ".." not in name and "\0" not in name:
        return  # none of the refusals below can apply: the common case, without building a path
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
    ids, names, labels, sizes, classes = _read_fast(path, name, classes) or _read_checked(path, name, classes)
    split = Split(name=name, json_path=path, root=root, image_ids=ids, file_names=names, labels=labels, sizes=sizes)
    if check_files:
        check_image_files(split)
    return split, classes


def _read_checked(path, name, classes):
    """The standard library's json, every entry checked in file order: the first problem found is
    the one reported. Returns (ids, file names, labels or None, sizes, classes), rows sorted by id."""
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
        sizes.append([_size(im.get("width")), _size(im.get("height"))])

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
    return (np.asarray(ids, dtype=np.int64)[order], FileNames([names[r] for r in order]),
            None if labels is None else labels[order], np.asarray(sizes, dtype=np.int64).reshape(-1, 2)[order], classes)


def _size(v):
    """A width or height from the json: a positive int64, else -1 (absent, or not a size)."""
    return v if _is_int(v) and 0 < v <= INT64_MAX else -1


# ---------------------------------------------------------------- the fast reader (msgspec)

Int64 = Annotated[int, msgspec.Meta(ge=INT64_MIN, le=INT64_MAX)]  # msgspec's int refuses bools and floats, as _field does


class _Image(msgspec.Struct, gc=False):
    id: Int64
    file_name: str
    width: Any = None
    height: Any = None


class _Annotation(msgspec.Struct, gc=False):
    image_id: Int64
    category_id: Int64


class _SplitFile(msgspec.Struct):
    """What the reader keeps of a split file; every other field is skipped unbuilt."""

    images: list[_Image]
    annotations: list[_Annotation] = []  # absent or empty: both refused for train and val (by _read_checked)
    categories: msgspec.Raw = msgspec.Raw()  # its json text, read by the standard json: the checks are read_categories'


_DECODER = msgspec.json.Decoder(_SplitFile)
NESTING = 100  # levels msgspec may nest below the caller: json decides for anything deeper
SUSPECT_BYTES = (b":", b"\\", b"\0", b"..", b"\xed")  # besides an empty name or a leading '/', only a name holding one
#   of these can fail _check_file_name (0xED starts every surrogate in 'surrogatepass' UTF-8)


def _read_fast(path, name, classes):
    """The split read with msgspec, or None wherever anything is off (an error, or an input msgspec
    reads differently from json: NaN, a lone surrogate, a BOM): _read_checked then reads it again
    and names the problem exactly as it always has. Returns what _read_checked returns."""
    try:
        raw = path.read_bytes()
    except OSError:
        return None
    if not _is_utf8(raw):  # msgspec skips the fields it does not keep without decoding them; json.load refuses the file
        return None
    try:
        with _nesting_limit(NESTING):
            doc = _DECODER.decode(raw)
        del raw
        categories = {"categories": json.loads(bytes(doc.categories))} if doc.categories else {}
        doc.categories = None
        return _fast_rows(path, name, classes, doc, categories)
    except (msgspec.MsgspecError, ValueError, RecursionError, DatasetError):
        return None


def _fast_rows(path, name, classes, doc, categories):
    """_read_checked's rows from the decoded structs, or None where any of its checks would fail."""
    images, annotations = doc.images, doc.annotations
    if not images or (name != "test" and not annotations):
        return None
    cat_ids = read_categories(path, categories)
    if classes is None:
        if not cat_ids:
            return None
        classes = category_names(categories["categories"], tuple(cat_ids))
    n = len(images)
    ids = np.fromiter((im.id for im in images), np.int64, n)
    order = np.argsort(ids, kind="stable")
    ids = ids[order]
    if (ids[1:] == ids[:-1]).any():
        return None
    names = FileNames([images[r].file_name for r in order])
    first = names.first_bytes()
    for r in np.union1d(names.rows_holding(SUSPECT_BYTES), np.flatnonzero((first < 0) | (first == ord("/")))):
        _check_file_name(names[r], path, "")  # raises: None, and _read_checked names the entry
    sizes = np.stack([_fast_sizes([im.width for im in images]), _fast_sizes([im.height for im in images])], axis=1)[order]
    labels = None
    if annotations:
        labels = _fast_labels(annotations, ids, classes)
        if labels is None:
            return None
    return ids, names, labels, sizes, classes


def _fast_sizes(values):
    """_size of each value, as int64: at C speed where every value is an int in the int64 range."""
    if set(map(type, values)) <= {int}:
        try:
            a = np.array(values, dtype=np.int64)
            return np.where(a > 0, a, -1)
        except OverflowError:
            pass
    return np.fromiter(map(_size, values), np.int64, len(values))


def _fast_labels(annotations, ids, classes):
    """Class index of each row (`ids` sorted), or None unless every image has exactly one
    annotation, of a known image id and a known category."""
    if len(annotations) != len(ids):
        return None
    image_id = np.fromiter((a.image_id for a in annotations), np.int64, len(annotations))
    category = np.fromiter((a.category_id for a in annotations), np.int64, len(annotations))
    rows = np.searchsorted(ids, image_id).clip(max=len(ids) - 1)
    known = np.asarray(classes.ids, np.int64)
    by_id = np.argsort(known, kind="stable")
    cls = by_id[np.searchsorted(known, category, sorter=by_id).clip(max=len(known) - 1)]
    if (ids[rows] != image_id).any() or (known[cls] != category).any() or np.bincount(rows, minlength=len(ids)).max() > 1:
        return None
    labels = np.empty(len(ids), np.int64)
    labels[rows] = cls
    return labels


def _is_utf8(raw):
    """Does `raw` decode as json.load decodes it (UTF-8, surrogates let through)? In 16 MB pieces."""
    if raw.isascii():
        return True
    decoder, view = codecs.getincrementaldecoder("utf-8")("surrogatepass"), memoryview(raw)
    try:
        for start in range(0, len(raw), 1 << 24):
            decoder.decode(view[start : start + (1 << 24)])
        decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        return False
    return True


@contextmanager
def _nesting_limit(levels):
    """Python's recursion limit, which bounds msgspec's nesting, set `levels` frames above this
    one: json.load reports a file nested too deeply a few levels before msgspec would, so every
    file deeper than `levels` goes to json, which decides."""
    old, depth, frame = sys.getrecursionlimit(), 0, sys._getframe()
    while frame is not None:
        depth, frame = depth + 1, frame.f_back
    sys.setrecursionlimit(min(old, depth + levels))
    try:
        yield
    finally:
        sys.setrecursionlimit(old)


def check_image_files(split):
    """Fail at start, not at step 30,000: every listed image file must exist.

    Nothing at the path (or a link to nothing) is a missing file: the dataset is incomplete and no
    stage starts. Something there that cannot be decoded (a directory, no read permission, bad
    bytes) is a bad image: every stage skips and counts it (see datasets.ImageDataset).
    Under torchrun each process looks at its share of the files (rows rank, rank + world, ...)
    and every process gets the answer of the whole split, the one a single process gives.
    """
    rank, world, gather = _processes()
    _report_files(split, gather(_look_for_files(split, range(rank, len(split), world))))


def _look_for_files(split, rows):
    """(missing files among `rows`, the first 5 of their rows, (row, message) of the first error or None)."""
    count, first = 0, []
    for i in rows:
        try:
            found = _file_exists(split, i)
        except DatasetError as e:  # reported by every process, the lowest row first
            return count, first, (i, str(e))
        if not found:
            count, first = count + 1, first if len(first) == 5 else first + [i]
    return count, first, None


def _report_files(split, looks):
    """Raise what the looks of every process (_look_for_files) found, as one look over the split would."""
    errors = [look[2] for look in looks if look[2] is not None]
    if errors:
        raise DatasetError(min(errors)[1])
    missing = sum(look[0] for look in looks)
    if missing:
        first = ", ".join(split.file_names[r] for r in sorted(r for look in looks for r in look[1])[:5])
        raise DatasetError(
            f"{split.json_path}: {missing} of {len(split)} image files are missing under {split.root} "
            f"(first: {first})"
        )


def _processes():
    """(rank, world, gather) of the torchrun group, (0, 1, [x]) outside one. A group needs
    torch.distributed: a process that never imported it (data/prepare.py) does not load torch here."""
    if "torch.distributed" not in sys.modules:
        return 0, 1, lambda x: [x]
    from . import dist  # here: torch only where a stage has it already

    return dist.rank(), dist.world(), dist.all_gather_objects


def _file_exists(split, i):
    """Is there something at image i's path (a link followed)? An error of the system on the way
    (a name too long, no permission to search a folder) names the json file and the entry."""
    name = split.file_names[i]
    try:
        os.stat(os.path.join(split.root, name))
        return True
    except OSError as e:
        if e.errno in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP):
            return False
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
            common = _shared(ids, split.image_ids)
            if len(common):
                raise DatasetError(
                    f"{split.json_path}: image id {common[0]} is also in {SPLIT_FILES[other]} "
                    f"({len(common)} shared ids)"
                )
        seen[name] = split.image_ids
    return classes, out


def _shared(a, b):
    """The ids in both sorted, repeat-free int64 arrays (what the readers return), sorted: as
    np.intersect1d, by binary search instead of sorting both again."""
    if not len(a) or not len(b):
        return b[:0]
    hit = a[np.searchsorted(a, b).clip(max=len(a) - 1)] == b
    return b[hit]


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
