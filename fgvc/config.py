"""The flags, once parsed, as two small typed configs (built by `fgvc.cli`, passed by keyword).

Runtime: how a pass runs (device, images per batch, loader processes, autocast precision), the
group that prediction, localization, evaluation and test all take. TrainConfig: the training
loop's recipe and bookkeeping, with the Runtime of its evaluation passes. `TrainConfig.flags` is
every flag of the command as a plain dict: what a checkpoint stores as its `args` (the format is
unchanged), and what a resumed run is compared with (`stages.Stage.resume_keeps`).
"""
from dataclasses import dataclass, field

import torch


@dataclass(frozen=True)
class Runtime:
    """Where and how a pass runs; changes how fast, never what it computes (for one amp)."""

    device: torch.device
    batch_size: int
    workers: int = 0
    amp: str = "off"  # 'bf16', 'fp16' or 'off' (cli.resolve_amp turns 'auto' into one of them)


@dataclass(frozen=True)
class TrainConfig:
    """The training loop's flags (cli.add_train_args). `lr` is the head's peak rate; the backbone
    learns at `backbone_lr_ratio` times it; both follow the triangle over `epochs`."""

    epochs: int
    batch_size: int
    lr: float
    backbone_lr_ratio: float
    eval: Runtime  # the per-epoch validation pass
    optimizer: str = "sgd"
    weight_decay: float = 5e-4
    seed: int = 0
    resume: bool = False
    save_every: int = 0  # also save every N steps (0: at epoch ends only)
    keep_epochs: bool = False  # also keep each epoch's weights as epoch-<N>.pt
    log_every: int = 20
    sync_bn: bool = False
    max_bad_images: int = 100
    flags: dict = field(default_factory=dict)  # every flag, as the checkpoint stores it

    @property
    def device(self):
        return self.eval.device

    @property
    def amp(self):
        return self.eval.amp

    @classmethod
    def from_flags(cls, flags, device):
        """From the flags dict (`cli.flags_dict`, or a checkpoint's `args`), on `device`."""
        f = dict(flags)
        f["eval_batch_size"] = f.get("eval_batch_size") or 2 * f["batch_size"]
        return cls(
            epochs=f["epochs"], batch_size=f["batch_size"], lr=f["lr"], backbone_lr_ratio=f["backbone_lr_ratio"],
            eval=Runtime(torch.device(device), f["eval_batch_size"], f.get("workers", 0), f.get("amp", "off")),
            optimizer=f.get("optimizer", "sgd"), weight_decay=f.get("weight_decay", 5e-4), seed=f.get("seed", 0),
            resume=bool(f.get("resume")), save_every=f.get("save_every") or 0, keep_epochs=bool(f.get("keep_epochs")),
            log_every=f.get("log_every", 20), sync_bn=bool(f.get("sync_bn")), max_bad_images=f.get("max_bad_images", 100),
            flags=f,
        )
