"""Benchmark images: the toy generator's drawings at iNat's size (longest side 800 px).

data/toy.py draws images with a longest side of 500-800 px. Real iNat images are photos shrunk to
800 px, sharp at that size; a toy drawing enlarged from 500 px would be blurred and decode faster
than any photo. So the benchmark keeps the drawings made at 760 px or more, resizes them to exactly
800 px (at most 5 %), and re-encodes them at the toy's JPEG quality. They are still simpler than
photos (smaller files), so they decode faster than real iNat images do: ratios over decode time
are on the pessimistic side here.
"""
import importlib.util
import json
import shutil
import sys
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
LONG_SIDE = 800


def load_toy():
    """data/toy.py as a module (data/ is not a package)."""
    spec = importlib.util.spec_from_file_location("toy", ROOT / "data" / "toy.py")
    toy = importlib.util.module_from_spec(spec)
    sys.modules["toy"] = toy  # its pool workers pickle functions by module name
    spec.loader.exec_module(toy)
    return toy


def make_images(work, n_images=48, min_long_side=760, seed=0, workers=2):
    """Paths of the benchmark JPEGs under `work`/img800 (made once; a stamp records how)."""
    out = Path(work) / "img800"
    stamp = {"long_side": LONG_SIDE, "min_long_side": min_long_side, "n_images": n_images, "seed": seed, "version": 2}
    if (out / "stamp.json").is_file() and json.loads((out / "stamp.json").read_text()) == stamp:
        return sorted(out.glob("*.jpg"))
    toy = load_toy()
    raw = Path(work) / "toy"
    shutil.rmtree(raw, ignore_errors=True)
    shutil.rmtree(out, ignore_errors=True)
    # about 1 drawing in 7 is drawn at >= 760 px: 325 drawings give about 46
    toy.generate(raw, seed=seed, species=16, max_train=16, val_per_class=6, test_per_class=6, workers=workers)
    quality = getattr(toy, "JPEG_QUALITY", 90)
    out.mkdir(parents=True)
    kept = 0
    for src in sorted(raw.rglob("*.jpg")):
        with Image.open(src) as im:
            w, h = im.size
        if max(w, h) < min_long_side or kept == n_images:
            continue
        dst = out / f"{kept:04d}.jpg"
        if max(w, h) == LONG_SIDE:
            shutil.copyfile(src, dst)
        else:
            s = LONG_SIDE / max(w, h)
            img = cv2.resize(cv2.imread(str(src), cv2.IMREAD_COLOR), (round(w * s), round(h * s)), interpolation=cv2.INTER_CUBIC)
            cv2.imwrite(str(dst), img, [cv2.IMWRITE_JPEG_QUALITY, quality])
        kept += 1
    shutil.rmtree(raw)
    (out / "stamp.json").write_text(json.dumps(stamp))
    return sorted(out.glob("*.jpg"))


def describe(paths):
    """Count, mean size in pixels and mean file size, for the table."""
    sizes = []
    for p in paths:
        with Image.open(p) as im:  # reads the header only
            sizes.append(im.size)
    kb = np.mean([Path(p).stat().st_size for p in paths]) / 1024
    return {"images": len(paths), "long_side_px": int(max(max(s) for s in sizes)),
            "mean_short_side_px": int(np.mean([min(s) for s in sizes])), "mean_file_kb": round(float(kb), 1)}
