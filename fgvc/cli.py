"""The command line of every stage, built from its config (fgvc/config.py), and the one way the
stages report errors."""
import argparse
import math
import signal

import torch

from . import devices, dist, image, interrupt, outputs
from .config import RECIPE, Runtime, TrainConfig, eval_batch_size
from .errors import UserError, fail, first_line, last_line

NO_DETERMINISTIC_KERNEL = "does not have a deterministic implementation"  # torch's words


def parser(config):
    """The argparse parser of a stage's config (fgvc/config.py): one help group a section."""
    p = argparse.ArgumentParser(description=config.description)
    p.config = config  # what validate() checks the parsed flags against
    for section in config.sections:
        g = p.add_argument_group(section.title)
        for flag in section.flags:
            flag.add_to(g)
    return p


def resolve_amp(amp, device):
    """'auto' -> on CUDA 'bf16' where the GPU has it natively (compute capability >= 8.0: Ampere
    and later), else 'fp16' (with the GradScaler: bf16 is emulated below 8.0); on the CPU 'bf16'
    where it is native (AVX512-BF16 or AMX), else 'off'."""
    if amp != "auto":
        return amp
    if torch.device(device).type == "cuda":
        return "bf16" if devices.capability(device) >= (8, 0) else "fp16"
    return "bf16" if torch.ops.mkldnn._is_mkldnn_bf16_supported() else "off"


def resolve_recipe(args, pretrained):
    """Fill in the defaults that depend on the weights (config.RECIPE): with ImageNet weights the
    original's recipe (stem and first stage frozen, backbone at 0.1x the head's lr); from scratch
    (pretrained None) nothing frozen and the backbone at the head's rate. Explicit flags win."""
    for name, value in RECIPE[pretrained is not None].items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    return args


def flags_dict(args):
    """The flags as a plain dict, as checkpoints store them, plus the number of processes."""
    flags = {k: (str(v) if not isinstance(v, (int, float, str, bool, type(None), list, tuple)) else v) for k, v in vars(args).items()}
    flags["world_size"] = dist.world()
    if flags.get("eval_batch_size") is None and "batch_size" in flags:
        flags["eval_batch_size"] = eval_batch_size(flags)
    return flags


def train_config(args, device):
    """The training loop's config (config.TrainConfig), built once from the flags."""
    return TrainConfig.from_flags(flags_dict(args), device)


def runtime(args, device, batch_size=None):
    """The Runtime of an inference pass: --batch-size (or `batch_size`), --workers, --amp, --compile on `device`."""
    return Runtime(torch.device(device), batch_size or args.batch_size, args.workers, args.amp, bool(getattr(args, "compile", False)))


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


def validate(args, config):
    """Every flag of `config` within its range, sizes that fit, and a device that exists: one line,
    exit 2, at start."""
    for flag in config.flags():
        flag.check(getattr(args, flag.name, None))
    _check_sizes(args)
    if getattr(args, "device", None) is not None:
        args.device = devices.resolve(args.device)  # auto -> cpu / cuda; cuda where unusable: exit 2
    if getattr(args, "compile", False):
        problem = devices.compile_problem(args.device or "cpu")
        if problem:
            raise UserError(f"--compile: torch.compile cannot run here: {problem}; run without --compile")
    return args


def _one_line_error(message):
    fail(message, 2)


def run(main, parser):
    """Parse and check the flags, then call main(args). Exit codes: 0 done; 1 a failed write (and
    predict.py's no readable image); 2 bad input or flags (one line, nothing written); 130 / 143
    stopped by SIGINT / SIGTERM or SIGUSR1 (one line: where, and the checkpoint on disk)."""
    parser.error = _one_line_error  # argparse's own errors: one line too, no usage block
    interrupt.install()
    try:
        args = validate(parser.parse_args(), parser.config)
        if getattr(args, "amp", None) == "auto":
            args.amp = resolve_amp(args.amp, args.device)
        image.configure(getattr(args, "max_megapixels", None), getattr(args, "lenient_jpeg", None))
        with devices.determinism(getattr(args, "deterministic", False)):
            main(args)
    except UserError as e:
        fail(e, e.code)
    except OSError as e:
        fail(f"{e.filename or ''}: {e.strerror or e} (previous files left intact)", 1)
    except KeyboardInterrupt:
        fail(interrupt.stop_message(signal.SIGINT), 130)
    except interrupt.Stopped as e:
        fail(str(e) or interrupt.stop_message(e.signum), e.code)
    except Exception as e:
        if NO_DETERMINISTIC_KERNEL in str(e):  # --deterministic met an op torch has no deterministic kernel for
            fail(f"--deterministic: {first_line(e)} (previous files left intact); run without --deterministic", 2)
        if "DataLoader worker" not in str(e):
            raise  # a bug in this process: its traceback (the workers are ended below all the same)
        fail(f"a data loader worker failed: {last_line(e)} (previous files left intact)", 1)
    finally:
        interrupt.end_workers()  # before anything can wait for them
        outputs.release()  # the lock of the run's outputs (a process that dies releases it too)
        dist.cleanup()

