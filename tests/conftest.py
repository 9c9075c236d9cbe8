"""Shared fixtures: tiny datasets in the iNat 2019 layout, written in a few milliseconds."""
import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

COLORS = [(230, 40, 40), (40, 200, 40), (40, 40, 230), (220, 220, 40), (200, 40, 200)]


def make_dataset(root, category_ids=(40, 5, 17), per_class=(8, 3, 3), seed=0, size=(120, 160)):
    """A small, learnable dataset: one coloured square per image (colour = class) on noise.

    Category ids are not 0..K-1 and not sorted; json lists are not parallel. Returns the root.
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    images = {s: [] for s in ("train", "val", "test")}
    anns = {s: [] for s in ("train", "val")}
    boxes, labels = [], []
    image_id = 1000
    for split, n in zip(("train", "val", "test"), per_class):
        for k, cid in enumerate(category_ids):
            for _ in range(n):
                h, w = int(rng.integers(size[0], size[1])), int(rng.integers(size[0], size[1]))
                img = rng.integers(0, 80, (h, w, 3)).astype(np.uint8)
                s = int(rng.integers(24, 40))
                x, y = int(rng.integers(0, w - s)), int(rng.integers(0, h - s))
                img[y : y + s, x : x + s] = COLORS[k % len(COLORS)]
                if split == "test":
                    name = f"test2019/{image_id:032x}.jpg"
                    labels.append((image_id, cid))
                else:
                    name = f"train_val2019/Plants/{cid}/{image_id:032x}.jpg"
                    anns[split].append({"id": 5000 + image_id, "image_id": image_id, "category_id": cid})
                path = root / name
                path.parent.mkdir(parents=True, exist_ok=True)
                cv2.imwrite(str(path), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
                images[split].append({"id": image_id, "file_name": name, "width": w, "height": h, "license": 1})
                boxes.append((image_id, x, y, s, s))
                image_id += 1
    cats = [{"id": c, "name": f"species {c}", "kingdom": "Plantae", "phylum": "p", "class": "c", "order": "o",
             "family": "f", "genus": "g"} for c in category_ids]
    for split in ("train", "val"):
        doc = {"info": {}, "images": images[split][::-1], "annotations": anns[split], "categories": cats, "licenses": []}
        (root / f"{split}2019.json").write_text(json.dumps(doc))
    (root / "test2019.json").write_text(json.dumps({"info": {}, "images": images["test"], "licenses": []}))
    (root / "truth").mkdir(exist_ok=True)
    (root / "truth" / "boxes.csv").write_text("image_id,x,y,w,h\n" + "".join(f"{i},{x},{y},{w},{h}\n" for i, x, y, w, h in boxes))
    (root / "truth" / "test_labels.csv").write_text("id,category_id\n" + "".join(f"{i},{c}\n" for i, c in labels))
    return root


@pytest.fixture
def dataset(tmp_path):
    return make_dataset(tmp_path / "ds")


def run_script(*args, cwd=ROOT, check=True, timeout=600):
    """Run a repo script with this interpreter; returns the CompletedProcess (text)."""
    p = subprocess.run([sys.executable, *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=timeout)
    if check and p.returncode != 0:
        raise AssertionError(f"{args} exited {p.returncode}\nstdout:\n{p.stdout[-3000:]}\nstderr:\n{p.stderr[-3000:]}")
    return p


TINY = ["--arch", "resnet18", "--pretrained", "none", "--img-size", "64", "--device", "cpu", "--workers", "0",
        "--batch-size", "8", "--amp", "off"]


@pytest.fixture
def run_cli(capsys):
    """Run a stage in-process through cli.run, as the command line does; returns (exit code, stdout, stderr)."""
    from harness import run_stage

    def go(script, *args):
        capsys.readouterr()
        code = run_stage(script, *args)
        out, err = capsys.readouterr()
        return code, out, err

    return go
