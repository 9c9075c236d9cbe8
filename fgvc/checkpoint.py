"""Self-describing checkpoints, written atomically and loaded with weights_only=True.

One dict: model, optimizer, scaler, epoch (completed), step (optimizer steps so far),
step_in_epoch (steps into the epoch in progress, for a mid-epoch save), args, model_args (what
rebuilds the model), class_ids (the category id of each class index), and what prediction needs
that only the dataset knew (`class_info`): class_names, supercategories (None when the json has
none) and class_counts (train images per class: the prior). Checkpoints older than these keys
load all the same; `stored_class_info` tells whether one has them.
"""
import io
from pathlib import Path

import torch

from .atomic import atomic_write
from .errors import CheckpointError, first_line

CHECKPOINT = "checkpoint.pt"  # in each stage's --out
FORMAT = 1
# Keys every checkpoint has (load_checkpoint refuses a file without them).
REQUIRED = ("model", "optimizer", "scaler", "epoch", "step", "step_in_epoch", "args", "model_args", "class_ids")
MODEL_ARGS = ("kind", "arch", "num_classes")


def kinds():
    """The stages whose models a checkpoint can hold: the registry's (fgvc/stages.py)."""
    from .stages import STAGES  # here: the registry imports this module

    return tuple(STAGES)


def _plain(value):
    """Make args storable under weights_only: paths become strings."""
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def on_cpu(value):
    """Every tensor of a (nested) state moved to the CPU: a checkpoint made on a GPU loads with a
    plain torch.load on a machine without one."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, dict):
        return {k: on_cpu(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(on_cpu(v) for v in value)
    return value


def unwrap(model):
    return model.module if hasattr(model, "module") else model


def class_info(classes, counts):
    """What a checkpoint stores of its classes besides their ids (annotations.Classes and the
    per-class train counts), so that prediction needs no dataset."""
    return {"class_names": [str(n) for n in classes.names] if classes.names else None,
            "supercategories": [str(s) for s in classes.supercategories] if classes.supercategories else None,
            "class_counts": [int(c) for c in counts]}


def stored_class_info(ckpt):
    """(names, supercategories or None, train counts) stored by training, or None for a checkpoint
    older than them (or saved without them)."""
    if ckpt.get("class_names") is None or ckpt.get("class_counts") is None:
        return None
    return ckpt["class_names"], ckpt.get("supercategories"), ckpt["class_counts"]


def save_checkpoint(path, model, *, args, model_args, class_ids, optimizer=None, scaler=None, progress=(0, 0, 0), info=None):
    """Write the checkpoint atomically, every tensor on the CPU. `progress`: (epochs completed, optimizer steps so far,
    steps into the epoch in progress); `args`: the run's flags (TrainConfig.flags); `info`: the
    classes' names, supercategories and train counts (`class_info`)."""
    epoch, step, step_in_epoch = progress
    state = {
        "format": FORMAT,
        "model": on_cpu(unwrap(model).state_dict()),
        "optimizer": on_cpu(optimizer.state_dict()) if optimizer is not None else None,
        "scaler": scaler.state_dict() if scaler is not None else None,
        "epoch": epoch,
        "step": step,
        "step_in_epoch": step_in_epoch,
        "args": _plain(dict(args)),
        "model_args": dict(model_args),
        "class_ids": [int(c) for c in class_ids],
        **(info or {}),
    }
    buf = io.BytesIO()  # serialise first: a failure here never touches the file on disk
    torch.save(state, buf)
    atomic_write(path, lambda f: f.write(buf.getbuffer()))


def epoch_weights_path(out_dir, epoch):
    return Path(out_dir) / f"epoch-{epoch}.pt"


def save_epoch_weights(out_dir, epoch, model):
    """--keep-epochs: the model's state dict alone after `epoch` (the original's model-<epoch>)."""
    buf = io.BytesIO()
    torch.save(on_cpu(unwrap(model).state_dict()), buf)
    atomic_write(epoch_weights_path(out_dir, epoch), lambda f: f.write(buf.getbuffer()))


def load_checkpoint(path):
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(f"{path}: refused or unreadable checkpoint ({type(e).__name__}: {first_line(e)})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT or "model_args" not in ckpt:
        raise CheckpointError(f"{path}: not a checkpoint of this repository (a plain weights file goes to --pretrained)")
    lacks = [k for k in REQUIRED if k not in ckpt] + [f"model_args.{k}" for k in MODEL_ARGS if k not in (ckpt["model_args"] or {})]
    if lacks:
        raise CheckpointError(f"{path}: incomplete checkpoint, no {', '.join(lacks)}")
    problem = _structure_problem(ckpt)
    if problem:
        raise CheckpointError(f"{path}: damaged checkpoint: {problem}")
    ckpt["path"] = str(path)  # where it was read from, for error messages; never saved
    return ckpt


def _count(v):
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _structure_problem(ckpt):
    """What is wrong with the types and ranges of a checkpoint's entries, or None."""
    m = ckpt["model_args"]
    if not isinstance(ckpt["model"], dict) or not all(isinstance(v, torch.Tensor) for v in ckpt["model"].values()):
        return "'model' is not a state dict of tensors"
    opt = ckpt["optimizer"]
    if opt is not None and not (isinstance(opt, dict) and isinstance(opt.get("param_groups"), list) and isinstance(opt.get("state"), dict)):
        return "'optimizer' is not an optimizer state (no param_groups and state)"
    if ckpt["scaler"] is not None and not isinstance(ckpt["scaler"], dict):
        return "'scaler' is not a dict"
    for key in ("epoch", "step", "step_in_epoch"):
        if not _count(ckpt[key]):
            return f"'{key}' is {ckpt[key]!r}, expected a whole number >= 0"
    if not isinstance(m, dict) or m.get("kind") not in kinds() or not isinstance(m.get("arch"), str):
        return "'model_args' does not name a coarse or fine model and its arch"
    if not _count(m.get("num_classes")) or m["num_classes"] < 1:
        return f"'model_args.num_classes' is {m.get('num_classes')!r}"
    ids = ckpt["class_ids"]
    if not isinstance(ids, list) or len(ids) != m["num_classes"] or not all(isinstance(c, int) for c in ids):
        return f"'class_ids' is not a list of {m['num_classes']} integer category ids"
    if not isinstance(ckpt["args"], dict):
        return "'args' is not a dict"
    return _class_info_problem(ckpt, m["num_classes"])


def _class_info_problem(ckpt, n):
    """What is wrong with the optional class_names / supercategories / class_counts, or None."""
    for key, ok in (("class_names", lambda v: isinstance(v, str)), ("supercategories", lambda v: isinstance(v, str)),
                    ("class_counts", _count)):
        v = ckpt.get(key)
        if v is not None and (not isinstance(v, list) or len(v) != n or not all(ok(x) for x in v)):
            kind = "whole numbers >= 0" if key == "class_counts" else "strings"
            return f"'{key}' is not a list of {n} {kind}"
    return None


def check_progress(ckpt, path, epochs, steps_per_epoch):
    """--resume: the saved epoch and step must lie inside the run being continued."""
    epoch, into = ckpt["epoch"], ckpt["step_in_epoch"]
    if ckpt["optimizer"] is None:
        raise CheckpointError(f"{path}: damaged checkpoint: no optimizer state to resume with")
    if epoch > epochs or into > steps_per_epoch or (epoch == epochs and into > 0):
        raise CheckpointError(
            f"{path}: damaged checkpoint: epoch {epoch}, step {into} into the next, but the run has {epochs} epochs "
            f"of {steps_per_epoch} steps")
    if ckpt["step"] < epoch * steps_per_epoch + into:
        raise CheckpointError(f"{path}: damaged checkpoint: {ckpt['step']} optimizer steps cannot reach epoch {epoch}, step {into}")


def check_matches(ckpt, path, kind=None, arch=None, class_ids=None):
    """Stop with what differs when a checkpoint is not the model the command asks for."""
    margs = ckpt["model_args"]
    if kind is not None and margs["kind"] != kind:
        raise CheckpointError(f"{path}: a {margs['kind']} model, expected a {kind} model")
    if arch is not None and margs["arch"] != arch:
        raise CheckpointError(f"{path}: architecture {margs['arch']}, but --arch is {arch}")
    if class_ids is not None:
        mine, theirs = [int(c) for c in class_ids], ckpt["class_ids"]
        if mine != theirs:
            extra = sorted(set(theirs) - set(mine))[:5]
            lack = sorted(set(mine) - set(theirs))[:5]
            raise CheckpointError(
                f"{path}: class mapping differs from the dataset's: checkpoint has {len(theirs)} classes, "
                f"dataset {len(mine)}; only in checkpoint: {extra}, only in dataset: {lack}"
                + ("; same ids, other order" if not extra and not lack else "")
            )


# Flags that differ on every resume by nature: never reported.
RESUME_ONLY = ("resume",)


def check_resume(saved, path, flags, essential):
    """--resume with other `essential` flags than the saved run is an error naming each difference.
    `saved`, `flags`: the saved run's and this run's whole configs (config.StageConfig.from_args).
    Returns the other flags that changed, as '--flag old -> new' (applied from here on)."""

    def change(k):
        return f"--{k.replace('_', '-')} {saved.get(k)!r} -> {flags.get(k)!r}"

    def changed(k):  # a checkpoint may hold a tuple flag as the list it was parsed into
        a, b = saved.get(k), flags.get(k)
        return (list(a) if isinstance(a, tuple) else a) != (list(b) if isinstance(b, tuple) else b)

    diffs = [change(k) for k in essential if changed(k)]
    if diffs:
        raise CheckpointError(f"{path}: --resume with changed essential flags: {'; '.join(diffs)}")
    return [change(k) for k in sorted(set(flags) | set(saved)) if k not in essential and k not in RESUME_ONLY and changed(k)]


def load_weights(model, ckpt):
    """load_state_dict, with a one-line CheckpointError when the weights do not fit the model."""
    path = ckpt.get("path", "checkpoint")
    try:
        model.load_state_dict(ckpt["model"])
    except (RuntimeError, TypeError, AttributeError) as e:
        raise CheckpointError(f"{path}: weights do not fit the model it describes ({first_line(e)})") from None
