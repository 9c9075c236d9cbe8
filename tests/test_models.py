import os
import pickle
import warnings

import pretrainedmodels
import pytest
import torch

from fgvc.backbones import default_weights, load_imagenet_weights
from fgvc.errors import CheckpointError
from fgvc.models import CoarseNet, FineNet
from fgvc.stages import build_model


def original_format_file(path, arch):
    """What the published file is: a plain state dict of a pretrainedmodels model, 1000-class head included."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        net = pretrainedmodels.__dict__[arch](num_classes=1000, pretrained=None)
    torch.save(net.state_dict(), path)
    return net


def test_default_weights_path():
    assert default_weights("senet154") == "res/senet154-c7b49a05.pth"


def test_senet154_file_loads_through_the_real_path(tmp_path):
    path = tmp_path / "senet154-c7b49a05.pth"
    net = original_format_file(path, "senet154")
    model = build_model("coarse", "senet154", 7, pretrained=str(path))
    assert torch.equal(model.backbone.layer4[0].conv1.weight, net.layer4[0].conv1.weight)
    assert model.frozen == ["layer0", "layer1"]
    assert not any(p.requires_grad for p in model.backbone.layer1.parameters())
    assert all(p.requires_grad for p in model.backbone.layer2.parameters())
    x = torch.randint(0, 255, (1, 3, 96, 96), dtype=torch.uint8)
    model.eval()
    with torch.no_grad():
        logits, cam = model.forward_cam(x)
    assert cam.shape == (1, 7, 3, 3) and torch.allclose(logits, cam.mean((2, 3)))


def test_wrong_architecture_file_fails_clearly(tmp_path):
    path = tmp_path / "resnet34.pth"
    original_format_file(path, "resnet34")
    with pytest.raises(CheckpointError, match="not the weights of resnet18|wrong shape for resnet18"):
        build_model("fine", "resnet18", 3, pretrained=str(path))


def test_file_without_head_is_not_an_imagenet_file(tmp_path):
    path = tmp_path / "r18.pth"
    sd = original_format_file(path, "resnet18").state_dict()
    torch.save({k: v for k, v in sd.items() if not k.startswith("last_linear")}, path)
    with pytest.raises(CheckpointError, match="no classifier head keys"):
        build_model("fine", "resnet18", 3, pretrained=str(path))


class Evil:
    def __reduce__(self):
        return (os.system, ("touch /tmp/fgvc-pwned",))


def test_pickle_with_code_is_refused_and_not_run(tmp_path):
    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        pickle.dump({"conv1.weight": Evil()}, f)
    if os.path.exists("/tmp/fgvc-pwned"):
        os.unlink("/tmp/fgvc-pwned")
    with pytest.raises(CheckpointError, match="not a plain weights file"):
        build_model("fine", "resnet18", 3, pretrained=str(path))
    assert not os.path.exists("/tmp/fgvc-pwned")


def test_missing_file_names_the_download_address(tmp_path):
    with pytest.raises(CheckpointError, match=r"http://data.lip6.fr/cadene/pretrainedmodels/senet154-c7b49a05.pth.*--pretrained none"):
        load_imagenet_weights(torch.nn.Module(), tmp_path / "nope.pth", "senet154")


def test_unknown_arch():
    with pytest.raises(CheckpointError, match="not a pretrainedmodels model"):
        build_model("fine", "resnet9000", 3)


def test_heads_and_frozen_batchnorm():
    coarse, fine = build_model("coarse", "resnet18", 5), build_model("fine", "resnet18", 5)
    assert isinstance(coarse, CoarseNet) and isinstance(fine, FineNet)
    assert isinstance(coarse.head, torch.nn.Conv2d) and coarse.head.kernel_size == (1, 1)
    assert isinstance(coarse.dropout, torch.nn.Dropout2d) and coarse.dropout.p == 0.25
    coarse.train()  # the original: the whole network in training mode, frozen layers included
    assert coarse.backbone.bn1.training and coarse.backbone.layer1.training and coarse.backbone.layer2.training
    kept = build_model("coarse", "resnet18", 5, frozen_bn="eval").train()
    assert not kept.backbone.bn1.training and not kept.backbone.layer1.training and kept.backbone.layer2.training
    x = torch.randint(0, 255, (2, 3, 64, 64), dtype=torch.uint8)
    assert fine(x).shape == (2, 5)
