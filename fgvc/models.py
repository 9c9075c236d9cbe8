"""Backbones from pretrainedmodels, and the two heads of the method.

CoarseNet: features -> Dropout2d(0.25) -> 1x1 conv to the classes = class activation map (CAM);
its spatial mean is the logits. FineNet: features -> Dropout2d(0.25) -> global average pool ->
linear. As in the original, both heads start from Kaiming-normal weights and a zero bias.
Both take uint8 RGB batches: `Normalize`, their first layer, turns them into the backbone's
input space once, on the device. Both are built on `features()`: pretrainedmodels' `logits()`
pools with a fixed 7x7 window and breaks at 448 px.
"""
import warnings
from pathlib import Path

import pretrainedmodels
import torch
import torch.nn.functional as F
from torch import nn

from .errors import CheckpointError
from .paths import resolve

HEAD_PREFIXES = ("last_linear.", "fc.")  # pretrainedmodels' head, and torchvision's name for it


def imagenet_settings(arch):
    if arch not in pretrainedmodels.pretrained_settings:
        names = ", ".join(sorted(pretrainedmodels.model_names))
        raise CheckpointError(f"--arch {arch}: not a pretrainedmodels model (choose one of: {names})")
    return pretrainedmodels.pretrained_settings[arch]["imagenet"]


def default_weights(arch):
    """res/<file name of the official ImageNet weights>, e.g. res/senet154-c7b49a05.pth."""
    return "res/" + imagenet_settings(arch)["url"].rsplit("/", 1)[-1]


class Normalize(nn.Module):
    """uint8 RGB (N, 3, H, W) -> float in the backbone's input space, range and mean/std."""

    def __init__(self, settings):
        super().__init__()
        self.bgr = settings["input_space"] == "BGR"
        self.scale = 255.0 if settings["input_range"][1] == 1 else 1.0  # mean/std are in that range
        self.register_buffer("mean", torch.tensor(settings["mean"]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(settings["std"]).view(1, 3, 1, 1), persistent=False)

    def forward(self, x):
        if self.bgr:
            x = x.flip(1)
        x = x.float() / self.scale
        return (x - self.mean) / self.std

    def mean_pixel(self):
        """The uint8 RGB colour that normalises to (about) zero: the original's fill after normalising."""
        m = (self.mean.flatten() * self.scale).tolist()
        return tuple(int(round(v)) for v in (m[::-1] if self.bgr else m))


def mean_pixel(arch):
    """The backbone's mean as uint8 RGB: the fill of the grid mask, the rotation border and padding."""
    return Normalize(imagenet_settings(arch)).mean_pixel()


def _frozen_prefix(backbone):
    """The stem and the first stage: every top-level child up to and including `layer1`."""
    names = [n for n, _ in backbone.named_children()]
    if "layer1" not in names:
        return []
    return names[: names.index("layer1") + 1]


def require_weights(path, arch):
    """The resolved weights path; stops at once, with the download address, if it is missing."""
    path = resolve(path)
    if not path.is_file():
        url = imagenet_settings(arch)["url"]
        raise CheckpointError(
            f"--pretrained {path}: file not found. Download the ImageNet weights of {arch} from {url} "
            f"into {path.parent}/, or train from scratch with --pretrained none"
        )
    return path


def load_imagenet_weights(backbone, path, arch):
    """Load an ImageNet state dict (the published file format) into a headless backbone.

    Exactly the 1000-class head keys may be left out; anything else is a wrong file.
    """
    path = require_weights(path, arch)
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle with code, or not a torch file at all
        raise CheckpointError(f"--pretrained {path}: not a plain weights file ({type(e).__name__}: {_first_line(e)})") from None
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise CheckpointError(f"--pretrained {path}: not a state dict of tensors")
    sd = {k.removeprefix("module."): v for k, v in sd.items()}
    head = sorted(k for k in sd if k.startswith(HEAD_PREFIXES))
    body = {k: v for k, v in sd.items() if not k.startswith(HEAD_PREFIXES)}
    if not head:
        raise CheckpointError(f"--pretrained {path}: no classifier head keys ({', '.join(HEAD_PREFIXES)}): not an ImageNet file for {arch}")
    own = backbone.state_dict()
    shape = [k for k in body if k in own and own[k].shape != body[k].shape]
    if shape:
        k = shape[0]
        raise CheckpointError(
            f"--pretrained {path}: {len(shape)} tensors have the wrong shape for {arch} "
            f"(first: {k} {tuple(body[k].shape)} vs {tuple(own[k].shape)})"
        )
    msg = backbone.load_state_dict(body, strict=False)
    if msg.missing_keys or msg.unexpected_keys:
        raise CheckpointError(
            f"--pretrained {path}: not the weights of {arch}: {len(msg.missing_keys)} missing keys "
            f"(first: {msg.missing_keys[:3]}), {len(msg.unexpected_keys)} unexpected (first: {msg.unexpected_keys[:3]})"
        )
    return head


def _first_line(e):
    return (str(e).strip().splitlines() or [""])[0][:200]


def build_backbone(arch, pretrained):
    """A pretrainedmodels network without its head; returns (backbone, feature channels)."""
    settings = imagenet_settings(arch)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        net = pretrainedmodels.__dict__[arch](num_classes=1000, pretrained=None)
    channels = net.last_linear.in_features
    del net.last_linear
    if pretrained and str(pretrained).lower() != "none":
        load_imagenet_weights(net, pretrained, arch)
    return net, channels, settings


class _Net(nn.Module):
    """Shared by both heads: normalisation, backbone, frozen stem + first stage, and the
    original's Dropout2d on the last feature map (active in training only).

    `frozen_bn`: 'train' (the original: the whole network stays in training mode, so the frozen
    layers' batch-norm statistics keep updating) or 'eval' (frozen layers keep their statistics).
    """

    def __init__(self, arch, pretrained, freeze=True, dropout=0.25, frozen_bn="train"):
        super().__init__()
        if frozen_bn not in ("train", "eval"):
            raise ValueError(f"frozen_bn {frozen_bn!r}: 'train' or 'eval'")
        self.backbone, self.channels, settings = build_backbone(arch, pretrained)
        self.normalize = Normalize(settings)
        self.dropout = nn.Dropout2d(dropout)
        self.frozen_bn = frozen_bn
        self.frozen = _frozen_prefix(self.backbone) if freeze else []
        if freeze and not self.frozen:
            warnings.warn(f"{arch}: no 'layer1' stage found, nothing is frozen")
        for name in self.frozen:
            for p in getattr(self.backbone, name).parameters():
                p.requires_grad_(False)

    def train(self, mode=True):
        super().train(mode)
        if self.frozen_bn == "eval":
            for name in self.frozen:
                getattr(self.backbone, name).eval()
        return self

    def features(self, x):
        """The last feature map (N, C, h, w), with Dropout2d in training."""
        return self.dropout(self.backbone.features(self.normalize(x)))

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

    def __init__(self, arch, num_classes, pretrained=None, freeze=True, dropout=0.25, frozen_bn="train"):
        super().__init__(arch, pretrained, freeze, dropout, frozen_bn)
        self.head = init_head(nn.Conv2d(self.channels, num_classes, kernel_size=1))

    def forward_cam(self, x):
        """(logits (N, K), CAM (N, K, h, w)) from one forward pass."""
        cam = self.head(self.features(x))
        return cam.mean(dim=(2, 3)), cam

    def forward(self, x):
        return self.forward_cam(x)[0]


class FineNet(_Net):
    """The fine classifier: global average pooling and a linear layer."""

    def __init__(self, arch, num_classes, pretrained=None, freeze=True, dropout=0.25, frozen_bn="train"):
        super().__init__(arch, pretrained, freeze, dropout, frozen_bn)
        self.head = init_head(nn.Linear(self.channels, num_classes))

    def forward(self, x):
        return self.head(F.adaptive_avg_pool2d(self.features(x), 1).flatten(1))


KINDS = {"coarse": CoarseNet, "fine": FineNet}


def build_model(kind, arch, num_classes, pretrained=None, freeze=True, dropout=0.25, frozen_bn="train"):
    """The model of a stage; `model_args` of a checkpoint rebuild it (pretrained=None)."""
    return KINDS[kind](arch, num_classes, pretrained=pretrained, freeze=freeze, dropout=dropout, frozen_bn=frozen_bn)


def model_args(kind, arch, num_classes, freeze, dropout=0.25):
    return {"kind": kind, "arch": arch, "num_classes": num_classes, "freeze": freeze, "dropout": dropout}


def weights_path_arg(value, arch):
    """--pretrained: 'none', a path, or (None) the default file name for `arch`."""
    if value is None:
        return default_weights(arch)
    return None if str(value).lower() == "none" else str(Path(value))
