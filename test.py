"""Stage 3: the fine model on test-time crops, the prior correction, and submission.csv.

    python3 test.py                          # fine model, 16 crops per image, tau = 1 -> submission.csv
    python3 test.py --split val              # the evaluation table on val (coarse vs fine, tau 0 vs tau)
    python3 test.py --tau auto               # pick tau on val, apply it to test
    python3 test.py --model coarse           # the baseline: the coarse model on whole images
    python3 test.py --preflight              # a few minutes: rates, memory, the projected time

Reads  --data/{train,val,test}2019.json and images (train for the class prior);
       --fine/checkpoint.pt, --coarse/checkpoint.pt, --coarse/masks_{val,test}.npz;
       --data/truth/test_labels.csv when present (the toy dataset), to score the submission.
Writes --submission (default submission.csv; submission_val.csv for --split val), atomically:
       header `id,predicted`, one row per image, 5 category ids best first. The path is checked
       (and locked, `.<name>.lock` beside it) at start: never an input, never a FIFO or device.
       With --preflight only preflight.json beside --submission (fgvc/preflight.py).
"""
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent; sys.path.insert(0, str(ROOT))

import numpy as np

from fgvc import cli, dist, outputs, preflight
from fgvc.annotations import class_counts, class_prior, load_dataset
from fgvc.checkpoint import CHECKPOINT
from fgvc.config import TestConfig, parse_tau
from fgvc.csvfile import read_csv
from fgvc.errors import BadImagesError, UserError
from fgvc.inference import steady_heap
from fgvc.masks import masks_path
from fgvc.metrics import frequency_groups, top1_group_errors, topk
from fgvc.overlap import check_overlap
from fgvc.paths import resolve
from fgvc.prior import TAU_GRID, TopK, check_tau, choose_tau, prior_correct
from fgvc.stages import STAGES, load_stage, score_split
from fgvc.submission import read_labels, read_submission, top1_error, write_submission


def get_args_parser():
    return cli.parser(TestConfig)  # every flag, its default and range: fgvc/config.py, docs/config.md


class Scorer:
    """Scores a split with one stage's checkpoint (--coarse or --fine), on that stage's input."""

    def __init__(self, args, kind, classes, device):
        self.args, self.stage, self.classes, self.device = args, STAGES[kind], classes, device
        self.model, self.ckpt = load_stage(resolve(getattr(args, kind)), kind, classes, device, args.compile)
        self.runtime = cli.runtime(args, device)

    def other(self, kind=None):
        """A Scorer of stage `kind` (default: the other stage of the table) when its checkpoint
        exists, else None."""
        kind = kind or self.stage.other().name
        if not (resolve(getattr(self.args, kind)) / CHECKPOINT).is_file():
            return None
        return Scorer(self.args, kind, self.classes, self.device)

    def __call__(self, split, reduce=None):
        a = self.args
        return score_split(self.model, self.ckpt, split, self.runtime, reduce=reduce, desc=f"{self.stage.name} {split.name}",
                           coarse_dir=resolve(a.coarse), seed=a.seed, factors=a.tta_factors, mirror_factors=a.tta_mirror_factors,
                           centre=a.crop_centre)


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
    """Each model's errors without and with the correction; `scores`: [(label, probabilities)]."""
    return error_table([(name, t, topk(prior_correct(probs, prior, t), 5), labels)
                        for name, probs in scores for t in dict.fromkeys((0.0, tau))], counts)


def hidden_labels(path, split, classes):
    """Class index of each image of `split` from truth/test_labels.csv, checked at start (before
    anything is written): one label for every image of the split, none for an id outside it, every
    category id a class of train. An error names the file and the first offending ids."""
    rows, index = read_csv(path, ("id", "category_id"), lambda f: (int(f[0]), int(f[1]))), classes.index()
    labels, ids = dict(rows), {int(i) for i in split.image_ids}
    twice = sorted({i for i, n in Counter(i for i, _ in rows).items() if n > 1})
    outside = sorted(i for i in labels if i not in ids)
    missing = sorted(i for i in ids if i not in labels)
    unknown = sorted({c for c in labels.values() if c not in index})
    for what, bad in (("image ids listed more than once", twice), (f"image ids that are not in the {split.name} split", outside),
                      (f"{split.name} image ids without a label", missing), ("unknown category ids", unknown)):
        if bad:
            raise UserError(f"{path}: {len(bad)} {what} (first: {bad[:5]}); nothing written")
    return np.array([index[labels[int(i)]] for i in split.image_ids], np.int64)


def require_readable(split, ok):
    if len(split) and not ok.any():
        raise BadImagesError(f"{split.json_path}: no readable image among its {len(split)}; no submission written")


def claim_inputs_and_outputs(args):
    """The dataset's splits this command needs, and the submission path (checked and locked)."""
    need_val = args.eval or args.split == "val" or args.tau == "auto"
    names = ("train",) + (("val",) if need_val else ()) + ((args.split,) if args.split != "val" else ())
    classes, splits = load_dataset(resolve(args.data), splits=names)
    check_overlap(splits, allow=args.allow_overlap)
    out = resolve(args.submission or ("submission.csv" if args.split == "test" else "submission_val.csv"))
    coarse, fine = resolve(args.coarse), resolve(args.fine)
    reads = [("the --fine checkpoint", fine / CHECKPOINT), ("the --coarse checkpoint", coarse / CHECKPOINT),
             ("the hidden labels", resolve(args.data) / "truth" / "test_labels.csv")]
    writes = [("the preflight report", out.parent / preflight.REPORT)] if args.preflight else [("--submission", out)]
    outputs.claim(None, writes, reads + [("the --coarse masks", masks_path(coarse, n)) for n in splits], splits.values())
    return classes, splits, out


def on_val(args, scorer, val, prior, counts, tau):
    """Score val; pick tau there with --tau auto; print the table of both stages with --eval.
    Returns (tau, val probabilities, ok flags)."""
    probs, ok = scorer(val)
    require_readable(val, ok)
    if tau is None:
        tau, errs = choose_tau(probs, val.labels, prior, TAU_GRID)
        if dist.is_main():
            print("tau on val (top-1 error): " + ", ".join(f"{t:g}: {e:.3f}" for t, e in errs.items()) + f" -> tau = {tau:g}", flush=True)
    if args.eval or args.split == "val":
        scores = [(scorer.stage.label, probs)]
        other = scorer.other()
        if other is not None:
            scores.append((other.stage.label, other(val)[0]))
        if dist.is_main():
            order = [st.label for st in STAGES.values()]
            scores.sort(key=lambda s: order.index(s[0]))
            print(f"\nval ({len(val)} images, {len(scorer.classes)} classes)\n" + evaluation_table(scores, val.labels, prior, counts, tau), flush=True)
    return tau, probs, ok


def with_fallback(top, ok, fallback):
    """An unreadable image gets the 5 most frequent train classes."""
    top = top.copy()
    top[~ok] = fallback
    return top


def main(args):
    steady_heap()  # one pass over the split: memory must not grow with it
    device = dist.setup(args.device)
    tau = parse_tau(args.tau)
    classes, splits, out = claim_inputs_and_outputs(args)
    if args.preflight:  # bounded; writes only preflight.json beside --submission
        return preflight.test(args, classes, splits, device, out.parent / preflight.REPORT)
    counts = class_counts(splits["train"], len(classes))
    prior = class_prior(counts)
    if tau is not None:
        check_tau(prior, tau)  # before any model is loaded: --tau 1e308
    fallback = topk(prior[None], 5)[0]
    truth = resolve(args.data) / "truth" / "test_labels.csv"  # hidden test labels (the toy's): checked now
    labels = hidden_labels(truth, splits["test"], classes) if args.split == "test" and truth.is_file() else None
    scorer = Scorer(args, args.model, classes, device)

    # 1. tau (on val with --tau auto) and the table on val
    if "val" in splits:
        tau, val_probs, val_ok = on_val(args, scorer, splits["val"], prior, counts, tau)
    # 2. predict: the top 5 of each image, with and without the correction
    split = splits[args.split]
    if args.split == "val":
        kept, ok = TopK(prior, tau, 5)(val_probs), val_ok
    else:
        kept, ok = scorer(split, reduce=TopK(prior, tau, 5))
    require_readable(split, ok)
    top = with_fallback(kept["corrected"], ok, fallback)
    # 3. on hidden test labels (the toy's): the rows of the table, the baseline beside the model with --eval
    rows = []
    if labels is not None:
        baseline = scorer.stage.baseline
        other = scorer.other(baseline) if args.eval and baseline else None
        if other is not None:  # every process takes part
            base, base_ok = other(split, reduce=TopK(prior, tau, 5))
            rows += [(other.stage.label, t, with_fallback(base[key], base_ok, fallback)) for t, key in {0.0: "uncorrected", tau: "corrected"}.items()]
        rows += [(scorer.stage.label, t, with_fallback(kept[key], ok, fallback)) for t, key in {0.0: "uncorrected", tau: "corrected"}.items()]
    if not dist.is_main():
        return
    # 4. write the submission, and report
    if (~ok).any():
        print(f"{int((~ok).sum())} unreadable {split.name} images got the fallback prediction (the 5 most frequent train classes)", flush=True)
    write_submission(out, split.image_ids, np.asarray(classes.ids)[top])
    print(f"{out}: {len(split)} rows, model {args.model}, tau {tau:g}", flush=True)
    if rows:
        print(f"\n{split.name} ({len(split)} images), scored on {truth}\n" + error_table([(n, t, tp, labels) for n, t, tp in rows], counts), flush=True)
        print(f"submission top-1 error on the hidden test labels: {top1_error(read_submission(out), read_labels(truth)):.3f}", flush=True)


if __name__ == "__main__":
    cli.run(main, get_args_parser())
