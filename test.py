"""Stage 3: the fine model on test-time crops, the prior correction, and submission.csv.

    python3 test.py                          # fine model, 16 crops per image, tau = 1 -> submission.csv
    python3 test.py --split val              # the evaluation table on val (coarse vs fine, tau 0 vs tau)
    python3 test.py --tau auto               # pick tau on val, apply it to test
    python3 test.py --model coarse           # the baseline: the coarse model on whole images

Reads  --data/{train,val,test}2019.json and images (train for the class prior);
       --fine/checkpoint.pt, --coarse/checkpoint.pt, --coarse/masks_{val,test}.npz;
       --data/truth/test_labels.csv when present (the toy dataset), to score the submission.
Writes --submission (default submission.csv; submission_val.csv for --split val), atomically:
       header `id,predicted`, one row per image, 5 category ids best first. The path is checked
       (and locked, `.<name>.lock` beside it) at start: never an input, never a FIFO or device.
"""
import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent; sys.path.insert(0, str(ROOT))

import numpy as np

from fgvc import cli, dist, outputs
from fgvc.cam import masks_path
from fgvc.crop import CENTRES, TTA_FACTORS, TTA_MIRROR_FACTORS
from fgvc.data import class_counts, class_prior, load_dataset
from fgvc.engine import CHECKPOINT
from fgvc.errors import BadImagesError, UserError
from fgvc.inference import load_stage, score, scoring_dataset, steady_heap
from fgvc.metrics import frequency_groups, top1_group_errors, topk
from fgvc.paths import resolve
from fgvc.prior import TAU_GRID, choose_tau, prior_correct
from fgvc.submission import read_labels, read_submission, top1_error, write_submission


def get_args_parser():
    parser = argparse.ArgumentParser(description="Test: fine model on crops, prior correction, submission.csv")
    g = parser.add_argument_group("inputs and outputs (relative paths resolve against the repo root)")
    g.add_argument("--data", default="data/", help="dataset root (default: data/)")
    g.add_argument("--fine", default="fine/out", help="fine stage directory with checkpoint.pt (default: fine/out)")
    g.add_argument("--coarse", default="coarse/out", help="coarse stage directory: checkpoint.pt and masks (default: coarse/out)")
    g.add_argument("--submission", default=None, help="output file (default: submission.csv; submission_val.csv for --split val)")
    g = parser.add_argument_group("what to score")
    g.add_argument("--model", choices=("fine", "coarse"), default="fine", help="fine model on crops, or the coarse baseline on whole images (default: fine)")
    g.add_argument("--split", choices=("test", "val"), default="test", help="split to predict (default: test)")
    g.add_argument("--eval", action="store_true", help="also print the evaluation table on val (always on with --split val)")
    g.add_argument("--tau", default="1", help="correction p / prior**tau; 0 turns it off; 'auto' picks it on val (default: 1, the original's division)")
    g.add_argument("--tta-factors", type=float, nargs="*", default=list(TTA_FACTORS), help=f"crop area factors on the image (default: {' '.join(map(str, TTA_FACTORS))})")
    g.add_argument("--crop-centre", choices=CENTRES, default=None, help="crop-centre rule of the test-time crops (default: the fine model's --crop-centre)")
    g.add_argument("--tta-mirror-factors", type=float, nargs="*", default=list(TTA_MIRROR_FACTORS), help=f"crop area factors on the mirror (default: {' '.join(map(str, TTA_MIRROR_FACTORS))})")
    g = parser.add_argument_group("runtime")
    g.add_argument("--batch-size", type=int, default=8, help="images per batch, each with all its crops (default: 8)")
    g.add_argument("--workers", type=int, default=cli.default_workers(), help="data loader processes (default: min(8, cpus))")
    g.add_argument("--device", default=cli.default_device(), help="cuda or cpu (default: cuda when available)")
    cli.add_amp_arg(g)
    g.add_argument("--seed", type=int, default=0, help="seed of the crop centres (default: 0)")
    cli.add_decoding_args(g)
    return parser


class Scorer:
    """Probabilities of a split from one stage's checkpoint."""

    def __init__(self, args, kind, classes, device):
        if kind == "fine" and not args.tta_factors + args.tta_mirror_factors:
            raise UserError("--tta-factors and --tta-mirror-factors are both empty: no crops to score")
        self.args, self.kind, self.device = args, kind, device
        self.model, self.ckpt = load_stage(resolve(args.fine if kind == "fine" else args.coarse), kind, classes, device)

    def __call__(self, split, reduce=None):
        a = self.args
        dataset = scoring_dataset(self.kind, self.ckpt, split, resolve(a.coarse), a.seed, a.tta_factors, a.tta_mirror_factors, a.crop_centre)
        return score(self.model, dataset, a.batch_size, a.workers, self.device, a.amp, reduce, desc=f"{self.kind} {split.name}")


def label_of(kind):
    return "fine (crops)" if kind == "fine" else "coarse (whole image)"


def error_row(top, labels, counts):
    """(top-1 error, top-5 error, {group: top-1 error}) of top-5 class indices (N, 5)."""
    hit = top == np.asarray(labels)[:, None]
    per_group = {g: e for g, (e, _) in top1_group_errors(top[:, 0], labels, counts).items()}
    return float((~hit[:, 0]).mean()), float((~hit.any(axis=1)).mean()), per_group


def error_table(rows, counts):
    """rows: [(model name, tau, top-5 class indices (N, 5), labels)] -> the table as text:
    top-1/top-5 error, and top-1 error per train-frequency group of classes."""
    groups, (lo, hi) = frequency_groups(counts)
    sizes = {g: int(m.sum()) for g, m in groups.items()}
    head = f"{'model':<24}{'tau':>6}{'top-1 err':>11}{'top-5 err':>11}" + "".join(
        f"{f'{g} ({sizes[g]})':>14}" for g in groups)
    lines = [head, "-" * len(head)]
    for name, t, top, labels in rows:
        e1, e5, ge = error_row(top, labels, counts)
        lines.append(f"{name:<24}{t:>6g}{e1:>11.3f}{e5:>11.3f}" + "".join(f"{ge[g]:>14.3f}" for g in groups))
    lines.append(f"groups: train images per class many > {hi:g} >= medium > {lo:g} >= few; (n) = classes; columns = top-1 error")
    return "\n".join(lines)


def evaluation_table(scores, labels, prior, counts, tau):
    """Each model's errors without and with the correction."""
    return error_table([(name, t, topk(prior_correct(probs, prior, t), 5), labels)
                        for name, probs in scores.items() for t in dict.fromkeys((0.0, tau))], counts)


def hidden_labels(path, split, classes):
    """Class index of each image of `split` from truth/test_labels.csv; an error names what is missing."""
    labels, index = read_labels(path), classes.index()
    missing = [int(i) for i in split.image_ids if int(i) not in labels]
    unknown = sorted({c for c in labels.values() if c not in index})
    if missing or unknown:
        raise UserError(f"{path}: {len(missing)} {split.name} image ids without a label (first: {missing[:5]}), "
                        f"{len(unknown)} unknown category ids (first: {unknown[:5]})")
    return np.array([index[labels[int(i)]] for i in split.image_ids], np.int64)


def require_readable(split, ok):
    if len(split) and not ok.any():
        raise BadImagesError(f"{split.json_path}: no readable image among its {len(split)}; no submission written")


def main(args):
    steady_heap()  # one pass over the split: memory must not grow with it
    device = dist.setup(args.device)
    if args.tau != "auto":
        try:
            tau = float(args.tau)
        except ValueError:
            raise UserError(f"--tau {args.tau!r}: a number or 'auto'") from None
    need_val = args.eval or args.split == "val" or args.tau == "auto"
    names = ("train",) + (("val",) if need_val else ()) + ((args.split,) if args.split != "val" else ())
    classes, splits = load_dataset(resolve(args.data), splits=names)
    out = resolve(args.submission or ("submission.csv" if args.split == "test" else "submission_val.csv"))
    coarse, fine = resolve(args.coarse), resolve(args.fine)
    reads = [("the --fine checkpoint", fine / CHECKPOINT), ("the --coarse checkpoint", coarse / CHECKPOINT),
             ("the hidden labels", resolve(args.data) / "truth" / "test_labels.csv")]
    outputs.claim(None, [("--submission", out)], reads + [("the --coarse masks", masks_path(coarse, n)) for n in splits], splits.values())
    counts = class_counts(splits["train"], len(classes))
    prior = class_prior(counts)
    scorer = Scorer(args, args.model, classes, device)
    main_rank = dist.is_main()

    val_probs = None
    if need_val:
        val = splits["val"]
        val_probs, val_ok = scorer(val)
        require_readable(val, val_ok)
        if args.tau == "auto":
            tau, errs = choose_tau(val_probs, val.labels, prior, TAU_GRID)
            if main_rank:
                print("tau on val (top-1 error): " + ", ".join(f"{t:g}: {e:.3f}" for t, e in errs.items()) + f" -> tau = {tau:g}", flush=True)
        if args.eval or args.split == "val":
            scores = {label_of(args.model): val_probs}
            other = "coarse" if args.model == "fine" else "fine"
            if (resolve(getattr(args, other)) / CHECKPOINT).is_file():
                scores[label_of(other)] = Scorer(args, other, classes, device)(val)[0]
            if main_rank:
                order = sorted(scores, key=lambda k: not k.startswith("coarse"))
                print(f"\nval ({len(val)} images, {len(classes)} classes)\n" + evaluation_table({k: scores[k] for k in order}, val.labels, prior, counts, tau), flush=True)

    split = splits[args.split]
    if args.split == "val":
        top, ok = topk(prior_correct(val_probs, prior, tau), 5), val_ok
    else:
        # the top 5 with the correction, and without it beside them for the table on hidden labels
        def reduce(p):
            return np.hstack([topk(prior_correct(p, prior, tau), 5), topk(p, 5)])

        both, ok = scorer(split, reduce=reduce)
        k = both.shape[1] // 2  # 5, or fewer classes
        top, uncorrected = both[:, :k], both[:, k:]
    require_readable(split, ok)
    fallback = topk(prior[None], 5)[0]  # an unreadable image gets the 5 most frequent train classes
    top[~ok] = fallback
    truth = resolve(args.data) / "truth" / "test_labels.csv"
    scored = args.split == "test" and truth.is_file()  # the toy's hidden labels: score the submission
    rows = []
    if scored:
        uncorrected[~ok] = fallback
        rows = [(label_of(args.model), t, tp) for t, tp in {0.0: uncorrected, tau: top}.items()]
        if args.eval and args.model == "fine" and (resolve(args.coarse) / CHECKPOINT).is_file():  # the baseline beside it
            both, ok_coarse = Scorer(args, "coarse", classes, device)(split, reduce=reduce)  # every process takes part
            both[~ok_coarse] = np.hstack([fallback, fallback])
            rows = [(label_of("coarse"), t, both[:, c:c + k]) for t, c in {0.0: k, tau: 0}.items()] + rows
    if not main_rank:
        return
    if (~ok).any():
        print(f"{int((~ok).sum())} unreadable {split.name} images got the fallback prediction (the 5 most frequent train classes)", flush=True)
    ids = np.asarray(classes.ids)
    write_submission(out, split.image_ids, ids[top])
    print(f"{out}: {len(split)} rows, model {args.model}, tau {tau:g}", flush=True)
    if scored:
        labels = hidden_labels(truth, split, classes)
        print(f"\n{split.name} ({len(split)} images), scored on {truth}\n" + error_table([(n, t, tp, labels) for n, t, tp in rows], counts), flush=True)
        print(f"submission top-1 error on the hidden test labels: {top1_error(read_submission(out), read_labels(truth)):.3f}", flush=True)


if __name__ == "__main__":
    cli.run(main, get_args_parser())
