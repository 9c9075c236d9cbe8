"""Figure of the training distribution: per-class train counts sorted descending, val alongside.

    python3 fig/distribute.py --data data/toy --out fig/distribute.png

Reads DIR/train2019.json and DIR/val2019.json (only their annotations); writes the PNG atomically.
Relative paths resolve against the repo root.
"""
import argparse
import json
import sys
from collections import Counter
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after the backend is chosen)

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from fgvc.atomic import atomic_write  # noqa: E402
from fgvc.paths import resolve  # noqa: E402


def class_counts(path):
    """{category_id: number of annotations} of one official JSON file; classes without images count 0."""
    with open(path) as f:
        d = json.load(f)
    counts = Counter(a["category_id"] for a in d["annotations"])
    return {c["id"]: counts[c["id"]] for c in d["categories"]}


def plot(train, val, out):
    """Bars of train counts sorted descending, val counts of the same classes as a line; to `out`."""
    order = sorted(train, key=lambda c: (-train[c], c))
    x = range(len(order))
    fig, ax = plt.subplots(figsize=(8, 4), dpi=120)
    ax.bar(x, [train[c] for c in order], width=0.8 if len(order) < 100 else 1.0, color="tab:blue",
           label=f"train ({sum(train.values())} images)")
    ax.plot(x, [val.get(c, 0) for c in order], color="tab:orange", lw=1.5, label=f"val ({sum(val.values())} images)")
    ax.set_yscale("log")
    ax.set_xlim(-0.5, len(order) - 0.5)
    ax.set_xlabel(f"class, sorted by train count ({len(order)} classes)")
    ax.set_ylabel("images per class (log)")
    lo, hi = min(train.values()), max(train.values())
    ax.set_title(f"Training distribution: max {hi}, min {lo}, max/min {hi / max(lo, 1):.1f}")
    ax.legend()
    fig.tight_layout()
    atomic_write(out, lambda f: fig.savefig(f, format="png"))
    plt.close(fig)


def get_args_parser():
    p = argparse.ArgumentParser(description="Plot the per-class train and val counts.")
    p.add_argument("--data", default="data/toy", help="dataset folder with train2019.json (default data/toy)")
    p.add_argument("--out", default="fig/distribute.png", help="PNG to write (default fig/distribute.png)")
    return p


def main(args):
    data, out = resolve(args.data), resolve(args.out)
    plot(class_counts(data / "train2019.json"), class_counts(data / "val2019.json"), out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main(get_args_parser().parse_args())
