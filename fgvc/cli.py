"""Flags shared by the stage scripts, and the one way they report errors."""
import argparse
import os
import sys

import torch

from . import dist
from .errors import UserError


def default_device():
    return "cuda" if torch.cuda.is_available() else "cpu"


def default_workers():
    return min(8, os.cpu_count() or 1)


def add_data_args(parser, out_default):
    g = parser.add_argument_group("data and outputs (relative paths resolve against the repo root)")
    g.add_argument("--data", default="data/", help="dataset root with train2019.json, val2019.json, test2019.json (default: data/)")
    g.add_argument("--out", default=out_default, help=f"output directory: checkpoint, logs, masks (default: {out_default})")
    g.add_argument("--workers", type=int, default=default_workers(), help="data loader processes (default: min(8, cpus))")
    g.add_argument("--device", default=default_device(), help="cuda or cpu (default: cuda when available)")
    g.add_argument("--max-bad-images", type=int, default=100, help="unreadable images skipped before the run stops (default: 100)")
    return g


def add_model_args(parser):
    g = parser.add_argument_group("model")
    g.add_argument("--arch", default="senet154", help="any pretrainedmodels model name (default: senet154)")
    g.add_argument("--pretrained", default=None, help="ImageNet weights file, or 'none' (default: res/<official file name>, e.g. res/senet154-c7b49a05.pth)")
    g.add_argument("--img-size", type=int, default=448, help="square input size (default: 448)")
    g.add_argument("--freeze", action=argparse.BooleanOptionalAction, default=None,
                   help="freeze the stem and first stage (default: frozen with pretrained weights, as the original; "
                        "nothing frozen with --pretrained none)")
    g.add_argument("--frozen-bn", choices=("train", "eval"), default="train",
                   help="batch norm of the frozen layers: 'train' keeps updating its statistics, as the original "
                        "(whole network in training mode); 'eval' keeps the pretrained statistics (default: train)")
    g.add_argument("--dropout", type=float, default=0.25, help="Dropout2d on the last feature map in training, both stages (default: 0.25)")
    return g


def add_train_args(parser):
    g = parser.add_argument_group("training (defaults: the original solution)")
    g.add_argument("--epochs", type=int, default=32, help="epochs (default: 32)")
    g.add_argument("--batch-size", type=int, default=14, help="images per step and process; the global batch is this times the number of processes (default: 14)")
    g.add_argument("--eval-batch-size", type=int, default=None, help="images per inference batch (default: 2 x --batch-size)")
    g.add_argument("--lr", type=float, default=0.04, help="peak learning rate of the head, for the global batch (default: 0.04)")
    g.add_argument("--optimizer", choices=("sgd", "adamw"), default="sgd", help="sgd: the original's SGD with Nesterov momentum 0.9; adamw: for short runs from scratch (default: sgd)")
    g.add_argument("--weight-decay", type=float, default=5e-4, help="weight decay (default: 5e-4)")
    g.add_argument("--backbone-lr-ratio", type=float, default=None, help="backbone lr / head lr (default: 0.1 with pretrained weights, as the original; 1 with --pretrained none)")
    g.add_argument("--amp", choices=("bf16", "fp16", "off"), default="bf16", help="autocast precision; fp16 (with a GradScaler) on CUDA only (default: bf16)")
    g.add_argument("--seed", type=int, default=0, help="random seed: same seed, same machine, same run (default: 0)")
    g.add_argument("--resume", action="store_true", help="continue the run saved in --out/checkpoint.pt")
    g.add_argument("--save-every", type=int, default=1000, help="also save a checkpoint every N steps (default: 1000; 0: at epoch ends only)")
    g.add_argument("--keep-epochs", action="store_true", help="also keep each epoch's weights as --out/epoch-<N>.pt (weights only; the original kept model-1 ... model-32)")
    g.add_argument("--log-every", type=int, default=20, help="TensorBoard loss every N steps (default: 20)")
    g.add_argument("--sync-bn", action="store_true", help="SyncBatchNorm across processes under torchrun")
    return g


def resolve_recipe(args, pretrained):
    """Fill in the defaults that depend on the weights: with ImageNet weights the original's recipe
    (stem and first stage frozen, backbone at 0.1x the head's lr); from scratch (pretrained None)
    nothing frozen and the backbone at the head's rate, since random layers frozen stay random.
    Explicit flags win."""
    if args.freeze is None:
        args.freeze = pretrained is not None
    if args.backbone_lr_ratio is None:
        args.backbone_lr_ratio = 0.1 if pretrained is not None else 1.0
    return args


def config(args):
    """The flags as a plain dict for checkpoints, plus the number of processes."""
    cfg = {k: (str(v) if not isinstance(v, (int, float, str, bool, type(None), list, tuple)) else v) for k, v in vars(args).items()}
    cfg["world_size"] = dist.world()
    if cfg.get("eval_batch_size") is None and "batch_size" in cfg:
        cfg["eval_batch_size"] = 2 * cfg["batch_size"]
    return cfg


def run(main, parser):
    """Parse the flags and call main(args); a UserError or a failed write is one line and exit code 2/1."""
    args = parser.parse_args()
    try:
        main(args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        sys.exit(2)
    except OSError as e:
        print(f"error: {e.filename or ''}: {e.strerror or e} (previous files left intact)", file=sys.stderr, flush=True)
        sys.exit(1)
    finally:
        dist.cleanup()

