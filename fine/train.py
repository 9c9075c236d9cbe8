"""Stage 2: the fine classifier, trained from ImageNet weights on crops around the coarse masks.

    cd fine && python3 train.py                       # the original: senet154, 448 px crops, 32 epochs
    torchrun --nproc_per_node 4 fine/train.py ...     # several GPUs (see README)

Reads  --data/{train,val}2019.json and their images; --coarse/masks_{train,val}.npz;
       --pretrained (res/senet154-c7b49a05.pth).
Writes --out/checkpoint.pt, --out/log.jsonl, --out/tb/ (TensorBoard); --out is locked while the run lasts.
"""
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]; sys.path.insert(0, str(ROOT))

from fgvc import cli, dist, outputs
from fgvc.annotations import class_counts, load_dataset
from fgvc.backbones import require_weights, weights_path_arg
from fgvc.checkpoint import class_info
from fgvc.config import FineConfig
from fgvc.crop import CropTransform
from fgvc.datasets import ImageDataset
from fgvc.engine import fit, fit_outputs, seed_everything
from fgvc.masks import load_masks, masks_path
from fgvc.overlap import check_overlap
from fgvc.paths import resolve
from fgvc.stages import build_model, model_args


def get_args_parser():
    return cli.parser(FineConfig)  # every flag, its default and range: fgvc/config.py, docs/config.md


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
    writes, folders = fit_outputs(out, args.epochs if args.keep_epochs else 0)
    reads = [("--pretrained", pretrained)] + [("the --coarse masks", masks_path(coarse, n)) for n in splits]
    outputs.claim(out, writes, reads, splits.values(), folders)
    crop = dict(size=args.img_size, k=args.crop_k, centre=args.crop_centre)
    train_set = ImageDataset(splits["train"], CropTransform(train=True, **crop), args.seed, masks=load_masks(coarse, splits["train"]))
    val_set = ImageDataset(splits["val"], CropTransform(train=False, **crop), args.seed, masks=load_masks(coarse, splits["val"]))
    model = build_model("fine", args.arch, len(classes), pretrained=pretrained, freeze=args.freeze, dropout=args.dropout,
                        frozen_bn=args.frozen_bn)
    margs = model_args("fine", args.arch, len(classes), args.freeze, args.dropout)
    info = class_info(classes, class_counts(splits["train"], len(classes)))
    fit(model, train_set, val_set, config=cli.train_config(args, device), out_dir=out, class_ids=classes.ids, model_args=margs,
        class_info=info)


if __name__ == "__main__":
    cli.run(main, get_args_parser())
