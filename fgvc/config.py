"""Every flag of every stage, declared once: its default (the original solution's), its range or
choices, its help text, and whether a resumed run must keep it (docs/config.md lists them all).

A `Flag` is one command-line flag; a `Section` a group of them (a help group, shared by the stages
that take it); a `StageConfig` the sections of one command: `CoarseConfig` (coarse/train.py),
`FineConfig` (fine/train.py), `TestConfig` (test.py). `fgvc.cli.parser(config)` builds argparse from
it and `fgvc.cli.validate` checks the ranges; nothing else in the package writes a flag's default
or range. A checkpoint stores a run's flags as a plain dict (`args`: the argparse names, plus
`world_size`); `StageConfig.from_args` turns such a dict back into a whole config (flags the
checkpoint is older than get the value those runs had, `Flag.absent`), and `StageConfig.argv`
replays a config as a command line (bench/ablate.py's retraining).

Once parsed, the flags travel as two small typed configs: Runtime (how a pass runs: device,
images per batch, loader processes, autocast precision) and TrainConfig (the training loop's
recipe and bookkeeping, with the Runtime of its evaluation passes).
"""
import argparse
import math
import os
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Optional

import torch

from .crop import CENTRES, TRAIN_K, TTA_FACTORS, TTA_MIRROR_FACTORS
from .errors import UserError
from .transforms import ROTATIONS

_UNSET = object()


# ---------------------------------------------------------------- one flag

@dataclass(frozen=True)
class Range:
    """Allowed numbers: >= lo (> lo when not lo_inclusive), and <= hi when hi is given."""

    lo: float
    hi: Optional[float] = None
    lo_inclusive: bool = True

    def __str__(self):
        return f"{'>=' if self.lo_inclusive else '>'} {self.lo:g}" + (f" and <= {self.hi:g}" if self.hi is not None else "")

    def check(self, option, v):
        if isinstance(v, float) and not math.isfinite(v):
            raise UserError(f"{option} {v}: not a finite number")
        if (v < self.lo if self.lo_inclusive else v <= self.lo) or (self.hi is not None and v > self.hi):
            raise UserError(f"{option} {v:g}: must be {self}")


@dataclass(frozen=True)
class Flag:
    """One flag. `name` is its argparse name (`--img-size` is img_size); `type` None makes a
    switch: `switch='on'` (store_true) or `'both'` (--x / --no-x, default None: decided later).
    `default` may be a function (evaluated when the parser is built: the device, the workers);
    `shown` is the default as the help says it when the value alone would not say it;
    `absent` the value of a run recorded before the flag existed (default: `default`)."""

    name: str
    type: Optional[Callable]
    default: Any
    help: str
    choices: Any = None  # a tuple, or a function returning one (the stage registry's names)
    range: Optional[Range] = None  # of the number, or of each number of a list
    nargs: Any = None
    metavar: Any = None
    switch: Optional[str] = None
    keep: bool = False  # a --resume must have the saved run's value: it changes what training computes
    # (weight decay too: the optimizer state restores it; the decoding limits: which images are trained on)
    shown: Optional[str] = None
    absent: Any = _UNSET
    parse: Optional[Callable] = None  # the value -> the number its range is checked on (None: none)
    positional: bool = False  # an argument, not a flag (predict.py's PATH...)

    @property
    def option(self):
        return self.name.upper() if self.positional else "--" + self.name.replace("_", "-")

    def default_value(self):
        return self.default() if callable(self.default) else self.default

    def absent_value(self):
        return self.default_value() if self.absent is _UNSET else self.absent

    def choice_list(self):
        return self.choices() if callable(self.choices) else self.choices

    def default_text(self):
        """The default as help and docs/config.md say it ('' for an off switch)."""
        if self.shown is not None:
            return self.shown
        if self.switch == "on":
            return ""
        d = self.default_value()
        return " ".join(map(str, d)) if isinstance(d, (list, tuple)) else str(d)

    def help_text(self):
        shown = self.default_text()
        return f"{self.help} (default: {shown})" if shown else self.help

    def add_to(self, group):
        """Add the flag to an argparse group."""
        if self.switch == "on":
            return group.add_argument(self.option, action="store_true", help=self.help_text())
        if self.switch == "both":
            return group.add_argument(self.option, action=argparse.BooleanOptionalAction, default=self.default_value(),
                                      help=self.help_text())
        extra = {k: v for k, v in (("nargs", self.nargs), ("metavar", self.metavar), ("choices", self.choice_list())) if v is not None}
        if self.positional:
            return group.add_argument(self.name, type=self.type, help=self.help, **extra)
        default = self.default_value()
        return group.add_argument(self.option, type=self.type, default=list(default) if self.nargs == "*" else default,
                                  help=self.help_text(), **extra)

    def check(self, value):
        """A UserError (one line) when `value` lies outside the flag's range."""
        if self.parse is not None and value is not None:
            value = self.parse(value)
        if self.range is None or value is None:
            return
        for v in value if isinstance(value, (list, tuple)) else [value]:
            if v is not None:
                self.range.check(self.option, v)

    def argv(self, value):
        """The command-line words that give the flag `value` ([] for None or an off switch)."""
        if self.positional:
            return [str(v) for v in value] if isinstance(value, (list, tuple)) else [str(value)]
        if self.switch == "on":
            return [self.option] if value else []
        if self.switch == "both":
            return [] if value is None else [self.option if value else "--no-" + self.option[2:]]
        if value is None:
            return []
        if isinstance(value, (list, tuple)):
            return [self.option, *map(str, value)]
        return [self.option, str(value)]


@dataclass(frozen=True)
class Section:
    """Flags that go together (one help group), shared by the stages that take them."""

    title: str
    flags: tuple

    def __getitem__(self, name):
        return next(f for f in self.flags if f.name == name)


@dataclass(frozen=True)
class StageConfig:
    """The flags of one command, as sections."""

    name: str
    description: str
    sections: tuple
    keeps_also: tuple = ()  # recorded by the run (not flags) that a resume must keep too

    def flags(self):
        return [f for s in self.sections for f in s.flags]

    def __getitem__(self, name):
        for f in self.flags():
            if f.name == name:
                return f
        raise KeyError(name)

    def __contains__(self, name):
        return any(f.name == name for f in self.flags())

    def defaults(self):
        return {f.name: f.default_value() for f in self.flags()}

    def resume_keeps(self):
        """What a --resume must share with the saved run, in the order a mismatch is reported."""
        return tuple(f.name for f in self.flags() if f.keep) + self.keeps_also

    def from_args(self, args):
        """The whole config of a recorded run (a checkpoint's `args`, old ones too): every flag,
        the recorded value or, when the run is older than the flag (or recorded None, decided at
        run time), the value it ran with."""
        values = {f.name: f.absent_value() for f in self.flags()}
        values.update({k: v for k, v in args.items() if v is not None or k not in values})
        return argparse.Namespace(**values)

    def argv(self, values, **changes):
        """The command line that replays `values` (a Namespace or dict, e.g. from `from_args`)
        with `changes` applied: every flag of this config that has a value."""
        v = {**(vars(values) if isinstance(values, argparse.Namespace) else dict(values)), **changes}
        return [w for f in self.flags() if f.name in v for w in f.argv(v[f.name])]


# ---------------------------------------------------------------- values computed from others

def default_device():
    """--device's default, resolved at start by fgvc.devices.resolve."""
    return "auto"


def default_workers():
    return min(8, os.cpu_count() or 1)


def eval_batch_size(flags):
    """--eval-batch-size, or its default: twice --batch-size."""
    return flags.get("eval_batch_size") or 2 * flags["batch_size"]


def parse_tau(value):
    """--tau: a number, or None for 'auto'."""
    if value == "auto":
        return None
    try:
        return float(value)
    except ValueError:
        raise UserError(f"--tau {value!r}: a number or 'auto'") from None


# With ImageNet weights, the original's recipe; from scratch, nothing frozen (random layers frozen
# stay random) and the backbone at the head's rate. Explicit --freeze / --backbone-lr-ratio win.
RECIPE = {True: {"freeze": True, "backbone_lr_ratio": 0.1}, False: {"freeze": False, "backbone_lr_ratio": 1.0}}


def _stage_kinds():
    from .stages import STAGES  # the registry: the one list of stage kinds

    return tuple(STAGES)


# ---------------------------------------------------------------- the sections

COUNT, POSITIVE, SIZE = Range(1), Range(0, lo_inclusive=False), Range(16)
WORKERS = Flag("workers", int, default_workers, "data loader processes", range=Range(0), shown="min(8, cpus)")
DEVICE = Flag("device", str, default_device, "auto, cpu, cuda or cuda:N; auto: cuda when torch can use it, else cpu, but where "
              "an NVIDIA GPU is present that torch cannot use, a one-line error naming the driver / CUDA mismatch instead of a "
              "silent CPU run (--device cpu runs on the CPU anyway)", shown="auto")
AMP = Flag("amp", str, "auto", "autocast precision; auto: on CUDA bf16 where the GPU has it natively (compute capability "
           ">= 8.0), else fp16 with a GradScaler; on the CPU bf16 where it is native (AVX512-BF16/AMX), off elsewhere (bf16 "
           "emulated on an AVX2 CPU is ~10x slower than fp32); fp16 (with a GradScaler) on CUDA only",
           choices=("auto", "bf16", "fp16", "off"), keep=True)
DETERMINISTIC = Flag("deterministic", None, False, "deterministic kernels: cudnn.deterministic, cudnn.benchmark off, "
                     "torch.use_deterministic_algorithms(True) (an op without a deterministic kernel stops the run with one line "
                     "naming it) and CUBLAS_WORKSPACE_CONFIG=:4096:8; for bit-for-bit reruns and resumes on CUDA (slower; "
                     "untested on a GPU here); the CPU is deterministic without it (README, Reproducibility)", switch="on")
BATCH_SIZE = Flag("batch_size", int, 14, "images per step and process; the global batch is this times the number of processes",
                  range=COUNT, keep=True)
SEED = Flag("seed", int, 0, "random seed: same seed, same machine, same run", range=Range(0, 2**32 - 1), keep=True)
DATA = Flag("data", str, "data/", "dataset root with train2019.json, val2019.json, test2019.json")
MAX_BAD_IMAGES = Flag("max_bad_images", int, 100, "unreadable images skipped before the run stops", range=Range(0))
COARSE_DIR = Flag("coarse", str, "coarse/out", "directory with the coarse stage's masks_{train,val}.npz")
COMPILE = Flag("compile", None, False, "torch.compile the normalisation and backbone (inductor; the dropout and the head stay "
               "eager), in training, validation, localization and scoring: faster steps after a warm-up of a minute or more per "
               "distinct input shape, the same results within float rounding, unchanged checkpoints (an addition: the original "
               "had none; a --resume may turn it on or off)", switch="on")
ALLOW_OVERLAP = Flag("allow_overlap", None, False, "accept val / test images that are train images (same file_name or same "
                     "content; default: refused at start, one line naming both entries)", switch="on")

DECODING = (
    # at most 2**30 pixels: OpenCV refuses larger images itself (and 1e308 overflowed int())
    Flag("max_megapixels", float, 100.0, "an image whose header declares more pixels is unreadable (a decompression bomb)",
         range=Range(0, 2**30 / 1e6, lo_inclusive=False), shown="100", keep=True),
    Flag("lenient_jpeg", None, False, "use JPEGs that libjpeg reports as corrupt but still decodes "
         "(default: such a file is unreadable)", switch="on", keep=True),
)


def data_section(out):
    """Data and outputs of a training stage writing into `out` by default."""
    return Section("data and outputs (relative paths resolve against the repo root)", (
        DATA,
        Flag("out", str, out, "output directory: checkpoint, logs, masks"),
        WORKERS,
        DEVICE,
        COMPILE,
        MAX_BAD_IMAGES,
        ALLOW_OVERLAP,
        *DECODING,
    ))


MODEL = Section("model", (
    Flag("arch", str, "senet154", "a pretrainedmodels model name, or timm/<name> for a timm model with a spatial feature map "
         "(docs/backbones.md)", keep=True),
    Flag("pretrained", str, None, "ImageNet weights file (.pth or .safetensors; never downloaded), or 'none'", keep=True,
         shown="res/<official file name>, e.g. res/senet154-c7b49a05.pth; timm: the packaged file, or res/<hub name>.safetensors"),
    Flag("img_size", int, 448, "square input size", range=SIZE, keep=True),
    Flag("freeze", None, None, "freeze the stem and first stage", switch="both", keep=True,
         shown="frozen with pretrained weights, as the original; nothing frozen with --pretrained none"),
    Flag("frozen_bn", str, "train", "batch norm of the frozen layers: 'train' keeps updating its statistics, as the original "
         "(whole network in training mode); 'eval' keeps the pretrained statistics", choices=("train", "eval"), keep=True),
    Flag("dropout", float, 0.25, "Dropout2d on the last feature map in training, both stages", range=Range(0, 1), keep=True),
))

RESIZE = 512  # the original's short side before the random crop, and of the whole images localized
COARSE_AUGMENTATION = Section("coarse augmentation", (
    Flag("resize", int, None, "short side before the random crop, and of the whole images localized", range=SIZE, keep=True,
         shown=f"{RESIZE}; with --localize-only, the checkpoint's", absent=RESIZE),
    Flag("rotation", str, ROTATIONS[0], "original: integer angle in [-15, 14], border filled with the mean colour; "
         "smooth: continuous angle, reflected border", choices=ROTATIONS, keep=True),
))

FINE_CROPS = Section("fine crops", (
    Flag("crop_k", float, TRAIN_K, "crop side = sqrt(k * mask area) in training", range=POSITIVE, keep=True, shown=f"{TRAIN_K:g}"),
    # checkpoints older than the flag were trained with the on-mask rule
    Flag("crop_centre", str, CENTRES[0], "original: row and column drawn independently from the middle thirds of the mask's "
         "rows and columns (may fall off the mask); on-mask: one mask pixel", choices=CENTRES, keep=True, absent="on-mask"),
))

TRAIN = Section("training (defaults: the original solution)", (
    Flag("epochs", int, 32, "epochs", range=COUNT, keep=True),
    BATCH_SIZE,
    Flag("eval_batch_size", int, None, "images per inference batch", range=COUNT, shown="2 x --batch-size"),
    Flag("lr", float, 0.04, "peak learning rate of the head, for the global batch", range=POSITIVE, keep=True),
    Flag("optimizer", str, "sgd", "sgd: the original's SGD with Nesterov momentum 0.9; adamw: for short runs from scratch",
         choices=("sgd", "adamw"), keep=True),
    Flag("weight_decay", float, 5e-4, "weight decay", range=Range(0), keep=True),
    Flag("backbone_lr_ratio", float, None, "backbone lr / head lr", range=Range(0), keep=True,
         shown=f"{RECIPE[True]['backbone_lr_ratio']:g} with pretrained weights, as the original; "
               f"{RECIPE[False]['backbone_lr_ratio']:g} with --pretrained none"),
    AMP,
    # 24: a GradScaler halves its scale at every step it skips, so 24 in a row took it from 65536 (2**16) to 2**-8:
    # no overflow of the fp16 range is left to blame; a few in a row are routine (the scale probing upwards)
    Flag("max_overflow_steps", int, 24, "fp16: stop the run (one line, exit 2) after this many optimizer steps in a row "
         "skipped by the GradScaler (an inf / NaN gradient or loss; the weights unchanged, the scale halved each time: 24 "
         "in a row is a scale fallen 2**24-fold, so the model diverged); skipped steps are counted and printed at each "
         "epoch's end. bf16 and fp32 stop at the first non-finite loss", range=COUNT),
    SEED,
    Flag("resume", None, False, "continue the run saved in --out/checkpoint.pt", switch="on"),
    Flag("save_every", int, 1000, "also save a checkpoint every N steps (0: at epoch ends only)", range=Range(0), absent=0),
    Flag("keep_epochs", None, False, "also keep each epoch's weights as --out/epoch-<N>.pt (weights only; the original kept "
         "model-1 ... model-32)", switch="on"),
    Flag("log_every", int, 20, "read the loss, counters and stop requests from the device, and log the loss, every N steps "
         "(and at epoch ends); in between the training loop never waits on the device", range=COUNT),
    Flag("sync_bn", None, False, "SyncBatchNorm across processes under torchrun", switch="on", keep=True),
    DETERMINISTIC,
))

LOCALIZATION = Section("localization", (
    Flag("localize_only", None, False, "skip training; localize with --out/checkpoint.pt", switch="on"),
    Flag("cam_threshold", float, 0.7, "mask = CAM min-max normalised >= this", range=Range(0, 1, lo_inclusive=False)),
    Flag("cam_class", str, "label", "CAM of the true class on train ('label'), or of the predicted class everywhere",
         choices=("label", "predicted")),
    Flag("mask_size", int, (64, 64), "mask resolution, at least 32 x 32", nargs=2, metavar=("H", "W"), range=Range(32, 4096)),
    Flag("figure", str, None, "image / mask / overlay grid of a few val images", shown="--out/sample.png"),
))

TEST_INPUTS = Section("inputs and outputs (relative paths resolve against the repo root)", (
    replace(DATA, help="dataset root"),
    Flag("fine", str, "fine/out", "fine stage directory with checkpoint.pt"),
    replace(COARSE_DIR, help="coarse stage directory: checkpoint.pt and masks"),
    Flag("submission", str, None, "output file", shown="submission.csv; submission_val.csv for --split val"),
    ALLOW_OVERLAP,
))

TEST_SCORING = Section("what to score", (
    Flag("model", str, "fine", "fine model on crops, or the coarse baseline on whole images", choices=_stage_kinds),
    Flag("split", str, "test", "split to predict", choices=("test", "val")),
    Flag("eval", None, False, "also print the evaluation table on val (always on with --split val)", switch="on"),
    Flag("tau", str, "1", "correction p / prior**tau; 0 turns it off; 'auto' picks it on val", range=Range(0), parse=parse_tau,
         shown="1, the original's division"),
    Flag("tta_factors", float, TTA_FACTORS, "crop area factors on the image", nargs="*", range=POSITIVE),
    Flag("crop_centre", str, None, "crop-centre rule of the test-time crops", choices=CENTRES, shown="the fine model's --crop-centre"),
    Flag("tta_mirror_factors", float, TTA_MIRROR_FACTORS, "crop area factors on the mirror", nargs="*", range=POSITIVE),
))

PREFLIGHT = Section("preflight (fgvc/preflight.py)", (
    Flag("preflight", None, False, "run this command's settings on its device for a bounded time, then print and write "
         "only --out/preflight.json (test.py: beside --submission): images/s of the loader alone and of the step, which "
         "of the two limits the run, peak memory, and the projected time of the full run", switch="on"),
    Flag("preflight_steps", int, 50, "batches each preflight measurement times, after its warm-up", range=COUNT),
))

# How a scoring pass runs (test.py, bench/ablate.py).
SCORING_RUNTIME = Section("runtime", (
    replace(BATCH_SIZE, default=8, help="images per batch, each with all its crops", keep=False),
    WORKERS,
    DEVICE,
    COMPILE,
    replace(AMP, keep=False),
    replace(SEED, help="seed of the crop centres", keep=False),
))

CoarseConfig = StageConfig("coarse", "Coarse stage: CAM classifier and localization masks",
                           (data_section("coarse/out"), MODEL, COARSE_AUGMENTATION, TRAIN, LOCALIZATION, PREFLIGHT), keeps_also=("world_size",))
FineConfig = StageConfig("fine", "Fine stage: classifier on CAM crops",
                         (data_section("fine/out"), Section("the coarse stage's output", (COARSE_DIR,)), MODEL, FINE_CROPS, TRAIN, PREFLIGHT),
                         keeps_also=("world_size",))
TestConfig = StageConfig("test", "Test: fine model on crops, prior correction, submission.csv",
                         (TEST_INPUTS, TEST_SCORING, Section("runtime", SCORING_RUNTIME.flags + (DETERMINISTIC,)
                                                      + tuple(replace(f, keep=False) for f in DECODING)), PREFLIGHT))

def parse_fixed_tau(value):
    """predict.py's --tau: a number ('auto' needs a labelled val split, which prediction has not)."""
    if value == "auto":
        raise UserError("--tau auto: picked on val by test.py; predict.py takes a number (e.g. the one test.py printed)")
    return parse_tau(value)


PREDICT_INPUTS = Section("inputs and outputs (relative paths resolve against the repo root)", (
    Flag("paths", str, None, "image files, folders (searched recursively, sorted; images recognised by their content, not "
         "their names) and @list.txt files (one path a line, relative to the list's folder)", nargs="+", metavar="PATH",
         positional=True, shown="required"),
    replace(COARSE_DIR, help="coarse stage directory with checkpoint.pt (its CAM localizes every image)"),
    Flag("fine", str, "fine/out", "fine stage directory with checkpoint.pt"),
    Flag("data", str, None, "dataset root whose train2019.json gives the class names and train counts, for checkpoints "
         "older than storing them", shown="none: the checkpoints' own"),
    Flag("out", str, "predictions.csv", "output file: .csv (one row an image) or .jsonl (one object a line)"),
    Flag("overlay", str, None, "folder for one PNG an image (same stem): the photo, its CAM, the mask's box, the largest crop, "
         "the top 3", shown="none"),
))

PREDICT_SCORING = Section("what to predict", (
    TEST_SCORING["model"],
    replace(TEST_SCORING["tau"], parse=parse_fixed_tau, help="correction p / prior**tau; 0 turns it off"),
    Flag("topk", int, 5, "classes per image, best first", range=COUNT),
    TEST_SCORING["tta_factors"],
    TEST_SCORING["crop_centre"],
    TEST_SCORING["tta_mirror_factors"],
))

PREDICT_CHUNK = Flag("chunk_size", int, 4096, "images localized, then scored, together (rounded up to a multiple of "
                     "--batch-size): memory holds one chunk's masks (and CAMs, with --overlay), never every image's",
                     range=COUNT)
PredictConfig = StageConfig("predict", "Predict: the species in any photos, with the whole method (CAM, crops, prior correction)",
                            (PREDICT_INPUTS, PREDICT_SCORING,
                             Section("runtime", SCORING_RUNTIME.flags + (PREDICT_CHUNK,)
                                     + tuple(replace(f, keep=False) for f in DECODING))))
CONFIGS = (CoarseConfig, FineConfig, TestConfig, PredictConfig)


# ---------------------------------------------------------------- the parsed flags, typed

@dataclass(frozen=True)
class Runtime:
    """Where and how a pass runs; changes how fast, never what it computes (for one amp)."""

    device: torch.device
    batch_size: int
    workers: int = 0
    amp: str = "off"  # 'bf16', 'fp16' or 'off' (cli.resolve_amp turns 'auto' into one of them)
    compile: bool = False  # torch.compile the model's body (--compile; inference.prepare_model)


@dataclass(frozen=True)
class TrainConfig:
    """The training loop's flags (TRAIN). `lr` is the head's peak rate; the backbone learns at
    `backbone_lr_ratio` times it; both follow the triangle over `epochs`. `flags` is every flag
    of the command as a plain dict: what a checkpoint stores as its `args` (the format is
    unchanged), and what a resumed run is compared with (`StageConfig.resume_keeps`)."""

    epochs: int
    batch_size: int
    lr: float
    backbone_lr_ratio: float
    eval: Runtime  # the per-epoch validation pass
    optimizer: str
    weight_decay: float
    seed: int
    resume: bool
    save_every: int  # also save every N steps (0: at epoch ends only)
    keep_epochs: bool  # also keep each epoch's weights as epoch-<N>.pt
    log_every: int
    sync_bn: bool
    max_bad_images: int
    max_overflow_steps: int  # fp16: stop after this many steps in a row skipped by the GradScaler
    flags: dict = field(default_factory=dict)  # every flag, as the checkpoint stores it

    @property
    def device(self):
        return self.eval.device

    @property
    def amp(self):
        return self.eval.amp

    @classmethod
    def from_flags(cls, flags, device):
        """From the flags dict (`cli.flags_dict`, or a checkpoint's `args`), on `device`; a flag
        the dict lacks has its value for runs older than it (`Flag.absent`)."""
        f = dict(flags)
        f["eval_batch_size"] = eval_batch_size(f)
        v = {x.name: x.absent_value() for x in TRAIN.flags + (MAX_BAD_IMAGES,)}
        v.update({k: val for k, val in f.items() if val is not None})
        runtime = {k: f[k] for k in ("workers", "amp", "compile") if k in f}  # else Runtime's: no loader processes, fp32, eager
        return cls(
            epochs=v["epochs"], batch_size=v["batch_size"], lr=v["lr"], backbone_lr_ratio=v["backbone_lr_ratio"],
            eval=Runtime(torch.device(device), v["eval_batch_size"], **runtime),
            optimizer=v["optimizer"], weight_decay=v["weight_decay"], seed=v["seed"], resume=bool(v["resume"]),
            save_every=v["save_every"], keep_epochs=bool(v["keep_epochs"]), log_every=v["log_every"],
            sync_bn=bool(v["sync_bn"]), max_bad_images=v["max_bad_images"], max_overflow_steps=v["max_overflow_steps"], flags=f,
        )


# ---------------------------------------------------------------- docs/config.md

COMMANDS = {"coarse": "coarse/train.py", "fine": "fine/train.py", "test": "test.py", "predict": "predict.py"}


def markdown(configs=CONFIGS):
    """docs/config.md: every flag of every command, by section (`python3 -m fgvc.config > docs/config.md`;
    tests/test_config.py keeps the file equal to this)."""
    def cell(text):
        return str(text).replace("|", "\\|").replace("<", "\\<")

    lines = ["# Every flag", "",
             "Generated from `fgvc/config.py` (`python3 -m fgvc.config > docs/config.md`; a test keeps the two equal).",
             "Defaults are the original solution's. *keep*: a `--resume` must have the saved run's value",
             "(checked, with the number of processes). A checkpoint stores every flag in its `args`; a checkpoint",
             "written before a flag existed is read with the value in *older runs*.", ""]
    for c in configs:
        lines += [f"## {COMMANDS.get(c.name, c.name)}", "", c.description + ".", ""]
        for s in c.sections:
            lines += [f"### {s.title}", "", "| flag | default | allowed | keep | older runs | what it does |",
                      "| --- | --- | --- | --- | --- | --- |"]
            for f in s.flags:
                allowed = ("one of " + ", ".join(f.choice_list())) if f.choices else (str(f.range) if f.range else "")
                if f.nargs is not None and f.range:
                    allowed = f"each {allowed}"
                older = "" if f.absent is _UNSET else f"`{f.absent}`"
                default = f.default_text() or ("off" if f.switch == "on" else "")
                option = f.option + (f" / --no-{f.option[2:]}" if f.switch == "both" else "")
                lines.append(f"| `{option}` | {cell(default)} | {cell(allowed)} | {'yes' if f.keep else ''} | {older} | {cell(f.help)} |")
            lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    print(markdown(), end="\n")
