"""The stage registry: what makes the coarse and the fine stage differ, declared once per stage.

A Stage names its model (a head on the backbone, fgvc/models.py), its label in tables, the input
it is scored on, and the flags that a resumed run must keep. Checkpoints record the stage by name
(`model_args["kind"]`); test.py, the ablation and the benchmarks look it up here instead of
branching on "coarse" / "fine". A new stage is one more entry (README, Code map).
"""
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .checkpoint import CHECKPOINT, KINDS, check_matches, load_checkpoint, load_weights
from .crop import TTA_FACTORS, TTA_MIRROR_FACTORS, MultiCropTransform
from .datasets import ImageDataset
from .errors import UserError
from .inference import prepare_model
from .masks import load_masks
from .models import CoarseNet, FineNet
from .transforms import EvalTransform


def whole_images(ckpt, split, *, seed=0, **_):
    """The coarse model's input: the whole image, squashed to its training size. One pass, so no
    page cache is kept."""
    return ImageDataset(split, EvalTransform(ckpt["args"]["img_size"]), seed, cache=False)


def tta_crops(ckpt, split, *, coarse_dir, seed=0, factors=None, mirror_factors=None, centre=None):
    """The fine model's input: the test-time crops around the coarse masks (crop.MultiCropTransform),
    with the crop-centre rule `centre` (None: the one the fine model was trained with; checkpoints
    older than the flag were trained 'on-mask')."""
    if factors is not None and mirror_factors is not None and not [*factors, *mirror_factors]:
        raise UserError("--tta-factors and --tta-mirror-factors are both empty: no crops to score")
    centre = centre or ckpt["args"].get("crop_centre") or "on-mask"
    factors = TTA_FACTORS if factors is None else factors
    mirror_factors = TTA_MIRROR_FACTORS if mirror_factors is None else mirror_factors
    crops = MultiCropTransform(ckpt["args"]["img_size"], factors, mirror_factors, centre)
    return ImageDataset(split, crops, seed, masks=load_masks(coarse_dir, split), cache=False)


@dataclass(frozen=True)
class Stage:
    name: str  # as checkpoints record it (model_args["kind"])
    label: str  # in the evaluation tables
    model: type  # the head: Module(arch, num_classes, pretrained=, freeze=, dropout=, frozen_bn=)
    scoring_dataset: Callable  # (checkpoint, split, **options) -> the dataset test.py scores
    resume_keeps: tuple  # flags a --resume must share with the saved run


# The flags of both stages that a resumed run must keep, in the order a mismatch is reported: every
# flag that changes what training computes (the optimizer state restores weight decay, so a new one
# would be ignored while the checkpoint's args claimed it; the decoding limits change which images
# are trained on). Any other changed flag is applied from the resumed step on, and said so.
_KEEP = ("arch", "img_size", "resize", "epochs", "batch_size", "lr", "backbone_lr_ratio", "weight_decay", "seed", "freeze",
         "world_size", "crop_k", "optimizer", "dropout", "frozen_bn", "rotation", "crop_centre", "pretrained", "amp",
         "sync_bn", "max_megapixels", "lenient_jpeg")
_COARSE_ONLY, _FINE_ONLY = ("resize", "rotation"), ("crop_k", "crop_centre")

STAGES = {
    "coarse": Stage("coarse", "coarse (whole image)", CoarseNet, whole_images,
                    tuple(k for k in _KEEP if k not in _FINE_ONLY)),
    "fine": Stage("fine", "fine (crops)", FineNet, tta_crops,
                  tuple(k for k in _KEEP if k not in _COARSE_ONLY)),
}
assert tuple(STAGES) == KINDS


def build_model(kind, arch, num_classes, *, pretrained=None, freeze=True, dropout=0.25, frozen_bn="train"):
    """The model of a stage; `model_args` of a checkpoint rebuild it (pretrained=None)."""
    return STAGES[kind].model(arch, num_classes, pretrained=pretrained, freeze=freeze, dropout=dropout, frozen_bn=frozen_bn)


def model_args(kind, arch, num_classes, freeze, dropout=0.25):
    """What a checkpoint stores to rebuild its model."""
    return {"kind": kind, "arch": arch, "num_classes": num_classes, "freeze": freeze, "dropout": dropout}


def model_from_checkpoint(ckpt):
    """Rebuild the model from the checkpoint alone and load its weights."""
    m = ckpt["model_args"]
    model = build_model(m["kind"], m["arch"], m["num_classes"], freeze=m.get("freeze", True), dropout=m.get("dropout", 0.25))
    load_weights(model, ckpt)
    return model


def load_stage(out_dir, kind, classes, device):
    """The `kind` model saved in `out_dir`, checked against the dataset's classes, on `device`;
    returns (model, checkpoint)."""
    path = Path(out_dir) / CHECKPOINT
    ckpt = load_checkpoint(path)
    check_matches(ckpt, path, kind=kind, class_ids=classes.ids)
    return prepare_model(model_from_checkpoint(ckpt), device), ckpt
