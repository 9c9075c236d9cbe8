"""What each part of the method buys: the ablation table, with 95 % intervals and paired sign tests.

    make ablate                                   # the toy, after `make demo` (test-time rows)
    python3 bench/ablate.py --data DIR --coarse C --fine F --rows test,oracle,whole,predicted,on-mask

Reads  --data (json, images, truth/test_labels.csv: hidden test labels are required,
       truth/boxes.csv for the oracle row), --coarse/{checkpoint.pt,masks_*.npz}, --fine/checkpoint.pt.
Writes --out/ablation.md (the table) and --out/ablation.png (the tau curve, the rows as bars with
       their intervals); retrained variants under --work (default runs/ablate).

Every row is scored on the hidden test labels against the default (the original: 16 crops, the
CAM masks, tau = 1): top-1 and top-5 error with a 95 % Wilson interval, and the paired difference
in top-1 error with the p-value of an exact sign test on the images where exactly one of the two
is right. Row groups (--rows):
  test       no retraining: one crop at the mask's centre (k = 1, 2, 4) vs the 16 crops vs the 8 on
             the image only; tau 0 and tau picked on val (and the tau curve, val and test); the
             CAM threshold of the val/test masks (re-localized once, thresholded several ways).
  oracle     the fine stage retrained on crops of the true boxes (truth/boxes.csv), scored with them.
  whole      the fine stage retrained on whole images (empty masks: the crop rule's fallback).
  predicted  train masks from the CAM of the predicted class instead of the true one.
  on-mask    the fine stage retrained with --crop-centre on-mask.
The retrained rows replay the fine run's own config (every flag its checkpoint records), only the
named one changed, and are scored with their own crop rule.
"""
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]; sys.path.insert(0, str(ROOT))

import numpy as np

from fgvc import cli
from fgvc.annotations import class_counts, class_prior, load_dataset
from fgvc.boxes import read_boxes
from fgvc.cam import cams_to_masks, localize
from fgvc.checkpoint import load_checkpoint
from fgvc.config import SCORING_RUNTIME, CoarseConfig, FineConfig, Flag, Section, StageConfig
from fgvc.crop import TTA_FACTORS, TTA_MIRROR_FACTORS, CropTransform, MultiCropTransform
from fgvc.datasets import ImageDataset
from fgvc.errors import UserError, last_line
from fgvc.inference import score, steady_heap
from fgvc.masks import load_masks, masks_path, save_masks, split_fingerprint
from fgvc.metrics import sign_test, topk, wilson_interval
from fgvc.paths import resolve
from fgvc.prior import TAU_GRID, choose_tau, prior_correct
from fgvc.stages import load_stage
from fgvc.submission import read_labels
from fgvc.transforms import ShortSideTransform

ROW_GROUPS = ("test", "oracle", "whole", "predicted", "on-mask")
THRESHOLDS = (0.5, 0.6, 0.8)


AblateConfig = StageConfig("ablate", "Ablation table on a dataset with hidden test labels", (
    Section("inputs and outputs", (
        Flag("data", str, "data/toy", "dataset root with truth/test_labels.csv"),
        Flag("coarse", str, "runs/toy/coarse", "coarse stage directory"),
        Flag("fine", str, "runs/toy/fine", "fine stage directory"),
        Flag("out", str, "fig", "where ablation.md and ablation.png go"),
        Flag("work", str, "runs/ablate", "retrained variants"),
        Flag("rows", str, "test", f"comma-separated row groups of {', '.join(ROW_GROUPS)}, or all"),
    )),
    SCORING_RUNTIME,
))


def get_args_parser():
    return cli.parser(AblateConfig)


# ---------------------------------------------------------------- statistics of one row

class Row:
    """One variant's test predictions, scored against the labels and compared with the default."""

    def __init__(self, name, top, labels, seconds=None):
        self.name, self.top, self.seconds = name, top, seconds
        hit = top == labels[:, None]
        self.right1, self.right5 = hit[:, 0], hit.any(axis=1)

    def errors(self):
        n = len(self.right1)
        out = []
        for right in (self.right1, self.right5):
            k = int((~right).sum())
            out.append((k / n, *wilson_interval(k, n)))
        return out

    def versus(self, default):
        """(difference in top-1 error, only-default-right, only-this-right, p) against `default`."""
        only_default, only_this, p = sign_test(default.right1, self.right1)
        return (only_default - only_this) / len(self.right1), only_default, only_this, p


def table(rows, default):
    lines = ["| variant | top-1 err [95 % CI] | top-5 err [95 % CI] | top-1 vs default | wrong->right / right->wrong | p (sign test) | time |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        (e1, l1, h1), (e5, l5, h5) = r.errors()
        if r is default:
            vs = "(default)", "", ""
        else:
            d, only_default, only_this, p = r.versus(default)
            verdict = "" if p < 0.05 else " (no measurable effect here)"
            vs = f"{d:+.3f}{verdict}", f"{only_this} / {only_default}", f"{p:.3g}"
        t = "" if r.seconds is None else f"{r.seconds:.0f} s"
        lines.append(f"| {r.name} | {e1:.3f} [{l1:.3f}, {h1:.3f}] | {e5:.3f} [{l5:.3f}, {h5:.3f}] | {vs[0]} | {vs[1]} | {vs[2]} | {t} |")
    return "\n".join(lines)


# ---------------------------------------------------------------- masks for the variants

def boxes_to_masks(split, boxes, sizes, mask_size):
    """Binary masks (N, h, w) of the true boxes (x, y, w, h in image pixels) on the mask grid."""
    h, w = mask_size
    masks = np.zeros((len(split), h, w), np.uint8)
    for r, image_id in enumerate(split.image_ids):
        if int(image_id) not in boxes:
            raise UserError(f"truth/boxes.csv: no box for {split.name} image id {int(image_id)}")
        bx, by, bw, bh = boxes[int(image_id)]
        W, H = sizes[r]
        x0, x1 = int(np.floor(bx / W * w)), int(np.ceil((bx + bw) / W * w))
        y0, y1 = int(np.floor(by / H * h)), int(np.ceil((by + bh) / H * h))
        masks[r, max(0, y0) : min(h, y1), max(0, x0) : min(w, x1)] = 1
    return masks


def write_masks(directory, splits, masks_of, note):
    """masks_<split>.npz for every split, with the provenance load_masks checks."""
    for name, split in splits.items():
        save_masks(masks_path(directory, name), split.image_ids, masks_of(name, split),
                   {"split": name, "fingerprint": split_fingerprint(split), "checkpoint": note})


# ---------------------------------------------------------------- the run

class Ablation:
    def __init__(self, args):
        self.args = args
        self.data, self.coarse, self.fine = resolve(args.data), resolve(args.coarse), resolve(args.fine)
        truth = self.data / "truth" / "test_labels.csv"
        if not truth.is_file():
            raise UserError(f"{truth}: no hidden test labels: the ablation scores test predictions and needs them")
        self.classes, self.splits = load_dataset(self.data)
        index, labels = self.classes.index(), read_labels(truth)
        missing = [int(i) for i in self.splits["test"].image_ids if int(i) not in labels]
        if missing:
            raise UserError(f"{truth}: no label for {len(missing)} test image ids (first: {missing[:5]})")
        self.labels = np.array([index[labels[int(i)]] for i in self.splits["test"].image_ids])
        self.prior = class_prior(class_counts(self.splits["train"], len(self.classes)))
        self.runtime = cli.runtime(args, args.device)
        self.model, self.ckpt = load_stage(self.fine, "fine", self.classes, args.device)
        self.baseline = FineConfig.from_args(self.ckpt["args"])  # the fine run's whole config
        self.size, self.centre = self.baseline.img_size, self.baseline.crop_centre
        self.started = time.time()

    def progress(self, what, t0, done, total):
        spent = time.time() - self.started
        left = spent / max(1, done) * (total - done)
        print(f"[{done}/{total}] {what}: {time.time() - t0:.0f} s (about {left / 60:.1f} min left)", flush=True)

    def probs(self, split, transform, masks, model=None):
        a = self.args
        dataset = ImageDataset(split, transform, a.seed, masks=masks)
        p, _ = score(model or self.model, dataset, self.runtime)
        return p

    def multi(self, split, coarse_dir, factors=TTA_FACTORS, mirror=TTA_MIRROR_FACTORS, model=None, centre=None):
        t = MultiCropTransform(self.size, factors, mirror, centre or self.centre)
        return self.probs(split, t, load_masks(coarse_dir, split), model)

    def row(self, name, probs, tau=1.0, seconds=None):
        return Row(name, topk(prior_correct(probs, self.prior, tau), 5), self.labels, seconds)

    def test_time_rows(self, plan):
        test, val = self.splits["test"], self.splits["val"]
        rows, done = [], 0
        t0 = time.time()
        default = self.multi(test, self.coarse)
        rows.append(self.row("16 crops, CAM masks, tau 1 (the original)", default, seconds=time.time() - t0))
        self.progress("16 crops", t0, done := done + 1, plan)
        for k in (1, 2, 4):
            t0 = time.time()
            p = self.probs(test, CropTransform(self.size, k, train=False, centre=self.centre), load_masks(self.coarse, test))
            rows.append(self.row(f"1 crop at the mask's centre, k = {k:g}", p, seconds=time.time() - t0))
            self.progress(f"1 crop k={k:g}", t0, done := done + 1, plan)
        t0 = time.time()
        rows.append(self.row("8 crops on the image only (no mirror)", self.multi(test, self.coarse, mirror=()), seconds=time.time() - t0))
        self.progress("8 crops", t0, done := done + 1, plan)
        t0 = time.time()
        val_probs = self.multi(val, self.coarse)
        auto, val_curve = choose_tau(val_probs, val.labels, self.prior, TAU_GRID)
        test_curve = {t: float((self.row("", default, t).right1 == 0).mean()) for t in TAU_GRID}
        rows.append(self.row("16 crops, tau 0 (no correction)", default, 0.0))
        rows.append(self.row(f"16 crops, tau {auto:g} (picked on val)", default, auto))
        self.progress("tau curve", t0, done := done + 1, plan)
        rows += self.threshold_rows(plan, done)
        return rows, (val_curve, test_curve)

    def threshold_rows(self, plan, done):
        """Val/test masks re-localized once, thresholded at each of THRESHOLDS."""
        coarse_model, coarse_ckpt = load_stage(self.coarse, "coarse", self.classes, self.args.device)
        coarse = CoarseConfig.from_args(coarse_ckpt["args"])
        resize, mask_size = coarse.resize, tuple(coarse.mask_size)
        cams = {}
        for name in ("val", "test"):
            ds = ImageDataset(self.splits[name], ShortSideTransform(resize), self.args.seed)
            _, cams[name] = localize(coarse_model, ds, self.runtime, mask_size=mask_size, threshold=0.5, use_labels=False,
                                     keep_cams=True)
        rows = []
        for t in THRESHOLDS:
            t0 = time.time()
            where = resolve(self.args.work) / f"threshold-{t:g}"
            write_masks(where, {n: self.splits[n] for n in ("val", "test")},
                        lambda n, s: cams_to_masks(_torch(cams[n]), t)[1].numpy(), f"re-localized at {t:g}")
            rows.append(self.row(f"--cam-threshold {t:g} at test (default {self.coarse_threshold():g})",
                                 self.multi(self.splits["test"], where), seconds=time.time() - t0))
            self.progress(f"threshold {t:g}", t0, done := done + 1, plan)
        return rows

    def coarse_threshold(self):
        return CoarseConfig.from_args(load_checkpoint(self.coarse / "checkpoint.pt")["args"]).cam_threshold

    # -------------------------------------------------------- retrained variants

    def retrain_command(self, coarse_dir, out, changes):
        """fine/train.py with every flag of the fine run (its checkpoint's config), on `coarse_dir`'s
        masks into `out`, on this machine (--device, --workers), with `changes` (flag: value)."""
        here = dict(data=str(self.data), coarse=str(coarse_dir), out=str(out), device=self.args.device, workers=self.args.workers,
                    resume=False, save_every=0)
        return [sys.executable, str(ROOT / "fine" / "train.py"), *FineConfig.argv(self.baseline, **here, **changes)]

    def retrained(self, name, group, coarse_dir, changes=None):
        """Train the fine stage again on `coarse_dir`'s masks and score it on the test masks there,
        with its own crop rule."""
        t0 = time.time()
        out = resolve(self.args.work) / group / "fine"
        if out.exists():
            shutil.rmtree(out)
        run = subprocess.run(self.retrain_command(coarse_dir, out, changes or {}), cwd=ROOT, capture_output=True, text=True)
        if run.returncode != 0:
            raise UserError(f"retraining '{group}' failed (exit {run.returncode}): {last_line(run.stderr)}")
        model, ckpt = load_stage(out, "fine", self.classes, self.args.device)
        centre = FineConfig.from_args(ckpt["args"]).crop_centre
        return self.row(name, self.multi(self.splits["test"], coarse_dir, model=model, centre=centre), seconds=time.time() - t0)

    def variant_masks(self, group):
        """The masks directory a retrained variant trains and is scored on."""
        where = resolve(self.args.work) / group / "coarse"
        if group == "oracle":
            boxes = read_boxes(self.data / "truth" / "boxes.csv")
            shape = load_masks(self.coarse, self.splits["val"]).shape[1:]
            write_masks(where, self.splits, lambda n, s: boxes_to_masks(s, boxes, _sizes(s), shape), "truth/boxes.csv")
        elif group == "whole":
            shape = load_masks(self.coarse, self.splits["val"]).shape[1:]
            write_masks(where, self.splits, lambda n, s: np.zeros((len(s), *shape), np.uint8), "empty: whole images")
        elif group == "predicted":
            where.mkdir(parents=True, exist_ok=True)
            shutil.copy(self.coarse / "checkpoint.pt", where / "checkpoint.pt")
            coarse = CoarseConfig.from_args(load_checkpoint(self.coarse / "checkpoint.pt")["args"])
            here = dict(data=str(self.data), out=str(where), device=self.args.device, workers=self.args.workers, amp=self.args.amp,
                        figure=str(where / "sample.png"), resume=False)
            cmd = [sys.executable, str(ROOT / "coarse" / "train.py"),
                   *CoarseConfig.argv(coarse, **here, localize_only=True, cam_class="predicted")]
            run = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
            if run.returncode != 0:
                raise UserError(f"re-localizing with --cam-class predicted failed: {last_line(run.stderr)}")
        else:  # on-mask: the default masks
            return self.coarse
        return where


def _torch(a):
    import torch

    return torch.from_numpy(np.asarray(a, np.float32))


def _sizes(split):
    from fgvc.image import image_sizes

    return image_sizes(split)


NAMES = {"oracle": "crops of the true boxes (oracle), retrained", "whole": "whole images (no crop), retrained",
         "predicted": "train masks from the predicted class's CAM, retrained",
         "on-mask": "--crop-centre on-mask, retrained"}


def figure(path, rows, curves):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    val_curve, test_curve = curves
    fig, (a, b) = plt.subplots(1, 2, figsize=(13, 0.5 * len(rows) + 2.5), gridspec_kw={"width_ratios": [1, 2]})
    a.plot(list(val_curve), list(val_curve.values()), "o-", label="val")
    a.plot(list(test_curve), list(test_curve.values()), "s-", label="test")
    a.set(xlabel="tau", ylabel="top-1 error", title="prior correction p / prior ** tau")
    a.legend()
    errs = [r.errors()[0] for r in rows]
    y = np.arange(len(rows))[::-1]
    b.barh(y, [e for e, _, _ in errs], xerr=np.array([[e - lo, hi - e] for e, lo, hi in errs]).T, color="#7a9", capsize=3)
    b.set_yticks(y, [r.name for r in rows], fontsize=8)
    b.set(xlabel="top-1 error on the hidden test labels (95 % interval)", title="variants")
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=90)
    plt.close(fig)
    tmp.replace(path)


def main(args):
    steady_heap()  # scoring passes only (the retrained rows run the stage scripts as subprocesses)
    groups = ROW_GROUPS if args.rows == "all" else tuple(r.strip() for r in args.rows.split(",") if r.strip())
    unknown = [g for g in groups if g not in ROW_GROUPS]
    if unknown or "test" not in groups:
        raise UserError(f"--rows {args.rows}: a comma-separated list of {', '.join(ROW_GROUPS)} that includes test")
    run = Ablation(args)
    t_all = time.time()
    plan = 5 + len(THRESHOLDS) + 2 * (len(groups) - 1)
    rows, curves = run.test_time_rows(plan)
    done = 5 + len(THRESHOLDS)
    for group in groups[1:]:
        t0 = time.time()
        print(f"retraining the fine stage: {NAMES[group]} ...", flush=True)
        coarse_dir = run.variant_masks(group)
        changes = {"crop_centre": "on-mask"} if group == "on-mask" else {}
        rows.append(run.retrained(NAMES[group], group, coarse_dir, changes))
        run.progress(group, t0, done := done + 2, plan)
    out = resolve(args.out)
    out.mkdir(parents=True, exist_ok=True)
    md = (f"Ablation on {args.data} ({len(run.labels)} test images, hidden labels; {len(run.classes)} classes), "
          f"{time.time() - t_all:.0f} s in all.\n\n" + table(rows, rows[0]) + "\n")
    tmp = out / "ablation.md.tmp"
    tmp.write_text(md)
    tmp.replace(out / "ablation.md")
    figure(out / "ablation.png", rows, curves)
    print(md, flush=True)
    print(f"wrote {out / 'ablation.md'} and {out / 'ablation.png'}", flush=True)


if __name__ == "__main__":
    cli.run(main, get_args_parser())
