"""The stage registry: what makes the coarse and the fine stage differ, declared once per stage.

A Stage names its model (a head on the backbone, fgvc/models.py), its label in tables, the input
it is scored on, its flags (fgvc/config.py: among them the ones a resumed run must keep) and the
stage scored beside it. Checkpoints record the stage by name (`model_args["kind"]`); test.py, the
ablation and the benchmarks look it up here instead of branching on "coarse" / "fine", and
`STAGES` is the one list of stage kinds (checkpoint.kinds() reads it). A new stage is one more
entry (docs/code.md).
"""
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from .checkpoint import CHECKPOINT, check_matches, load_checkpoint, load_weights
from .config import MODEL, RECIPE, CoarseConfig, FineConfig, StageConfig
from .crop import TTA_FACTORS, TTA_MIRROR_FACTORS, MultiCropTransform
from .datasets import ImageDataset
from .errors import UserError
from .inference import prepare_model, score
from .masks import load_masks
from .models import CoarseNet, FineNet
from .transforms import EvalTransform, ShortSideTransform


def whole_images(ckpt, split, *, seed=0, **_):
    """The coarse model's input: the whole image, squashed to its training size. One pass, so no
    page cache is kept."""
    return ImageDataset(split, EvalTransform(CoarseConfig.from_args(ckpt["args"]).img_size), seed, cache=False)


def tta_crops(ckpt, split, *, coarse_dir=None, masks=None, seed=0, factors=None, mirror_factors=None, centre=None):
    """The fine model's input: the test-time crops around the coarse masks (crop.MultiCropTransform),
    with the crop-centre rule `centre` (None: the one the fine model was trained with, as its
    checkpoint's config says). The masks: `masks` (one per row of `split`, as predict.py localizes
    them), else the coarse stage's file in `coarse_dir` (test.py)."""
    if factors is not None and mirror_factors is not None and not [*factors, *mirror_factors]:
        raise UserError("--tta-factors and --tta-mirror-factors are both empty: no crops to score")
    trained = FineConfig.from_args(ckpt["args"])
    factors = TTA_FACTORS if factors is None else factors
    mirror_factors = TTA_MIRROR_FACTORS if mirror_factors is None else mirror_factors
    crops = MultiCropTransform(trained.img_size, factors, mirror_factors, centre or trained.crop_centre)
    return ImageDataset(split, crops, seed, masks=load_masks(coarse_dir, split) if masks is None else masks, cache=False)


def localization_input(split, resize, seed=0):
    """What the coarse model localizes: the whole image, short side `resize`, aspect kept (the
    masks files of coarse/train.py, the masks predict.py keeps in memory)."""
    return ImageDataset(split, ShortSideTransform(resize), seed)


def score_split(model, ckpt, split, runtime, *, reduce=None, desc=None, **inputs):
    """The one scoring path of test.py and predict.py: the input of the checkpoint's stage for
    `split` (`Stage.scoring_dataset`: whole images, or the test-time crops around the masks that
    `inputs` give, `coarse_dir=` a masks file or `masks=` in memory; `seed=`, the crop options),
    scored by `inference.score`: (probabilities or what `reduce` keeps, ok flags) in row order."""
    dataset = STAGES[ckpt["model_args"]["kind"]].scoring_dataset(ckpt, split, **inputs)
    return score(model, dataset, runtime, reduce=reduce, desc=desc)


@dataclass(frozen=True)
class Stage:
    name: str  # as checkpoints record it (model_args["kind"])
    label: str  # in the evaluation tables
    model: type  # the head: Module(arch, num_classes, pretrained=, freeze=, dropout=, frozen_bn=)
    scoring_dataset: Callable  # (checkpoint, split, **options) -> the dataset test.py scores
    config: StageConfig  # its flags (fgvc/config.py); config.resume_keeps(): what a --resume must keep
    baseline: Optional[str] = None  # the stage test.py scores beside this one on the hidden test labels
    localized: bool = False  # its input is cut around the coarse masks (predict.py localizes first)

    @property
    def resume_keeps(self):
        return self.config.resume_keeps()

    def other(self):
        """The other stage of the evaluation table on val."""
        return next(s for s in STAGES.values() if s is not self)


STAGES = {  # in the order of the evaluation tables
    "coarse": Stage("coarse", "coarse (whole image)", CoarseNet, whole_images, CoarseConfig),
    "fine": Stage("fine", "fine (crops)", FineNet, tta_crops, FineConfig, baseline="coarse", localized=True),
}


def _model_defaults():
    """The model's options as the flags' defaults have them (with pretrained weights: frozen)."""
    return {"freeze": RECIPE[True]["freeze"], "dropout": MODEL["dropout"].default, "frozen_bn": MODEL["frozen_bn"].default}


def build_model(kind, arch, num_classes, *, pretrained=None, **options):
    """The model of a stage; `model_args` of a checkpoint rebuild it (pretrained=None). `options`:
    freeze, dropout, frozen_bn (default: as the flags' defaults have them)."""
    return STAGES[kind].model(arch, num_classes, pretrained=pretrained, **{**_model_defaults(), **options})


def model_args(kind, arch, num_classes, freeze, dropout=None):
    """What a checkpoint stores to rebuild its model (dropout None: the flag's default)."""
    dropout = _model_defaults()["dropout"] if dropout is None else dropout
    return {"kind": kind, "arch": arch, "num_classes": num_classes, "freeze": freeze, "dropout": dropout}


def model_from_checkpoint(ckpt):
    """Rebuild the model from the checkpoint alone and load its weights."""
    m = ckpt["model_args"]
    old = {k: m[k] for k in ("freeze", "dropout") if k in m}  # else: what checkpoints older than them had
    model = build_model(m["kind"], m["arch"], m["num_classes"], **old)
    load_weights(model, ckpt)
    return model


def load_stage(out_dir, kind, classes, device, compile=False):
    """The `kind` model saved in `out_dir`, checked against the dataset's classes, on `device`
    (its body compiled with `compile`); returns (model, checkpoint)."""
    path = Path(out_dir) / CHECKPOINT
    ckpt = load_checkpoint(path)
    check_matches(ckpt, path, kind=kind, class_ids=classes.ids)
    return prepare_model(model_from_checkpoint(ckpt), device, compile), ckpt
