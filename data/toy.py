"""A toy iNaturalist 2019: the real layout and JSON schema, small, deterministic, fine-grained.

    python3 data/toy.py --out data/toy --seed 0

Writes (DIR = --out; a relative path resolves against the repo root):
    DIR/train2019.json, DIR/val2019.json, DIR/test2019.json     official schema, test without labels
    DIR/train_val2019/<Super>/<category_id>/<md5>.jpg            train and val images
    DIR/test2019/<md5>.jpg                                       test images
    DIR/truth/test_labels.csv   id,category_id        the test labels (the pipeline never reads truth/)
    DIR/truth/boxes.csv         image_id,x,y,w,h      the specimen's bounding box in every image

Everything is built in DIR.tmp-<pid> and renamed to DIR at the end, so DIR is either complete or absent.

The design makes the solution's premise true: the super-category sets a specimen's base colour and
the genus its shape (both visible when the whole image is shrunk to ~128 px, enough to find it), while
the species sets a fine zero-mean texture on the body (stripes, checker, spots, ...) whose period is
~1/12 of the specimen size: it averages away in the shrunk whole image and stays sharp in a crop of
the specimen. Train counts follow the resampled real iNat 2019 long-tail curve
(data/inat2019_train_class_counts.csv); val and test are uniform. Every image is drawn from its own
generator seeded by (seed, image id), so the output does not depend on the number of workers.
"""
import argparse
import csv
import hashlib
import json
import multiprocessing
import os
import shutil
import time
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
COUNTS_CSV = Path(__file__).resolve().with_name("inat2019_train_class_counts.csv")

# name: (kingdom, phylum, class, base body colour RGB); colours are mid-tones so that the texture
# amplitude never clips and the body's mean colour is exactly the base colour for every species.
SUPERS = {
    "Plants": ("Plantae", "Tracheophyta", "Magnoliopsida", (80, 150, 70)),
    "Insects": ("Animalia", "Arthropoda", "Insecta", (170, 140, 60)),
    "Birds": ("Animalia", "Chordata", "Aves", (70, 110, 170)),
    "Fungi": ("Fungi", "Basidiomycota", "Agaricomycetes", (160, 100, 70)),
    "Reptiles": ("Animalia", "Chordata", "Reptilia", (150, 70, 80)),
    "Amphibians": ("Animalia", "Chordata", "Amphibia", (110, 80, 150)),
}
SHAPES = ("ellipse", "star", "teardrop", "trilobe", "blob")  # one per genus within a super-category
TEXTURES = ("stripes", "checker", "spots", "rings", "grid", "zigzag")  # one per species within a genus
LICENSES = [
    {"id": 1, "name": "Attribution-NonCommercial License", "url": "http://creativecommons.org/licenses/by-nc/4.0/"},
    {"id": 2, "name": "Attribution License", "url": "http://creativecommons.org/licenses/by/4.0/"},
    {"id": 3, "name": "Attribution-ShareAlike License", "url": "http://creativecommons.org/licenses/by-sa/4.0/"},
    {"id": 4, "name": "No known copyright restrictions", "url": "http://flickr.com/commons/usage/"},
]
INFO = {"year": 2019, "version": "toy-1", "description": "Toy iNaturalist 2019 (synthetic, for tests)",
        "contributor": "data/toy.py", "url": "", "date_created": "2019-03-01"}
SYLLABLES = ("ca", "lo", "mi", "ra", "te", "phy", "xo", "ny", "sa", "du", "ve", "gli", "pho", "ta", "ri", "no")
TEXTURE_AMP = 55  # luminance swing of the species texture, +/- around the base colour
PERIOD_RATIO = 12  # texture period = specimen size / PERIOD_RATIO (at least MIN_PERIOD px)
MIN_PERIOD = 3.0
DECOYS = 0.1  # share of background shapes in a colour close to a body colour
MUTED = 0.4  # how far background colours are pulled towards grey
DEFOCUS = 1 / 250  # background blur sigma, as a fraction of the image's long side
JPEG_QUALITY = 90


# ---------------------------------------------------------------- the plan: taxonomy, counts, ids

def latin(rng, n, suffix=""):
    """A capitalised fake Latin word of n random syllables and a suffix."""
    return suffixed("".join(rng.choice(SYLLABLES, size=n)), suffix).capitalize()


def suffixed(stem, suffix):
    return (stem[:-1] if suffix and stem[-1] in "aeiouy" else stem) + suffix


def make_taxonomy(species, rng):
    """Categories (official fields, no id yet) plus each one's design: super, genus shape, texture.

    The species are spread round-robin over G = max(2, round(K/3)) genera and the genera over
    S = min(6, max(2, ceil(G/2))) super-categories, in taxonomy order (super, genus, species).
    """
    n_genera = max(2, round(species / 3))
    n_supers = min(len(SUPERS), max(2, -(-n_genera // 2)))
    supers = list(SUPERS)[:n_supers]
    genera, stems = [], set()
    for g in range(n_genera):
        s = g % n_supers
        local = g // n_supers  # index of this genus inside its super-category
        stem = latin(rng, 2)
        while suffixed(stem, "us") in stems:  # genus names are unique
            stem = latin(rng, 2)
        stems.add(suffixed(stem, "us"))
        genera.append({
            "super": supers[s], "genus": suffixed(stem, "us"), "order": suffixed(stem, "ales"),
            "family": suffixed(stem, "idae"),
            "shape": SHAPES[(local + s) % len(SHAPES)],
            "blob": rng.uniform(-1, 1, size=(3, 2)).round(3).tolist(),  # fixed outline of a "blob" genus
        })
    cats = []
    for k in range(species):
        g = k % n_genera
        j = k // n_genera  # index of this species inside its genus
        gen = genera[g]
        kingdom, phylum, klass, colour = SUPERS[gen["super"]]
        epithet = latin(rng, 2, rng.choice(["a", "is", "um", "ii"])).lower()  # species names are unique
        while any(c["name"] == f"{gen['genus']} {epithet}" for c in cats):
            epithet = latin(rng, 2, rng.choice(["a", "is", "um", "ii"])).lower()
        cats.append({
            "name": f"{gen['genus']} {epithet}", "kingdom": kingdom, "phylum": phylum, "class": klass,
            "order": gen["order"], "family": gen["family"], "genus": gen["genus"],
            "design": {"super": gen["super"], "colour": colour, "shape": gen["shape"], "blob": gen["blob"],
                       "texture": TEXTURES[(j + g) % len(TEXTURES)]},
        })
    cats.sort(key=lambda c: (list(SUPERS).index(c["design"]["super"]), c["genus"], c["name"]))
    return cats


def real_curve():
    """The real iNat 2019 per-class train counts, sorted descending (1010 values)."""
    with open(COUNTS_CSV, newline="") as f:
        counts = [int(row["train_images"]) for row in csv.DictReader(f)]
    return np.sort(np.array(counts, dtype=float))[::-1]


def resampled_curve(k):
    """The real sorted curve read at k evenly spaced quantile positions, first and last included."""
    curve = real_curve()
    return np.interp(np.linspace(0, len(curve) - 1, k), np.arange(len(curve)), curve)


def train_counts(k, max_train):
    """Sorted (descending) toy train counts: the resampled real curve scaled to max = max_train.

    max/min follows the real 500/16 = 31.25 (30 at max_train 120, after rounding); at least 1.
    """
    curve = resampled_curve(k)
    return np.maximum(1, np.round(curve * max_train / curve[0])).astype(int)


def make_plan(seed=0, species=24, max_train=120, val_per_class=10, test_per_class=10):
    """Categories and the list of images to draw, without drawing them.

    Returns (categories, images): categories carry official fields plus "design"; images are dicts
    {id, split, category_id, file_name}, ids train first, then val, then test, each split in a
    shuffled class order (ids carry no label).
    """
    if species < 2:
        raise ValueError("--species must be at least 2")
    rng = np.random.default_rng(seed)
    cats = make_taxonomy(species, rng)
    ids = rng.choice(1010, size=species, replace=False)  # taxonomy order is not id order
    if np.all(np.diff(ids) > 0):
        ids = ids[::-1]
    for cat, cid in zip(cats, ids):
        cat["id"] = int(cid)
    counts = {"train": train_counts(species, max_train)[rng.permutation(species)],
              "val": np.full(species, val_per_class), "test": np.full(species, test_per_class)}
    images, next_id = [], 0
    for split in ("train", "val", "test"):
        labels = np.repeat(np.arange(species), counts[split])
        for k in labels[rng.permutation(len(labels))]:
            cat = cats[k]
            name = hashlib.md5(f"toy2019-{seed}-{next_id}".encode()).hexdigest() + ".jpg"
            folder = "test2019" if split == "test" else f"train_val2019/{cat['design']['super']}/{cat['id']}"
            images.append({"id": next_id, "split": split, "category_id": cat["id"], "file_name": f"{folder}/{name}"})
            next_id += 1
    return cats, images


# ---------------------------------------------------------------- drawing one image

def outline(shape, blob, n=96):
    """Closed outline of a genus shape, (n, 2) points around the origin, radius about 1."""
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    if shape == "ellipse":
        return np.stack([np.cos(t), 0.5 * np.sin(t)], 1)
    if shape == "teardrop":
        return np.stack([np.cos(t), 0.65 * np.sin(t) * np.sin(t / 2)], 1)
    if shape == "star":
        r = 1 + 0.35 * np.cos(5 * t)
    elif shape == "trilobe":
        r = 1 + 0.3 * np.cos(3 * t)
    else:  # blob: a fixed random low-frequency outline per genus
        r = 1 + sum(0.18 * a * np.cos((i + 2) * t + 3 * b) for i, (a, b) in enumerate(blob))
    return np.stack([r * np.cos(t), r * np.sin(t)], 1)


def texture(name, u, v, period, phase):
    """Species pattern in the body frame (u, v in px): values in [-1, 1], mean about 0."""
    a = 2 * np.pi * (u / period + phase[0])
    b = 2 * np.pi * (v / period + phase[1])
    if name == "stripes":
        return np.sign(np.sin(a))
    if name == "checker":
        return np.sign(np.sin(a) * np.sin(b))
    if name == "spots":
        d2 = (np.mod(u / period + phase[0], 1) - 0.5) ** 2 + (np.mod(v / period + phase[1], 1) - 0.5) ** 2
        return np.where(d2 < 0.3 ** 2, 1.0, -0.4)
    if name == "rings":
        return np.sign(np.sin(2 * np.pi * np.hypot(u, v) / period + phase[0]))
    if name == "grid":
        lines = (np.mod(u / period + phase[0], 1) < 0.3) | (np.mod(v / period + phase[1], 1) < 0.3)
        return np.where(lines, 1.0, -1.0)
    if name == "zigzag":
        tri = np.abs(np.mod(v / period + phase[1], 1) - 0.5)  # triangle wave along v
        return np.sign(np.sin(a + 2 * np.pi * tri))
    raise ValueError(name)


def background(rng, h, w):
    """Smooth random colour gradient plus many flat shapes (a few in body colours), muted and out of
    focus, as behind a close-up of a specimen: the specimen is the sharp, textured thing in the photo."""
    img = cv2.resize(rng.integers(30, 226, size=(3, 3, 3)).astype(np.uint8), (w, h), interpolation=cv2.INTER_LINEAR)
    img = np.ascontiguousarray(img)
    bodies = [np.array(c) for _, _, _, c in SUPERS.values()]
    side = max(h, w)
    for _ in range(int(rng.integers(40, 90))):
        if rng.random() < DECOYS:  # a flat decoy in a colour close to some body colour
            colour = np.clip(bodies[rng.integers(len(bodies))] + rng.integers(-20, 21, 3), 0, 255)
        else:
            colour = rng.integers(0, 256, 3)
            colour = (1 - MUTED) * colour + MUTED * colour.mean()  # less saturated than the bodies
        colour = tuple(int(c) for c in colour)
        size = side * np.exp(rng.uniform(np.log(0.01), np.log(0.12)))
        cx, cy = rng.uniform(0, w), rng.uniform(0, h)
        kind = rng.integers(3)
        if kind == 0:
            axes = (max(1, int(size)), max(1, int(size * rng.uniform(0.3, 1))))
            cv2.ellipse(img, (int(cx), int(cy)), axes, float(rng.uniform(0, 360)), 0, 360, colour, -1, cv2.LINE_AA)
        elif kind == 1:
            n = int(rng.integers(3, 8))
            ang = np.sort(rng.uniform(0, 2 * np.pi, n))
            rad = size * rng.uniform(0.4, 1.2, n)
            pts = np.stack([cx + rad * np.cos(ang), cy + rad * np.sin(ang)], 1).astype(np.int32)
            cv2.fillPoly(img, [pts], colour, cv2.LINE_AA)
        else:
            ang = rng.uniform(0, np.pi)
            dx, dy = size * np.cos(ang), size * np.sin(ang)
            thick = max(2, int(size * rng.uniform(0.05, 0.25)))
            cv2.line(img, (int(cx - dx), int(cy - dy)), (int(cx + dx), int(cy + dy)), colour, thick, cv2.LINE_AA)
    return cv2.GaussianBlur(img, (0, 0), side * DEFOCUS)


def draw(seed, image_id, design):
    """One RGB image with one specimen of `design`; returns (image, box (x, y, w, h))."""
    rng = np.random.default_rng([seed, image_id])
    long_side = int(rng.integers(500, 801))
    short_side = int(round(long_side * rng.uniform(0.6, 1.0)))
    w, h = (long_side, short_side) if rng.random() < 0.5 else (short_side, long_side)
    img = background(rng, h, w).astype(np.float32)

    # placement: box area fraction log-uniform in [1 %, 10 %], random rotation, fully inside
    frac = np.exp(rng.uniform(np.log(0.01), np.log(0.10)))
    theta = rng.uniform(0, 2 * np.pi)
    rot = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    pts = outline(design["shape"], design["blob"]) @ rot.T
    span = pts.max(0) - pts.min(0)
    scale = min(np.sqrt(frac * w * h / (span[0] * span[1])), 0.95 * w / span[0], 0.95 * h / span[1])
    pts = (pts - pts.min(0)) * scale  # box now starts at (0, 0)
    bw, bh = int(np.ceil(span[0] * scale)) + 2, int(np.ceil(span[1] * scale)) + 2
    x0, y0 = int(rng.integers(0, w - bw + 1)), int(rng.integers(0, h - bh + 1))

    mask = np.zeros((bh, bw), np.uint8)
    cv2.fillPoly(mask, [np.round((pts + 1) * 16).astype(np.int32)], 255, cv2.LINE_AA, shift=4)
    alpha = mask.astype(np.float32) / 255

    # species texture in the body frame, made exactly zero-mean over the body
    period = max(MIN_PERIOD, np.sqrt(span[0] * span[1]) * scale / PERIOD_RATIO * rng.uniform(0.9, 1.1))
    yy, xx = np.mgrid[0:bh, 0:bw].astype(np.float32)
    centre = np.array([bw, bh]) / 2
    u, v = np.tensordot(rot.T, np.stack([xx - centre[0], yy - centre[1]]), 1)
    pattern = texture(design["texture"], u, v, period, rng.uniform(0, 1, 2))
    pattern = pattern - (pattern * alpha).sum() / alpha.sum()
    colour = np.array(design["colour"], np.float32) + rng.uniform(-10, 10, 3).astype(np.float32)
    body = colour + TEXTURE_AMP * pattern[..., None].astype(np.float32)

    patch = img[y0:y0 + bh, x0:x0 + bw]
    img[y0:y0 + bh, x0:x0 + bw] = patch * (1 - alpha[..., None]) + body * alpha[..., None]
    img += rng.standard_normal(img.shape, dtype=np.float32) * 3
    ys, xs = np.nonzero(mask >= 128)
    box = (x0 + int(xs.min()), y0 + int(ys.min()), int(xs.max() - xs.min()) + 1, int(ys.max() - ys.min()) + 1)
    return np.clip(img + 0.5, 0, 255).astype(np.uint8), box


def render(task):
    """Worker: draw one image and write it as JPEG; returns (image id, width, height, box)."""
    seed, image_id, design, path = task
    img, box = draw(seed, image_id, design)
    ok, data = cv2.imencode(".jpg", cv2.cvtColor(img, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    assert ok, path
    Path(path).write_bytes(data.tobytes())
    return image_id, img.shape[1], img.shape[0], box


def _init_worker():
    cv2.setNumThreads(1)


# ---------------------------------------------------------------- the dataset on disk

def write_json(path, obj):
    path.write_text(json.dumps(obj, separators=(",", ":")))


def write_csv(path, header, rows):
    with open(path, "w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)


def generate(out, seed=0, species=24, max_train=120, val_per_class=10, test_per_class=10, workers=2,
             overwrite=False):
    """Write the toy dataset to `out` (see the module docstring); returns a summary dict."""
    start = time.time()
    out = Path(out)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists; delete it or pass --overwrite")
    if out.exists() and not (out / "train2019.json").exists():
        raise FileExistsError(f"{out} exists and is not a toy dataset; not overwriting it")
    cats, images = make_plan(seed, species, max_train, val_per_class, test_per_class)
    design = {c["id"]: c["design"] for c in cats}

    tmp = out.with_name(f"{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    for folder in sorted({str(Path(im["file_name"]).parent) for im in images}) + ["truth"]:
        (tmp / folder).mkdir(parents=True, exist_ok=True)
    tasks = [(seed, im["id"], design[im["category_id"]], str(tmp / im["file_name"])) for im in images]
    if workers > 1:
        ctx = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn")
        with ctx.Pool(workers, initializer=_init_worker) as pool:
            drawn = pool.map(render, tasks, chunksize=8)
    else:
        drawn = [render(t) for t in tasks]
    size = {i: (w, h, box) for i, w, h, box in drawn}

    rng = np.random.default_rng([seed, 1 << 30])  # json order and image metadata, apart from the pixels
    categories = [{k: c[k] for k in ("id", "name", "kingdom", "phylum", "class", "order", "family", "genus")}
                  for c in sorted(cats, key=lambda c: c["id"])]
    ann_id = 0
    for split in ("train", "val", "test"):
        part = [im for im in images if im["split"] == split]
        records = [{"id": im["id"], "width": size[im["id"]][0], "height": size[im["id"]][1],
                    "file_name": im["file_name"], "license": int(rng.integers(1, len(LICENSES) + 1)),
                    "rights_holder": latin(rng, 3)} for im in part]
        obj = {"info": INFO, "images": [records[i] for i in rng.permutation(len(records))]}
        if split != "test":
            obj["categories"] = categories
            anns = []
            for i in rng.permutation(len(part)):
                anns.append({"id": ann_id, "image_id": part[i]["id"], "category_id": part[i]["category_id"]})
                ann_id += 1
            obj["annotations"] = anns
        obj["licenses"] = LICENSES
        write_json(tmp / f"{split}2019.json", obj)
    write_csv(tmp / "truth" / "test_labels.csv", ["id", "category_id"],
              [(im["id"], im["category_id"]) for im in images if im["split"] == "test"])
    write_csv(tmp / "truth" / "boxes.csv", ["image_id", "x", "y", "w", "h"],
              [(i, *size[i][2]) for i in sorted(size)])

    if out.exists():  # --overwrite of an earlier toy dataset
        old = out.with_name(f"{out.name}.old-{os.getpid()}")
        out.rename(old)
        shutil.rmtree(old)
    tmp.rename(out)
    n = {s: sum(im["split"] == s for im in images) for s in ("train", "val", "test")}
    return {"out": str(out), "species": species, **n, "seconds": round(time.time() - start, 1)}


def get_args_parser():
    p = argparse.ArgumentParser(description="Generate the toy iNaturalist 2019 dataset.", add_help=True)
    # where
    p.add_argument("--out", default="data/toy", help="output folder, relative to the repo root (default data/toy)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing toy dataset at --out")
    p.add_argument("--seed", type=int, default=0, help="same seed, byte-identical output (default 0)")
    # sizes
    p.add_argument("--species", type=int, default=24, help="number of species, 16..32 for the design (default 24)")
    p.add_argument("--max-train", type=int, default=120, help="train images of the largest class (default 120)")
    p.add_argument("--val-per-class", type=int, default=10, help="val images per class (default 10)")
    p.add_argument("--test-per-class", type=int, default=10, help="test images per class (default 10)")
    # speed
    p.add_argument("--workers", type=int, default=2, help="processes drawing images (default 2)")
    return p


def main(args):
    out = Path(args.out).expanduser()
    out = out if out.is_absolute() else ROOT / out
    s = generate(out, seed=args.seed, species=args.species, max_train=args.max_train,
                 val_per_class=args.val_per_class, test_per_class=args.test_per_class,
                 workers=args.workers, overwrite=args.overwrite)
    print(f"toy: {s['species']} species, {s['train']} train / {s['val']} val / {s['test']} test images "
          f"-> {s['out']} in {s['seconds']} s")


if __name__ == "__main__":
    main(get_args_parser().parse_args())
