"""Flags shared by the stage scripts, and the one way they report errors."""
import argparse
import math
import os
import signal

import torch

from . import dist, image, interrupt, outputs
from .config import Runtime, TrainConfig
from .errors import UserError, fail, last_line


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
    add_decoding_args(g)
    return g


def add_amp_arg(g):
    g.add_argument("--amp", choices=("auto", "bf16", "fp16", "off"), default="auto",
                   help="autocast precision; auto: bf16 on CUDA and on CPUs with native bf16 (AVX512-BF16/AMX), off elsewhere (bf16 emulated on an AVX2 CPU is ~10x slower than fp32); fp16 (with a GradScaler) on CUDA only (default: auto)")


def resolve_amp(amp, device):
    """'auto' -> 'bf16' where bf16 runs natively (CUDA; a CPU with AVX512-BF16 or AMX), else 'off'."""
    if amp != "auto":
        return amp
    if torch.device(device).type == "cuda":
        return "bf16"
    return "bf16" if torch.ops.mkldnn._is_mkldnn_bf16_supported() else "off"


def add_decoding_args(g):
    g.add_argument("--max-megapixels", type=float, default=100.0,
                   help="an image whose header declares more pixels is unreadable (a decompression bomb) (default: 100)")
    g.add_argument("--lenient-jpeg", action="store_true",
                   help="use JPEGs that libjpeg reports as corrupt but still decodes (default: such a file is unreadable)")


def add_model_args(parser):
    g = parser.add_argument_group("model")
    g.add_argument("--arch", default="senet154",
                   help="a pretrainedmodels model name, or timm/<name> for a timm model with a spatial feature map "
                        "(README, Backbones and weights) (default: senet154)")
    g.add_argument("--pretrained", default=None,
                   help="ImageNet weights file (.pth or .safetensors; never downloaded), or 'none' (default: "
                        "res/<official file name>, e.g. res/senet154-c7b49a05.pth; timm: the packaged file, or res/<hub name>.safetensors)")
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
    add_amp_arg(g)
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


def flags_dict(args):
    """The flags as a plain dict, as checkpoints store them, plus the number of processes."""
    flags = {k: (str(v) if not isinstance(v, (int, float, str, bool, type(None), list, tuple)) else v) for k, v in vars(args).items()}
    flags["world_size"] = dist.world()
    if flags.get("eval_batch_size") is None and "batch_size" in flags:
        flags["eval_batch_size"] = 2 * flags["batch_size"]
    return flags


def train_config(args, device):
    """The training loop's config (config.TrainConfig), built once from the flags."""
    return TrainConfig.from_flags(flags_dict(args), device)


def runtime(args, device, batch_size=None):
    """The Runtime of an inference pass: --batch-size (or `batch_size`), --workers, --amp on `device`."""
    return Runtime(torch.device(device), batch_size or args.batch_size, args.workers, args.amp)


# Range of every numeric flag any stage has: (lowest, highest, lowest allowed itself).
# Checked at start, so that nothing runs (and nothing is written) with an impossible value.
LIMITS = {
    "epochs": (1, None, True), "batch_size": (1, None, True), "eval_batch_size": (1, None, True),
    "workers": (0, None, True), "img_size": (16, None, True), "resize": (16, None, True),
    "max_bad_images": (0, None, True), "save_every": (0, None, True), "log_every": (1, None, True),
    "seed": (0, 2**32 - 1, True), "lr": (0, None, False), "weight_decay": (0, None, True),
    "backbone_lr_ratio": (0, None, True), "dropout": (0, 1, True), "crop_k": (0, None, False),
    "cam_threshold": (0, 1, False), "mask_size": (32, 4096, True), "tta_factors": (0, None, False),
    "tta_mirror_factors": (0, None, False), "tau": (0, None, True), "max_megapixels": (0, None, False),
}


def _check_number(name, v, lo, hi, lo_ok):
    flag = "--" + name.replace("_", "-")
    if isinstance(v, float) and not math.isfinite(v):
        raise UserError(f"{flag} {v}: not a finite number")
    if (v < lo if lo_ok else v <= lo) or (hi is not None and v > hi):
        rng = f"{'>=' if lo_ok else '>'} {lo:g}" + (f" and <= {hi:g}" if hi is not None else "")
        raise UserError(f"{flag} {v:g}: must be {rng}")


def _check_sizes(args):
    """Flags checked against the sizes they produce, for an image of --max-megapixels: a crop side
    sqrt(k x image pixels) must be a finite number (--crop-k 1e308 overflows in the loader), and an
    input of --img-size or a canvas of short side --resize must fit the limit itself."""
    pixels = (getattr(args, "max_megapixels", None) or image.LIMITS["max_pixels"] / 1e6) * 1e6
    for name in ("crop_k", "tta_factors", "tta_mirror_factors"):
        value = getattr(args, name, None)
        for k in value if isinstance(value, (list, tuple)) else [value]:
            if k is not None and not math.isfinite(math.sqrt(k * pixels)):
                raise UserError(f"--{name.replace('_', '-')} {k:g}: the crop side sqrt({k:g} x image pixels) overflows "
                                f"for an image of --max-megapixels {pixels / 1e6:g}")
    for name in ("img_size", "resize"):
        side = getattr(args, name, None)
        if side is not None and side * side > pixels:
            raise UserError(f"--{name.replace('_', '-')} {side}: {side} x {side} pixels, more than --max-megapixels {pixels / 1e6:g}")


def validate(args):
    """Every numeric flag within its range, and a device that exists: one line, exit 2, at start."""
    for name, (lo, hi, lo_ok) in LIMITS.items():
        value = getattr(args, name, None)
        if name == "tau" and value is not None:
            if value == "auto":
                continue
            try:
                value = float(value)
            except ValueError:
                raise UserError(f"--tau {value!r}: a number or 'auto'") from None
        for v in value if isinstance(value, (list, tuple)) else [value]:
            if v is not None:
                _check_number(name, v, lo, hi, lo_ok)
    _check_sizes(args)
    device = getattr(args, "device", None)
    if device is not None:
        try:
            d = torch.device(device)
        except (RuntimeError, ValueError):
            raise UserError(f"--device {device!r}: not a device (cpu, cuda, cuda:N)") from None
        if d.type == "cuda" and not torch.cuda.is_available():
            raise UserError(f"--device {device}: no CUDA device is available here; use --device cpu")
        if d.type == "cuda" and d.index is not None and d.index >= torch.cuda.device_count():
            raise UserError(f"--device {device}: only {torch.cuda.device_count()} CUDA devices")
        if d.type not in ("cpu", "cuda"):
            raise UserError(f"--device {device}: only cpu and cuda are supported")
    return args


def _one_line_error(message):
    fail(message, 2)


def run(main, parser):
    """Parse and check the flags, then call main(args). Exit codes: 0 done; 1 a failed write;
    2 bad input or flags (one line, nothing written); 130 / 143 stopped by SIGINT / SIGTERM or
    SIGUSR1 (one line: where, and the checkpoint on disk)."""
    parser.error = _one_line_error  # argparse's own errors: one line too, no usage block
    interrupt.install()
    try:
        args = validate(parser.parse_args())
        if getattr(args, "amp", None) == "auto":
            args.amp = resolve_amp(args.amp, args.device)
        image.configure(getattr(args, "max_megapixels", None), getattr(args, "lenient_jpeg", None))
        main(args)
    except UserError as e:
        fail(e, 2)
    except OSError as e:
        fail(f"{e.filename or ''}: {e.strerror or e} (previous files left intact)", 1)
    except KeyboardInterrupt:
        fail(interrupt.stop_message(signal.SIGINT), 130)
    except interrupt.Stopped as e:
        fail(str(e) or interrupt.stop_message(e.signum), e.code)
    except Exception as e:
        if "DataLoader worker" not in str(e):
            raise  # a bug in this process: its traceback (the workers are ended below all the same)
        fail(f"a data loader worker failed: {last_line(e)} (previous files left intact)", 1)
    finally:
        interrupt.end_workers()  # before anything can wait for them
        outputs.release()  # the lock of the run's outputs (a process that dies releases it too)
        dist.cleanup()

