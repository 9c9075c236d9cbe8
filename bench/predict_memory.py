"""Peak memory of predict.py as the number of photos grows: it must stay flat (issue 23.4).

    python3 bench/predict_memory.py                    # 1,000 and 20,000 photos -> the ratio (<= 1.3)
    python3 bench/predict_memory.py --sizes 200 2000   # other sizes

A folder of N photos (hard links of 4 tiny 32 x 24 JPEGs, 1,000 a sub-folder, found by predict.py's
recursive, content-sniffing walk) and two checkpoints of randomly initialised resnet18 models that
store class names and train counts (coarse: 32 px, short side 32 localized, 32 x 32 masks; fine:
32 px). predict.py runs as users run it, a subprocess through bench/peak_rss.py, with 2 loader
processes, batch 64, one crop an image (--tta-factors 1 --tta-mirror-factors: the 16 default
crops would only multiply the model's time), fp32 on the CPU. Reported per size: main_mb (peak
resident memory of predict.py's process, VmHWM), tree_mb (peak PSS with its loader processes) and
seconds; the ratio is larger / smaller of each. Writes --work/predict_memory.json.
"""
import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]; sys.path.insert(0, str(ROOT))

from bench.memory import CATEGORY_IDS, peak_rss_mb  # noqa: E402
from bench.run import cpu_model  # noqa: E402
from bench.scale import Linker  # noqa: E402
from fgvc.checkpoint import save_checkpoint  # noqa: E402
from fgvc.stages import build_model, model_args  # noqa: E402

PER_FOLDER = 1000


def make_checkpoints(work):
    """{"coarse": dir, "fine": dir} of random resnet18 models at 32 px, with class names and counts."""
    info = {"class_names": [f"species {c}" for c in CATEGORY_IDS], "supercategories": None, "class_counts": [30, 10, 2]}
    out = {}
    for kind, args in (("coarse", {"img_size": 32, "resize": 32, "mask_size": [32, 32]}), ("fine", {"img_size": 32})):
        d = Path(work) / kind
        d.mkdir(parents=True, exist_ok=True)
        model = build_model(kind, "resnet18", len(CATEGORY_IDS))
        save_checkpoint(d / "checkpoint.pt", model, args={**args, "arch": "resnet18"},
                        model_args=model_args(kind, "resnet18", len(CATEGORY_IDS), False), class_ids=CATEGORY_IDS, info=info)
        out[kind] = d
    return out


def photos(work, n, linker):
    folder = Path(work) / f"photos_{n}"
    for i in range(n):
        p = folder / f"{i // PER_FOLDER:04d}" / f"{i:08d}.jpg"
        p.parent.mkdir(parents=True, exist_ok=True)
        linker.link(p)
    return folder


def run(work, n, linker, ckpts):
    out = Path(work) / f"predictions_{n}.csv"
    cmd = [ROOT / "predict.py", photos(work, n, linker), "--coarse", ckpts["coarse"], "--fine", ckpts["fine"], "--out", out,
           "--device", "cpu", "--workers", "2", "--batch-size", "64", "--amp", "off", "--tta-factors", "1", "--tta-mirror-factors"]
    log = Path(work) / f"predict_{n}.log"
    rc, mb, seconds = peak_rss_mb(cmd, log)
    rows = sum(1 for _ in open(out)) - 1 if out.is_file() else 0
    if rc != 0 or rows != n:
        raise RuntimeError(f"predict.py on {n} photos exited {rc} with {rows} rows; see {log}:\n{log.read_text()[-2000:]}")
    return {**mb, "seconds": round(seconds, 1)}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", default="/tmp/predict_memory", help="scratch folder (default: /tmp/predict_memory)")
    p.add_argument("--sizes", type=int, nargs=2, default=(1000, 20000), help="the two numbers of photos (default: 1000 20000)")
    a = p.parse_args()
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    ckpts = make_checkpoints(work)
    linker = Linker(work / "pool", max(a.sizes))
    res = {"machine": f"{cpu_model()}", "sizes": list(a.sizes)}
    for n in a.sizes:
        res[n] = run(work, n, linker, ckpts)
        print(f"{n:>7} photos: main {res[n]['main_mb']:.0f} MB, with loaders {res[n]['tree_mb']:.0f} MB, {res[n]['seconds']:.0f} s", flush=True)
    small, large = (res[n] for n in a.sizes)
    res["main_ratio"] = round(large["main_mb"] / small["main_mb"], 3)
    res["tree_ratio"] = round(large["tree_mb"] / small["tree_mb"], 3)
    print(f"peak memory ratio {a.sizes[1]} / {a.sizes[0]} photos: main {res['main_ratio']:.3f}, with loaders {res['tree_ratio']:.3f} "
          f"(target <= 1.3)", flush=True)
    (work / "predict_memory.json").write_text(json.dumps(res, indent=1, default=str) + "\n")


if __name__ == "__main__":
    main()
