"""Stage 2: the fine classifier, trained from ImageNet weights on crops around the coarse masks.

    cd fine && python3 train.py                       # the original: senet154, 448 px crops, 32 epochs
    torchrun --nproc_per_node 4 fine/train.py ...     # several GPUs (see README)

Reads  --data/{train,val}2019.json and their images; --coarse/masks_{train,val}.npz;
       --pretrained (res/senet154-c7b49a05.pth).
Writes --out/checkpoint.pt, --out/log.jsonl, --out/tb/ (TensorBoard); --out is locked while the run lasts.
"""
import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]; sys.path.insert(0, str(ROOT))

from fgvc import cli, dist, outputs
from fgvc.annotations import load_dataset
from fgvc.backbones import require_weights, weights_path_arg
from fgvc.crop import CENTRES, CropTransform
from fgvc.datasets import ImageDataset
from fgvc.engine import fit, seed_everything
from fgvc.masks import load_masks, masks_path
from fgvc.paths import resolve
from fgvc.stages import build_model, model_args


def get_args_parser():
    parser = argparse.ArgumentParser(description="Fine stage: classifier on CAM crops")
    cli.add_data_args(parser, out_default="fine/out")
    parser.add_argument("--coarse", default="coarse/out", help="directory with the coarse stage's masks_{train,val}.npz (default: coarse/out)")
    cli.add_model_args(parser)
    parser.add_argument("--crop-k", type=float, default=2.0, help="crop side = sqrt(k * mask area) in training (default: 2)")
    parser.add_argument("--crop-centre", choices=CENTRES, default="original",
                        help="original: row and column drawn independently from the middle thirds of the mask's rows "
                             "and columns (may fall off the mask); on-mask: one mask pixel (default: original)")
    cli.add_train_args(parser)
    return parser


def main(args):
    device = dist.setup(args.device)
    seed_everything(args.seed)
    pretrained = weights_path_arg(args.pretrained, args.arch)
    if pretrained:
        require_weights(pretrained, args.arch)
    cli.resolve_recipe(args, pretrained)
    classes, splits = load_dataset(resolve(args.data), splits=("train", "val"))
    coarse, out = resolve(args.coarse), resolve(args.out)
    writes, folders = outputs.fit_outputs(out, args.epochs if args.keep_epochs else 0)
    reads = [("--pretrained", pretrained)] + [("the --coarse masks", masks_path(coarse, n)) for n in splits]
    outputs.claim(out, writes, reads, splits.values(), folders)
    crop = dict(size=args.img_size, k=args.crop_k, centre=args.crop_centre)
    train_set = ImageDataset(splits["train"], CropTransform(train=True, **crop), args.seed, masks=load_masks(coarse, splits["train"]))
    val_set = ImageDataset(splits["val"], CropTransform(train=False, **crop), args.seed, masks=load_masks(coarse, splits["val"]))
    model = build_model("fine", args.arch, len(classes), pretrained=pretrained, freeze=args.freeze, dropout=args.dropout,
                        frozen_bn=args.frozen_bn)
    margs = model_args("fine", args.arch, len(classes), args.freeze, args.dropout)
    fit(model, train_set, val_set, config=cli.train_config(args, device), out_dir=out, class_ids=classes.ids, model_args=margs)


if __name__ == "__main__":
    cli.run(main, get_args_parser())
