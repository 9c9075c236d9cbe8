"""Prediction on any photos (predict.py, and the Python API `Predictor`): the whole method as
test.py applies it, for images that no dataset json lists.

For each image: the coarse model's CAM on the whole image (short side the coarse run's --resize,
aspect kept) and its mask (the run's --cam-threshold and --mask-size; the CAM of the predicted
class, as the coarse stage localizes val and test), the test-time crops around the mask with the
fine model's crop rule, the softmax mean, the prior correction at tau (the probabilities normalised
over all classes), the top k. Localization and scoring are the stages' own code
(`stages.localization_input`, `stages.score_split`, the path test.py scores with): the images
become a `Split` (rows in input order, no labels) whose masks stay in memory, bit-packed (512 bytes
an image at 64 x 64), instead of a coarse masks file, a chunk of --chunk-size images at a time
(`Predictor.chunks`: localized, scored, written, then the next), so memory does not grow with the
number of images. The crop centres are drawn with an rng seeded
by (seed, the image's pixels) (`datasets.image_key`), as test.py's are: the same picture gets
test.py's numbers exactly, in any order and under any name.

A row (`Predictor.predict`, each line of a .jsonl output, each row of a .csv one):
{"path": ..., "predictions": [{"category_id", "name", "probability"}, ...], "box": [x, y, w, h]}:
the mask's box (its largest connected component) in image pixels, None for an empty mask or with
the coarse model alone (`model="coarse"`: its whole-image answer, no localization).
"""
import argparse
import csv
import io
import json
import os
import stat
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from . import cli, dist, image
from .atomic import atomic_write
from .annotations import Split, class_counts, class_prior, load_dataset
from .boxes import mask_to_box, scale_box
from .cam import localize_shard
from .checkpoint import CHECKPOINT, check_matches, load_checkpoint, stored_class_info
from .config import CoarseConfig, PredictConfig, parse_fixed_tau
from .datasets import image_key
from .errors import CheckpointError, UserError
from .image import BadImage, read_rgb, upright_size
from .masks import PackedMasks
from .paths import resolve
from .prior import TopK, check_tau
from .inference import prepare_model
from .stages import STAGES, localization_input, model_from_checkpoint, score_split, tta_crops
from .viz import prediction_overlay

HEADER_BYTES = 256 * 1024  # read of each file to tell an image by its content (and its size, EXIF orientation)
FORMATS = (".csv", ".jsonl")


# ---------------------------------------------------------------- which files are images

def looks_like_image(head):
    """Do a file's first bytes start like an image OpenCV decodes (JPEG, PNG, BMP, TIFF, WebP, JPEG 2000)?"""
    return (head[:3] == b"\xff\xd8\xff" or head[:8] == b"\x89PNG\r\n\x1a\n" or head[:2] == b"BM"
            or head[:4] in (b"II*\x00", b"MM\x00*") or (head[:4] == b"RIFF" and head[8:12] == b"WEBP")
            or head[:12] == b"\x00\x00\x00\x0cjP  \r\n\x87\n")


def _head(path):
    with open(path, "rb") as f:
        return f.read(HEADER_BYTES)


def _walk(folder):
    """Files under `folder`, recursively, sorted by name at every level; hidden names skipped,
    symlinked folders not followed."""
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError:
        return
    for e in entries:
        if e.name.startswith("."):
            continue
        if e.is_dir(follow_symlinks=False):
            yield from _walk(e.path)
        else:
            yield e.path


class Inputs:
    """The images of predict.py's PATH arguments, in order: `shown` (the path as a row prints it),
    `sizes` ((width, height) from the header, (-1, -1) where the header does not say), and
    `skipped`: [(path, reason)] of what is not an image or cannot be read."""

    def __init__(self, paths):
        self.shown, self.real, self.sizes, self.skipped, self.reads = [], [], [], [], []
        for p in paths:
            self._add(str(p))

    def _add(self, p, listed_in=None):
        if p.startswith("@") and listed_in is None:
            return self._list(p[1:])
        real = Path(p) if listed_in is None and Path(p).is_absolute() else (listed_in or resolve("")) / p
        if real.is_dir():
            for f in _walk(real):
                self._file(str(Path(p) / os.path.relpath(f, real)), Path(f))
        else:
            self._file(p if listed_in is None else str(real), real)

    def _list(self, name):
        path = resolve(name)
        try:
            lines = path.read_text().splitlines()
        except (OSError, UnicodeDecodeError) as e:
            raise UserError(f"@{name}: cannot read the list ({getattr(e, 'strerror', None) or e})") from None
        self.reads.append(path)
        for line in lines:
            if line.strip() and not line.lstrip().startswith("#"):
                self._add(line.strip(), listed_in=path.parent)

    def _file(self, shown, real):
        try:
            if not stat.S_ISREG(os.stat(real).st_mode):  # a FIFO would block the read for ever
                return self.skipped.append((shown, "not a regular file"))
            head = _head(real)
        except OSError as e:
            return self.skipped.append((shown, f"unreadable ({e.strerror or e})"))
        if not looks_like_image(head):
            return self.skipped.append((shown, "empty file" if not head else "not an image (by its content)"))
        self.shown.append(shown)
        self.real.append(str(real))
        self.sizes.append(upright_size(np.frombuffer(head, np.uint8)) or (-1, -1))

    def split(self, start=0, stop=None):
        """A Split of the images `start:stop` (default: all): rows in input order, no labels; its
        root is / so that outputs.claim compares an output with every image by name."""
        real = self.real[start:stop]
        names = [os.path.abspath(r).lstrip("/") for r in real]
        return Split("predict", Path(real[0]) if real else Path("/"), Path("/"), np.arange(start, start + len(real), dtype=np.int64),
                     names, None, np.asarray(self.sizes[start:stop], np.int64).reshape(-1, 2))


# ---------------------------------------------------------------- the options, as the command has them

def options(**given):
    """predict.py's flags as a Namespace: `given` (flag names), the rest at their defaults, checked
    as the command line is (ranges, the device, --amp auto)."""
    unknown = sorted(set(given) - set(PredictConfig.defaults()))
    if unknown:
        raise TypeError(f"unknown option(s) {', '.join(unknown)}; predict.py's flags: {', '.join(PredictConfig.defaults())}")
    args = argparse.Namespace(**{**PredictConfig.defaults(), "paths": [], **given})
    for name in ("tta_factors", "tta_mirror_factors"):
        setattr(args, name, list(getattr(args, name)))
    args.tau = str(args.tau)
    cli.validate(args, PredictConfig)
    args.amp = cli.resolve_amp(args.amp, args.device)
    return args


def class_table(ckpt, data):
    """(category ids, names, train counts) of a checkpoint's classes: stored by training, else from
    `data`'s train2019.json (older checkpoints), else a one-line error."""
    path = ckpt["path"]
    stored = stored_class_info(ckpt)
    if stored is not None:
        names, _, counts = stored
        return list(ckpt["class_ids"]), list(names), np.asarray(counts, np.int64)
    if data is None:
        raise CheckpointError(f"{path}: older than the class names and train counts a checkpoint stores; "
                              "give --data, the dataset root whose train2019.json it was trained on")
    classes, splits = load_dataset(resolve(data), splits=("train",), check_files=False)
    check_matches(ckpt, path, class_ids=classes.ids)
    names = classes.names or [""] * len(classes)
    return list(classes.ids), [str(n) for n in names], class_counts(splits["train"], len(classes))


# ---------------------------------------------------------------- the predictor

class Predictor:
    """The two stages' checkpoints, loaded once; `predict` any images.

        p = Predictor("coarse/out", "fine/out", device="cpu")
        p.predict("photo.jpg", topk=5)         # one row (a dict, as a .jsonl line)
        p.predict(rgb_uint8_array)             # the same for an (H, W, 3) RGB array
        p.predict(["a.jpg", "b.png"])          # a list of rows

    `options` are predict.py's flags by their names (model, tau, seed, batch_size, workers, amp,
    tta_factors, ..., data for older checkpoints); unset ones have the command's defaults.
    """

    def __init__(self, coarse=None, fine=None, **flags):
        given = {k: v for k, v in (("coarse", coarse), ("fine", fine)) if v is not None}
        self.args = a = options(**given, **flags)
        image.configure(a.max_megapixels, a.lenient_jpeg)
        self.device = a.device
        self.runtime = cli.runtime(a, a.device)
        self.tau = parse_fixed_tau(a.tau)
        self.stage = STAGES[a.model]
        self.coarse = self._load("coarse")  # its CAM localizes; alone (--model coarse), it also answers
        self.fine = self._load(a.model) if self.stage.localized else None
        scorer = self.fine or self.coarse
        self.ids, self.names, counts = class_table(scorer[1], a.data)
        if self.fine is not None and self.coarse[1]["class_ids"] != self.fine[1]["class_ids"]:
            raise CheckpointError(f"{self.fine[1]['path']}: its classes are not those of the --coarse checkpoint {self.coarse[1]['path']}")
        self.prior = class_prior(counts)
        check_tau(self.prior, self.tau)
        c = CoarseConfig.from_args(self.coarse[1]["args"])
        self.resize, self.mask_size, self.threshold = c.resize, tuple(c.mask_size), c.cam_threshold

    def _load(self, kind):
        """(model on the device, checkpoint) of stage `kind` from its flag's directory (--coarse, --fine)."""
        path = resolve(getattr(self.args, kind)) / CHECKPOINT
        ckpt = load_checkpoint(path)
        check_matches(ckpt, path, kind=kind)
        return prepare_model(model_from_checkpoint(ckpt), self.device, self.runtime.compile), ckpt

    # -- a chunk's two steps

    def localize(self, split, keep_cams=False):
        """The masks of every row (PackedMasks) and, with `keep_cams`, the normalised CAMs (N, h, w) float16."""
        model, _ = self.coarse
        h, w = self.mask_size
        cams = np.zeros((len(split), h, w), np.float16) if keep_cams else None

        def keep(rows, c):
            cams[rows] = c.astype(np.float16)

        part = localize_shard(model, localization_input(split, self.resize, self.args.seed), self.runtime, mask_size=self.mask_size,
                              threshold=self.threshold, use_labels=False, max_bad=None, on_batch=keep if keep_cams else None,
                              progress=False)
        return PackedMasks(part.packed, h, w), cams

    def score(self, split, k, masks=None):
        """(top k {'corrected', 'probability', ...}, ok flags) of every row: test.py's scoring path."""
        a = self.args
        if self.fine is None:
            model, ckpt = self.coarse
            return score_split(model, ckpt, split, self.runtime, reduce=TopK(self.prior, self.tau, k), seed=a.seed)
        model, ckpt = self.fine
        return score_split(model, ckpt, split, self.runtime, reduce=TopK(self.prior, self.tau, k), masks=masks,
                           seed=a.seed, factors=a.tta_factors, mirror_factors=a.tta_mirror_factors, centre=a.crop_centre)

    def crops(self, split):
        """The fine model's test-time crop transform (crop.MultiCropTransform), as the scoring pass has it."""
        a = self.args
        return tta_crops(self.fine[1], split, masks=[], factors=a.tta_factors, mirror_factors=a.tta_mirror_factors,
                         centre=a.crop_centre).transform

    def chunks(self, inputs, k=None, *, keep_cams=False):
        """Predict every image of `inputs` (an `Inputs`) in one pass, a chunk of --chunk-size images
        at a time: each chunk is localized, then scored, then yielded as a `Result` whose `items()`
        are its rows (an image that could not be read goes to `inputs.skipped` instead). Memory
        holds one chunk's masks (and CAMs, with `keep_cams`), whatever the number of images."""
        k = self.args.topk if k is None else k
        bs = self.args.batch_size
        step = -(-self.args.chunk_size // bs) * bs  # whole batches: a chunk's scoring batches are those of one pass
        n = len(inputs.real)
        with tqdm(total=n, desc="predict", unit="img", disable=not n or not dist.is_main(), leave=False) as bar:
            for start in range(0, n, step):
                split = inputs.split(start, start + step)
                masks, cams = self.localize(split, keep_cams) if self.fine is not None else (None, None)
                kept, ok = self.score(split, k, masks)
                skipped = [(inputs.shown[start + r], unreadable_reason(split.path(r))) for r in np.flatnonzero(~ok)]
                inputs.skipped += skipped
                bar.update(len(split))
                yield Result(self, inputs, split, start, kept=kept, ok=ok, masks=masks, cams=cams, skipped=skipped)

    def predict(self, images, topk=None):
        """Rows for an image path, an (H, W, 3) uint8 RGB array, or a list of them (a list of rows);
        an image that cannot be read is a UserError naming it."""
        one = isinstance(images, (str, Path, np.ndarray))
        items = [images] if one else list(images)
        with tempfile.TemporaryDirectory() as tmp:
            paths = []
            for n, x in enumerate(items):
                if isinstance(x, np.ndarray):  # lossless: the same pixels come back from the file
                    if x.dtype != np.uint8 or x.ndim != 3 or x.shape[2] != 3:
                        raise UserError(f"image {n}: an (H, W, 3) uint8 RGB array, not {x.dtype} {x.shape}")
                    p = Path(tmp) / f"array-{n}.png"
                    cv2.imwrite(str(p), cv2.cvtColor(x, cv2.COLOR_RGB2BGR))
                    x = p
                paths.append(str(Path(x).resolve()))
            inputs = Inputs(paths)
            rows = [row for chunk in self.chunks(inputs, topk) for _, row in chunk.items()]
            if inputs.skipped:
                raise UserError("; ".join(f"{p}: {why}" for p, why in inputs.skipped))
        for row, x in zip(rows, items):
            row["path"] = "<array>" if isinstance(x, np.ndarray) else str(x)
        return rows[0] if one else rows


class Result:
    """One chunk of `Predictor.chunks`: the rows `start`, `start + 1`, ... of the inputs (`split`
    holds them; r below is a row of it); `items()` makes its rows one at a time (boxes from the
    packed masks); `skipped`: [(path, reason)] of its images that could not be read."""

    def __init__(self, predictor, inputs, split, start, *, kept, ok, masks, cams, skipped):
        self.p, self.inputs, self.split, self.start = predictor, inputs, split, start
        self.kept, self.ok, self.masks, self.cams, self.skipped = kept, ok, masks, cams, skipped
        self.crop = predictor.crops(split) if masks is not None else None

    def box(self, r):
        """The mask's box in image pixels (x, y, w, h) of row r, or None."""
        if self.masks is None:
            return None
        mask = self.masks[r]
        b = mask_to_box(mask)
        if b is None:
            return None
        w, h = self.size(r)
        x, y, bw, bh = scale_box(b, w / mask.shape[1], h / mask.shape[0])
        return [int(round(x)), int(round(y)), int(round(bw)), int(round(bh))]

    def size(self, r):
        w, h = self.split.sizes[r]
        if w <= 0 or h <= 0:
            h, w = read_rgb(self.split.path(r)).shape[:2]
        return int(w), int(h)

    def row(self, r):
        top, prob = self.kept["corrected"][r], self.kept["probability"][r]
        preds = [{"category_id": int(self.p.ids[c]), "name": self.p.names[c], "probability": round(float(q), 6)}
                 for c, q in zip(top, prob)]
        return {"path": self.inputs.shown[self.start + r], "predictions": preds, "box": self.box(r)}

    def items(self):
        """(row index in the chunk, row) of every image of it that could be read, in input order."""
        for r in np.flatnonzero(self.ok):
            yield int(r), self.row(r)

    def largest_crop(self, r, img):
        """The largest of row r's test-time crops (x0, y0, x1, y1) in image pixels, as the scoring pass
        cut it from `img` (the same rng draws), or None with the coarse model alone."""
        if self.masks is None:
            return None
        h, w = img.shape[:2]
        rng = np.random.default_rng([self.p.args.seed, 0, image_key(img)])  # datasets.ImageDataset's draw in inference
        boxes = self.crop.boxes(self.masks[r], w, h, rng)
        return max((b for b, _ in boxes), key=lambda b: (b[2] - b[0]) * (b[3] - b[1]))


# ---------------------------------------------------------------- the output files

def output_format(path):
    """'.csv' or '.jsonl' from --out's suffix; a UserError for anything else."""
    suffix = Path(path).suffix.lower()
    if suffix not in FORMATS:
        raise UserError(f"--out {path}: a .csv or a .jsonl file, not {suffix or 'a name without a suffix'}")
    return suffix


def csv_header(k):
    cols = [f"{what}_{i}" for i in range(1, k + 1) for what in ("category_id", "name", "probability")]
    return ["path", *cols, "box_x", "box_y", "box_w", "box_h"]


def write_rows(f, rows, fmt, k):
    """Write `rows` to the binary file `f` as .csv (header `csv_header(k)`; empty cells where an image
    has fewer than k classes or no box) or .jsonl. Returns the number of rows."""
    text = io.TextIOWrapper(f, encoding="utf-8", newline="", write_through=True)
    out = csv.writer(text) if fmt == ".csv" else None
    if out:
        out.writerow(csv_header(k))
    n = 0
    for row in rows:
        if out:
            cells = [v for p in row["predictions"] for v in (p["category_id"], p["name"], p["probability"])]
            cells += [""] * (3 * k - len(cells))
            out.writerow([row["path"], *cells, *(row["box"] or ["", "", "", ""])])
        else:
            text.write(json.dumps(row, ensure_ascii=False) + "\n")
        n += 1
    text.flush()
    text.detach()
    return n


def unreadable_reason(path):
    """Why the loaders could not read the image at `path` (its decoder's reason)."""
    try:
        read_rgb(path)
    except BadImage as e:
        return e.reason
    return "unreadable"


def report_skipped(skipped):
    """One line on stderr for each file that has no row: `skipped PATH: reason`."""
    for path, why in skipped:
        tqdm.write(f"skipped {path}: {why}", file=sys.stderr)  # on a line of its own, under the progress bar


def overlay_names(shown):
    """The overlay file name of each image: its stem + .png; a stem met again gets -2, -3, ..."""
    seen, names = {}, []
    for p in shown:
        stem = Path(p).stem or "image"
        seen[stem] = seen.get(stem, 0) + 1
        names.append(f"{stem}.png" if seen[stem] == 1 else f"{stem}-{seen[stem]}.png")
    return names


def write_overlay(path, result, r, row):
    """--overlay: row r's photo with its CAM, mask box, largest crop and top 3, as a PNG (atomically)."""
    img = read_rgb(result.split.path(r))
    cam = None if result.cams is None else result.cams[r].astype(np.float32)
    top = [(p["name"] or str(p["category_id"]), p["probability"]) for p in row["predictions"][:3]]
    picture = prediction_overlay(img, cam, row["box"], result.largest_crop(r, img), top)
    ok, png = cv2.imencode(".png", cv2.cvtColor(picture, cv2.COLOR_RGB2BGR))
    atomic_write(path, lambda f: f.write(png.tobytes()))
