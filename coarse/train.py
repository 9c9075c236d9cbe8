"""Stage 1: the coarse CAM classifier, then a localization mask for every image.

    cd coarse && python3 train.py                      # the original: senet154, 448 px, 32 epochs
    python3 coarse/train.py --localize-only            # masks from the saved checkpoint
    python3 coarse/train.py --preflight                # a few minutes: rates, memory, the projected time
    torchrun --nproc_per_node 4 coarse/train.py ...    # several GPUs (see README)

Reads  --data/{train,val,test}2019.json and their images; --pretrained (res/senet154-c7b49a05.pth).
Writes --out/checkpoint.pt, --out/log.jsonl, --out/tb/ (TensorBoard),
       --out/masks_{train,val,test}.npz (image_ids int64 N; masks uint8 0/1 N x h x w),
       --figure (default --out/sample.png). --out is locked while the run lasts.
       With --preflight only --out/preflight.json (fgvc/preflight.py).
"""
import sys
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]; sys.path.insert(0, str(ROOT))

from fgvc import cli, dist, outputs, preflight
from fgvc.annotations import class_counts, load_dataset
from fgvc.backbones import mean_pixel, require_weights, weights_path_arg
from fgvc.atomic import AtomicGroup
from fgvc.boxes import LocalizationScore, read_boxes
from fgvc.cam import localize_shard
from fgvc.checkpoint import CHECKPOINT, check_matches, class_info, load_checkpoint
from fgvc.config import RESIZE, CoarseConfig
from fgvc.datasets import ImageDataset
from fgvc.engine import Parts, fit, fit_outputs, seed_everything
from fgvc.errors import DatasetError
from fgvc.image import image_sizes
from fgvc.inference import prepare_model, steady_heap
from fgvc.masks import masks_path, save_shards, split_fingerprint
from fgvc.overlap import check_overlap
from fgvc.paths import resolve
from fgvc.stages import build_model, localization_input, model_args, model_from_checkpoint
from fgvc.transforms import EvalTransform, TrainTransform
from fgvc.viz import sample_rows, save_sample_figure


def get_args_parser():
    return cli.parser(CoarseConfig)  # every flag, its default and range: fgvc/config.py, docs/config.md


def training_parts(args, classes, splits, pretrained):
    """The model to train, its datasets, and what its checkpoint records."""
    model = build_model("coarse", args.arch, len(classes), pretrained=pretrained, freeze=args.freeze, dropout=args.dropout,
                        frozen_bn=args.frozen_bn)
    train_set = ImageDataset(splits["train"], TrainTransform(args.img_size, args.resize, mean_pixel(args.arch), rotation=args.rotation), args.seed)
    val_set = ImageDataset(splits["val"], EvalTransform(args.img_size), args.seed)
    margs = model_args("coarse", args.arch, len(classes), args.freeze, args.dropout)
    return Parts(model, train_set, val_set, margs, classes.ids, class_info(classes, class_counts(splits["train"], len(classes))))


def train(args, config, parts):
    return fit(parts.model, parts.train_set, parts.val_set, config=config, out_dir=resolve(args.out), class_ids=parts.class_ids,
               model_args=parts.model_args, class_info=parts.class_info)


def provenance(args, split, source, run):
    """What a masks file records of its making (checked by fgvc.masks.load_masks and check_same_run)."""
    return {"split": split.name, "fingerprint": split_fingerprint(split), "checkpoint": source, "run": run,
            "cam_threshold": args.cam_threshold, "cam_class": args.cam_class, "resize": args.resize,
            "mask_size": list(args.mask_size)}


def val_boxes(args, val):
    """The true box of every val image from truth/boxes.csv, None without the file; checked at start
    (not after training): a val image without a box is a one-line error."""
    truth = resolve(args.data) / "truth" / "boxes.csv"
    if not truth.is_file():
        return None
    boxes = read_boxes(truth)
    missing = [int(i) for i in val.image_ids if int(i) not in boxes]
    if missing:
        raise DatasetError(f"{truth}: {len(missing)} val image ids without a box (first: {missing[:5]})")
    return [boxes[int(i)] for i in val.image_ids]


def localize_splits(model, args, runtime, splits, source, truth=None):
    """Masks for every split; on val, measured against its true boxes `truth` when the dataset has them.

    The masks files and the figure are one group (`AtomicGroup`): written to temporary files and
    renamed together once every split is done, so a run stopped (or failing) on the way leaves
    every file of the earlier run; each file records the same run id (`masks.check_same_run`)."""
    out = resolve(args.out)
    run = dist.broadcast_object(uuid.uuid4().hex)
    with AtomicGroup() as group:
        for name, split in splits.items():
            measured = name == "val"
            score = LocalizationScore(image_sizes(split), truth) if measured and truth is not None else None
            shard = localize_shard(model, localization_input(split, args.resize, args.seed), runtime,
                                   mask_size=tuple(args.mask_size), threshold=args.cam_threshold,
                                   use_labels=name == "train" and args.cam_class == "label", max_bad=args.max_bad_images,
                                   on_batch=score.add if score else None)
            hits = dist.all_sum([*score.hits, *score.fracs], runtime.device) if score else None
            figure = sample_rows(len(split)) if measured else ()
            kept = save_shards(group.write, masks_path(out, name), split.image_ids, shard,
                               provenance(args, split, source, run), keep=figure)
            if dist.is_main():
                print(f"{masks_path(out, name)}: {len(split)} masks, mean area {shard.area:.3f} of the image", flush=True)
                if measured:
                    save_sample_figure(resolve(args.figure), split, kept, write=group.write)
                    if score:
                        k = len(score.thresholds)
                        report_localization(score.result(hits[:k], hits[k:]), args.cam_threshold)


def report_localization(result, threshold):
    """Share of val images localized (IoU >= 0.5) at each threshold, beside a centred box."""
    acc, centred = result
    best = max(acc, key=lambda t: (acc[t], -abs(t - threshold)))
    t = min(acc, key=lambda t: abs(t - threshold))
    print(f"localization on val (IoU >= 0.5 with the true box): {acc[t]:.3f} at --cam-threshold {threshold:g}, "
          f"centred box of the same mean area {centred[t]:.3f}; best threshold {best:g}: {acc[best]:.3f} (MaxBoxAcc)", flush=True)


def main(args):
    device = dist.setup(args.device)
    seed_everything(args.seed)
    pretrained = weights_path_arg(args.pretrained, args.arch)
    if pretrained and not args.localize_only:
        require_weights(pretrained, args.arch)  # stop at once, not after reading the data
    cli.resolve_recipe(args, pretrained)
    if not args.localize_only:
        args.resize = args.resize or RESIZE
    config = cli.train_config(args, device)
    out = resolve(args.out)
    classes, splits = load_dataset(resolve(args.data))
    check_overlap(splits, allow=args.allow_overlap)
    if args.preflight:  # bounded; writes only --out/preflight.json
        return preflight.coarse(args, config, training_parts(args, classes, splits, pretrained), splits, pretrained)
    truth = val_boxes(args, splits["val"])
    args.figure = str(resolve(args.figure or out / "sample.png"))
    writes, folders = ([], []) if args.localize_only else fit_outputs(out, args.epochs if args.keep_epochs else 0)
    reads = [("the checkpoint", out / CHECKPOINT)] if args.localize_only else [("--pretrained", pretrained)]
    outputs.claim(out, writes + [("--figure", args.figure)] + [("the masks", masks_path(out, n)) for n in splits],
                  reads + [("the true boxes", resolve(args.data) / "truth" / "boxes.csv")], splits.values(), folders)
    if args.localize_only:
        ckpt = load_checkpoint(out / CHECKPOINT)
        check_matches(ckpt, out / CHECKPOINT, kind="coarse", arch=args.arch, class_ids=classes.ids)
        args.resize = args.resize or CoarseConfig.from_args(ckpt["args"]).resize
        model = model_from_checkpoint(ckpt)
        source = f"{out / CHECKPOINT} (epoch {ckpt['epoch']}, step {ckpt['step']})"
    else:
        model = train(args, config, training_parts(args, classes, splits, pretrained))
        source = f"{out / CHECKPOINT} (epoch {args.epochs})"
    steady_heap()  # the localization pass (after training: this keeps the heap's size, for inference only)
    localize_splits(prepare_model(model, device, config.eval.compile), args, config.eval, splits, source, truth)


if __name__ == "__main__":
    cli.run(main, get_args_parser())
