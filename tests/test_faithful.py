"""The original's behaviour, item by item (README, "Differences from the original"): each test
pins one point where this repository does what the original's code does by default."""
import argparse
import math

import cv2
import numpy as np
import pytest
import torch
from torch import nn

from fgvc import cli
from fgvc.annotations import Split
from fgvc.backbones import Normalize, imagenet_settings
from fgvc.cam import localize
from fgvc.config import Runtime
from fgvc.crop import MultiCropTransform, crop_box
from fgvc.datasets import ImageDataset
from fgvc.stages import build_model
from fgvc.transforms import ShortSideTransform, TrainTransform, resize, rotation_angle

FILL = (124, 116, 104)


# ---------------------------------------------------------------- the heads

@pytest.mark.parametrize("kind", ["coarse", "fine"])
def test_both_heads_have_dropout2d_active_in_training_only(kind):
    model = build_model(kind, "resnet18", 4, dropout=0.25)
    drops = [m for m in model.modules() if isinstance(m, nn.Dropout2d)]
    assert len(drops) == 1 and drops[0].p == 0.25
    x = torch.randint(0, 255, (2, 3, 64, 64), dtype=torch.uint8)
    model.train()
    torch.manual_seed(0)
    feats = model.features(x)
    channels_zeroed = (feats.abs().sum(dim=(2, 3)) == 0).float().mean()
    assert 0.15 < channels_zeroed < 0.35  # whole channels dropped, about a quarter
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), model(x))
        assert (model.features(x).abs().sum(dim=(2, 3)) == 0).float().mean() < 0.05


@pytest.mark.parametrize("kind", ["coarse", "fine"])
def test_heads_start_kaiming_normal_with_zero_bias(kind):
    torch.manual_seed(0)
    model = build_model(kind, "resnet18", 300)  # 300 x 512 weights: the std is well measured
    w, b = model.head.weight, model.head.bias
    fan_in = w[0].numel()
    assert torch.equal(b, torch.zeros_like(b))
    assert w.std().item() == pytest.approx(math.sqrt(2 / fan_in), rel=0.03)
    assert abs(w.mean().item()) < 0.05 * math.sqrt(2 / fan_in) * 10


def test_frozen_layers_batch_norm_updates_as_the_original():
    model = build_model("coarse", "resnet18", 3, freeze=True)  # frozen_bn='train' by default
    before = model.backbone.bn1.running_mean.clone()
    assert not any(p.requires_grad for p in model.backbone.layer1.parameters())
    model.train()
    model(torch.randint(0, 255, (2, 3, 64, 64), dtype=torch.uint8))
    assert not torch.equal(before, model.backbone.bn1.running_mean)
    kept = build_model("coarse", "resnet18", 3, freeze=True, frozen_bn="eval").train()
    before = kept.backbone.bn1.running_mean.clone()
    kept(torch.randint(0, 255, (2, 3, 64, 64), dtype=torch.uint8))
    assert torch.equal(before, kept.backbone.bn1.running_mean)


# ---------------------------------------------------------------- the rotation

def test_rotation_angles_are_the_originals_integers():
    rng = np.random.default_rng(0)
    angles = [rotation_angle(rng, 15) for _ in range(3000)]
    assert all(a == int(a) for a in angles)
    assert min(angles) == -15 and max(angles) == 14  # numpy's randint(-15, 15)
    assert len(set(angles)) == 30
    smooth = [rotation_angle(rng, 15, "smooth") for _ in range(100)]
    assert any(a != int(a) for a in smooth)


def test_rotation_border_is_the_mean_colour():
    img = np.full((200, 200, 3), 255, np.uint8)
    t = TrainTransform(size=200, short=200, fill=FILL, keep=1.0)  # no crop slack: the corners show the border
    seen = 0
    for seed in range(20):
        rng = np.random.default_rng(seed)
        angle = rotation_angle(rng, 15)
        out = t(img, np.random.default_rng(seed)).numpy()
        if abs(angle) >= 5:
            for y, x in ((0, 0), (0, -1), (-1, 0), (-1, -1)):
                assert tuple(out[:, y, x]) == FILL
            seen += 1
    assert seen > 5
    reflect = TrainTransform(size=200, short=200, fill=FILL, keep=1.0, rotation="smooth")
    assert (reflect(img, np.random.default_rng(1)).numpy() == 255).all()  # reflected white stays white


# ---------------------------------------------------------------- the crop rule

def diagonal_band(n=64, width=3):
    mask = np.zeros((n, n), np.uint8)
    for i in range(n):
        mask[i, max(0, i - width) : i + width + 1] = 1
    return mask


def centres(mask, rule, draws=300, k=0.05):
    """Crop centres (in mask cells) of `draws` random crops, k small so the box is just the centre."""
    rng = np.random.default_rng(0)
    h, w = mask.shape
    out = []
    for _ in range(draws):
        x0, y0, x1, y1 = crop_box(mask, w * 10, h * 10, k, rng, centre=rule, min_side=1)
        out.append((int((y0 + y1) / 20), int((x0 + x1) / 20)))
    return out


def test_original_centre_draws_row_and_column_independently():
    mask = diagonal_band()
    got = centres(mask, "original")
    off = np.mean([mask[r, c] == 0 for r, c in got])
    assert off > 0.5  # on a diagonal band, independent draws rarely land on it
    ys, xs = np.nonzero(mask)
    n = len(ys)
    rows = {int(ys[i]) for i in range(n // 3, (n // 3) * 2)}
    cols = {int(xs[i]) for i in range(n // 3, (n // 3) * 2)}
    assert all(r in rows for r, _ in got) and all(c in cols for _, c in got)


def test_on_mask_centre_never_leaves_the_mask():
    mask = diagonal_band()
    assert all(mask[r, c] == 1 for r, c in centres(mask, "on-mask"))


def test_test_time_crops_follow_the_rule_and_mirror_the_mask():
    img = np.random.default_rng(0).integers(0, 255, (100, 100, 3), dtype=np.uint8)
    mask = diagonal_band(32)
    for rule in ("original", "on-mask"):
        a = MultiCropTransform(16, centre=rule)(img, mask, np.random.default_rng(3))
        b = MultiCropTransform(16, centre=rule)(img, mask, np.random.default_rng(3))
        assert a.shape == (16, 3, 16, 16) and torch.equal(a, b)
    # a mirror crop is the crop of the mirrored image with the mirrored mask
    one = MultiCropTransform(20, factors=(), mirror_factors=(1,))(img, mask, np.random.default_rng(5))[0]
    x0, y0, x1, y1 = crop_box(mask[:, ::-1], 100, 100, 1, np.random.default_rng(5))
    want = resize(np.ascontiguousarray(img[:, ::-1])[y0:y1, x0:x1], 20, 20)
    assert torch.equal(one, torch.from_numpy(np.ascontiguousarray(want.transpose(2, 0, 1))))


# ---------------------------------------------------------------- resizing

def test_resize_of_a_thin_crop_keeps_detail_along_the_enlarged_axis():
    ramp = np.linspace(0, 255, 25).round().astype(np.uint8)  # 25 columns, each row a ramp
    crop = np.repeat(np.repeat(ramp[None, :, None], 900, 0), 3, 2)  # 900 x 25: fewer pixels in all, one axis enlarged
    out = resize(crop, 448, 448)
    distinct = np.mean([len(np.unique(out[y, :, 0])) for y in range(0, 448, 16)])
    assert distinct > 200  # INTER_AREA (area shrinks overall) would keep about 48: nearest-neighbour along the row
    assert resize(crop, 10, 300).shape == (300, 10, 3)  # both axes shrink: area, still fine


# ---------------------------------------------------------------- localization on aspect-kept images

class RedCam(nn.Module):
    """A stand-in coarse model whose CAM of class 0 is the image's redness, pooled by 8."""

    def __init__(self):
        super().__init__()
        self.normalize = Normalize(imagenet_settings("resnet18"))

    def forward_cam(self, x):
        red = (x[:, 0].float() - x[:, 1:].float().mean(1)).clamp_min(0)[:, None]
        cam = torch.cat([nn.functional.avg_pool2d(red, 8), torch.zeros_like(nn.functional.avg_pool2d(red, 8))], 1)
        return cam.mean(dim=(2, 3)), cam


def test_aspect_kept_localization_maps_back_to_the_right_region(tmp_path):
    # a wide and a tall image in one batch: neither mask may be shifted or squashed
    specs = {"wide.jpg": ((96, 288), (10, 40, 200, 270)), "tall.jpg": ((288, 96), (230, 280, 5, 40))}
    for name, ((h, w), (y0, y1, x0, x1)) in specs.items():
        img = np.full((h, w, 3), 90, np.uint8)
        img[y0:y1, x0:x1] = (250, 20, 20)
        cv2.imwrite(str(tmp_path / name), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    names = list(specs)
    split = Split("val", tmp_path / "val2019.json", tmp_path, np.array([1, 2]), names, np.array([0, 0]),
                  np.array([[specs[n][0][1], specs[n][0][0]] for n in names]))
    cam = dict(mask_size=(64, 64), threshold=0.5, use_labels=True)
    masks, _ = localize(RedCam(), ImageDataset(split, ShortSideTransform(64)), Runtime(torch.device("cpu"), 2), **cam)
    alone, _ = localize(RedCam(), ImageDataset(split, ShortSideTransform(64)), Runtime(torch.device("cpu"), 1), **cam)
    assert np.array_equal(masks, alone)  # an image's mask does not depend on what shares its batch
    for m, name in zip(masks, names):
        (h, w), (y0, y1, x0, x1) = specs[name]
        truth = np.zeros((64, 64), bool)
        truth[round(64 * y0 / h) : round(64 * y1 / h), round(64 * x0 / w) : round(64 * x1 / w)] = True
        inter, union = (truth & (m > 0)).sum(), (truth | (m > 0)).sum()
        assert inter / union > 0.6, (name, inter / union)


# ---------------------------------------------------------------- from scratch

def recipe(*flags):
    p = argparse.ArgumentParser()
    cli.add_model_args(p)
    cli.add_train_args(p)
    args = p.parse_args(list(flags))
    pretrained = None if args.pretrained == "none" else "res/x.pth"
    return cli.resolve_recipe(args, pretrained)


def test_from_scratch_defaults_freeze_nothing_and_train_the_backbone_at_the_heads_rate():
    scratch = recipe("--pretrained", "none")
    assert scratch.freeze is False and scratch.backbone_lr_ratio == 1.0
    pretrained = recipe()
    assert pretrained.freeze is True and pretrained.backbone_lr_ratio == 0.1
    explicit = recipe("--pretrained", "none", "--freeze", "--backbone-lr-ratio", "0.1")
    assert explicit.freeze is True and explicit.backbone_lr_ratio == 0.1
    assert recipe("--no-freeze").freeze is False
