"""What the tests import (`from harness import ...`; tests/conftest.py makes fixtures of some of it):
the repo root, tiny datasets in the iNat 2019 layout, bad and odd image files, repo scripts run in a
subprocess, and the stage scripts run in-process, as their command lines do (no interpreter
start-up per case). The `run_cli` fixture (conftest.py) wraps `run_stage` with pytest's output
capture."""
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # fgvc, bench and data importable however pytest was started

from fgvc import cli  # noqa: E402

COLORS = [(230, 40, 40), (40, 200, 40), (40, 40, 230), (220, 220, 40), (200, 40, 200)]

# ---------------------------------------------------------------- tiny runs: the one set of flags

# The model and machine of every tiny run: resnet18 from scratch, 64 px, the CPU, batch 8, fp32.
TINY = ["--arch", "resnet18", "--pretrained", "none", "--img-size", "64", "--device", "cpu", "--workers", "0",
        "--batch-size", "8", "--amp", "off"]
# The coarse stage's geometry in the runs tests break or inspect: at 48 px resnet18's last map is
# 2 x 2, so a CAM is not flat (at 32 px it is 1 x 1); 32 x 32 masks, the smallest allowed.
COARSE_TINY = [*TINY, "--img-size", "48", "--resize", "56", "--mask-size", "32", "32"]
FINE_TINY = [*TINY, "--img-size", "32"]
SCORING_TINY = ["--device", "cpu", "--workers", "0", "--amp", "off"]
STEPS_PER_EPOCH = 3  # make_dataset's 24 train images at batch 8


def coarse_args(data, out, *extra):
    """A tiny coarse run's command line; its sample figure beside --out, never the repo's fig/sample.png."""
    fig = Path(out).parent / f"{Path(out).name}_sample.png"
    return ["--data", data, "--out", out, *COARSE_TINY, "--figure", fig, *extra]


def fine_args(data, out, coarse, *extra):
    return ["--data", data, "--out", out, "--coarse", coarse, *FINE_TINY, *extra]


def scoring_args(data, coarse, fine, submission, *extra):
    return ["--data", data, "--coarse", coarse, "--fine", fine, "--submission", submission, *SCORING_TINY, *extra]



def lock_holder(flag, target):
    """Another run holding `target` (the output of `flag`) locked, as fgvc.outputs.claim does: a child
    process that sleeps once it has the lock. Kill it to release it."""
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from fgvc import outputs; "
         f"outputs.claim(None, [({flag!r}, sys.argv[1])]); print('locked', flush=True); time.sleep(300)", str(target)],
        cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    return holder


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


def run_script(*args, cwd=ROOT, check=True, timeout=600, env_extra=None):
    """Run a repo script with this interpreter (`env_extra`: variables added to its environment);
    returns the CompletedProcess (text)."""
    env = {**os.environ, **env_extra} if env_extra else None
    p = subprocess.run([sys.executable, *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)
    if check and p.returncode != 0:
        raise AssertionError(f"{args} exited {p.returncode}\nstdout:\n{p.stdout[-3000:]}\nstderr:\n{p.stderr[-3000:]}")
    return p


def spoil(path, kind):
    """Rewrite an image file as a bad or odd one (odd ones keep the picture)."""
    rgb = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
    bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    jpeg = cv2.imencode(".jpg", bgr)[1].tobytes()
    path.unlink()
    if kind == "truncated":
        path.write_bytes(jpeg[: len(jpeg) // 2])
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "text":
        path.write_text("this is not an image\n")
    elif kind == "directory":  # unreadable (root reads through chmod 000, not through a directory)
        path.mkdir()
    elif kind == "gray":
        path.write_bytes(cv2.imencode(".jpg", cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY))[1].tobytes())
    elif kind == "gray16_png":
        path.write_bytes(cv2.imencode(".png", cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY).astype(np.uint16) * 257)[1].tobytes())
    elif kind == "cmyk":
        Image.fromarray(rgb).convert("CMYK").save(path, "JPEG")
    elif kind == "rgba_png":
        path.write_bytes(cv2.imencode(".png", np.dstack([bgr, np.full(bgr.shape[:2], 200, np.uint8)]))[1].tobytes())
    elif kind == "png_bytes":
        path.write_bytes(cv2.imencode(".png", bgr)[1].tobytes())


def jpeg_bytes(h=60, w=80):
    img = np.random.default_rng(0).integers(0, 255, (h, w, 3), dtype=np.uint8)
    return cv2.imencode(".jpg", img)[1].tobytes()


def bomb(data):
    """The same JPEG with its frame header declaring 30000 x 30000 pixels."""
    b = bytearray(data)
    sof = next(i for i in range(2, len(b) - 1) if b[i] == 0xFF and b[i + 1] in (0xC0, 0xC2))
    b[sof + 5 : sof + 9] = (30000).to_bytes(2, "big") * 2
    return bytes(b)


# ---------------------------------------------------------------- the stages in-process

_STAGES = {}


def stage(script):
    """The stage script as a module (its main() and get_args_parser()), loaded once."""
    if script not in _STAGES:
        spec = importlib.util.spec_from_file_location("stage_" + script.replace("/", "_")[:-3], ROOT / script)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        _STAGES[script] = module
    return _STAGES[script]


def call(script, *args):
    """Run a stage in-process without the CLI wrapper (fixtures); errors propagate."""
    s = stage(script)
    s.main(s.get_args_parser().parse_args([str(a) for a in args]))


def run_stage(script, *args):
    """Run a stage through cli.run with sys.argv set, as the command line does; returns its exit code."""
    s = stage(script)
    argv = sys.argv
    sys.argv = [script, *map(str, args)]
    try:
        cli.run(s.main, s.get_args_parser())
        return 0
    except SystemExit as e:
        return e.code
    finally:
        sys.argv = argv


def error_line(err):
    """The one `error: ...` line of a failed run (tqdm may have written progress before it)."""
    lines = [l for l in err.replace("\r", "\n").splitlines() if l.startswith("error: ")]
    assert len(lines) == 1, err[-2000:]
    return lines[0]
