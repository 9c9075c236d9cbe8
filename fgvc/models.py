"""The two heads of the method, on a backbone from the adapter (fgvc/backbones.py).

CoarseNet: features -> Dropout2d -> 1x1 conv to the classes = class activation map (CAM);
its spatial mean is the logits. FineNet: features -> Dropout2d -> global average pool -> linear
(--dropout, the original's p is its default in fgvc/config.py). As in the original, both heads start from Kaiming-normal weights and a zero bias.
Both take uint8 RGB batches: `Normalize`, their first layer, turns them into the backbone's
input space once, on the device. Both are built on the backbone's `features()` (the last
feature map): pretrainedmodels' `logits()` pools with a fixed 7x7 window and breaks at 448 px.
"""
import warnings

import torch
import torch.nn.functional as F
from torch import nn

from .backbones import Normalize, build_backbone


class _Net(nn.Module):
    """Shared by both heads: normalisation, backbone, frozen stem + first stage, and the
    original's Dropout2d on the last feature map (active in training only).

    `frozen_bn`: 'train' (the original: the whole network stays in training mode, so the frozen
    layers' batch-norm statistics keep updating) or 'eval' (frozen layers keep their statistics).
    """

    def __init__(self, arch, pretrained, *, freeze, dropout, frozen_bn):
        super().__init__()
        if frozen_bn not in ("train", "eval"):
            raise ValueError(f"frozen_bn {frozen_bn!r}: 'train' or 'eval'")
        backbone = build_backbone(arch, pretrained)
        self.backbone, self.channels = backbone.module, backbone.channels
        self.normalize = Normalize(backbone.settings)
        self.dropout = nn.Dropout2d(dropout)
        self.frozen_bn = frozen_bn
        self.frozen = backbone.frozen if freeze else []
        self.compiled_body = None  # torch.compile of _Net.body, once compile_body() was called
        if freeze and not self.frozen:
            warnings.warn(f"{arch}: no stem and first stage found, nothing is frozen")
        for name in self.frozen:
            for p in self.backbone.get_submodule(name).parameters():
                p.requires_grad_(False)

    def train(self, mode=True):
        super().train(mode)
        if self.frozen_bn == "eval":
            for name in self.frozen:
                self.backbone.get_submodule(name).eval()
        return self

    def body(self, x):
        """Normalisation and backbone: the last feature map (N, C, h, w) before the dropout."""
        return self.backbone.features(self.normalize(x))

    def compile_body(self):
        """torch.compile the body (--compile), in place: the parameters, and so the state-dict
        keys, stay the model's own (no `_orig_mod.` prefix: checkpoints load with or without it),
        and the dropout, seeded per step (engine.step_seed), and the head stay eager. The unbound
        function is compiled, so a copy of the model does not call this one's modules. Shapes:
        dynamo's default (static first, dynamic once a size changes: a few graphs, docs/gpu.md)."""
        if self.compiled_body is None:
            self.compiled_body = torch.compile(_Net.body)
        return self

    def features(self, x):
        """The last feature map (N, C, h, w), with Dropout2d in training."""
        x = self.body(x) if self.compiled_body is None else self.compiled_body(self, x)
        return self.dropout(x)

    def param_groups(self):
        """(backbone parameters, head parameters) that are trained."""
        body = [p for p in self.backbone.parameters() if p.requires_grad]
        head = [p for n, p in self.named_parameters() if not n.startswith("backbone.") and p.requires_grad]
        return body, head


def init_head(layer):
    """The original's head initialisation: Kaiming normal (fan_in, relu), zero bias."""
    nn.init.kaiming_normal_(layer.weight, mode="fan_in", nonlinearity="relu")
    nn.init.zeros_(layer.bias)
    return layer


class CoarseNet(_Net):
    """The coarse classifier: its logits are the spatial mean of its class activation map."""

    def __init__(self, arch, num_classes, *, pretrained, freeze, dropout, frozen_bn):
        super().__init__(arch, pretrained, freeze=freeze, dropout=dropout, frozen_bn=frozen_bn)
        self.head = init_head(nn.Conv2d(self.channels, num_classes, kernel_size=1))

    def forward_cam(self, x):
        """(logits (N, K), CAM (N, K, h, w)) from one forward pass."""
        cam = self.head(self.features(x))
        return cam.mean(dim=(2, 3)), cam

    def forward(self, x):
        return self.forward_cam(x)[0]


class FineNet(_Net):
    """The fine classifier: global average pooling and a linear layer."""

    def __init__(self, arch, num_classes, *, pretrained, freeze, dropout, frozen_bn):
        super().__init__(arch, pretrained, freeze=freeze, dropout=dropout, frozen_bn=frozen_bn)
        self.head = init_head(nn.Linear(self.channels, num_classes))

    def forward(self, x):
        return self.head(F.adaptive_avg_pool2d(self.features(x), 1).flatten(1))
