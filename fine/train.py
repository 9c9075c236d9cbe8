"""Stage 2: the fine classifier, trained from ImageNet weights on crops around the coarse masks.

    cd fine && python3 train.py                       # the original: senet154, 448 px crops, 32 epochs
    torchrun --nproc_per_node 4 fine/train.py ...     # several GPUs (see README)
    python3 fine/train.py --preflight                 # a few minutes: rates, memory, the projected time

Reads  --data/{train,val}2019.json and their images; --coarse/masks_{train,val}.npz;
       --pretrained (res/senet154-c7b49a05.pth).
Writes --out/checkpoint.pt, --out/log.jsonl, --out/tb/ (TensorBoard); --out is locked while the run lasts.
       With --preflight only --out/preflight.json (fgvc/preflight.py; the --coarse masks when they exist).
"""
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]; sys.path.insert(0, str(ROOT))

from fgvc import cli, dist, outputs, preflight
from fgvc.annotations import class_counts, load_dataset
from fgvc.backbones import require_weights, weights_path_arg
from fgvc.checkpoint import class_info
from fgvc.config import FineConfig
from fgvc.crop import CropTransform
from fgvc.datasets import ImageDataset
from fgvc.engine import Parts, fit, fit_outputs, seed_everything
from fgvc.masks import load_masks, masks_path
from fgvc.overlap import check_overlap
from fgvc.paths import resolve
from fgvc.stages import build_model, model_args


def get_args_parser():
    return cli.parser(FineConfig)  # every flag, its default and range: fgvc/config.py, docs/config.md


def training_parts(args, classes, splits, pretrained, masks):
    """The model to train, its datasets on crops around `masks` ({split: masks}), and what its checkpoint records."""
    crop = dict(size=args.img_size, k=args.crop_k, centre=args.crop_centre)
    train_set = ImageDataset(splits["train"], CropTransform(train=True, **crop), args.seed, masks=masks["train"])
    val_set = ImageDataset(splits["val"], CropTransform(train=False, **crop), args.seed, masks=masks["val"])
    model = build_model("fine", args.arch, len(classes), pretrained=pretrained, freeze=args.freeze, dropout=args.dropout,
                        frozen_bn=args.frozen_bn)
    margs = model_args("fine", args.arch, len(classes), args.freeze, args.dropout)
    return Parts(model, train_set, val_set, margs, classes.ids, class_info(classes, class_counts(splits["train"], len(classes))))


def main(args):
    device = dist.setup(args.device)
    seed_everything(args.seed)
    pretrained = weights_path_arg(args.pretrained, args.arch)
    if pretrained:
        require_weights(pretrained, args.arch)
    cli.resolve_recipe(args, pretrained)
    classes, splits = load_dataset(resolve(args.data), splits=("train", "val"))
    check_overlap(splits, allow=args.allow_overlap)
    coarse, out = resolve(args.coarse), resolve(args.out)
    config = cli.train_config(args, device)
    if args.preflight:  # bounded; writes only --out/preflight.json
        return preflight.fine(args, config, lambda masks: training_parts(args, classes, splits, pretrained, masks), splits, pretrained)
    writes, folders = fit_outputs(out, args.epochs if args.keep_epochs else 0)
    reads = [("--pretrained", pretrained)] + [("the --coarse masks", masks_path(coarse, n)) for n in splits]
    outputs.claim(out, writes, reads, splits.values(), folders)
    parts = training_parts(args, classes, splits, pretrained, {n: load_masks(coarse, s) for n, s in splits.items()})
    fit(parts.model, parts.train_set, parts.val_set, config=config, out_dir=out, class_ids=parts.class_ids, model_args=parts.model_args,
        class_info=parts.class_info)


if __name__ == "__main__":
    cli.run(main, get_args_parser())
