"""The original's behaviour, item by item (README, "Differences from the original"): each test
pins one point where this repository does what the original's code does by default."""
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
from fgvc.config import CoarseConfig, Runtime
from fgvc.crop import MultiCropTransform, crop_box
from fgvc.datasets import ImageDataset
from fgvc.stages import build_model
from fgvc.transforms import ShortSideTransform, TrainTransform, resize, rotation_angle, train_warp

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
    std, n = math.sqrt(2 / fan_in), w.numel()
    assert w.std().item() == pytest.approx(std, rel=0.03)
    assert abs(w.mean().item()) < 4 * std / math.sqrt(n)  # 4 standard errors of the mean of n draws
    # normal, not uniform of the same spread: 68.3 % within one std (uniform: 57.7 %), 95.4 % within two (uniform: 100 %)
    within = [(w.abs() < k * std).float().mean().item() for k in (1, 2)]
    assert within[0] == pytest.approx(0.683, abs=0.01) and within[1] == pytest.approx(0.954, abs=0.01)


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
    args = cli.parser(CoarseConfig).parse_args(list(flags))
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


# ---------------------------------------------------------------- the two known gaps (docs/differences.md)
# Today's rules, pinned: a change to either moves pixels and must say so in docs/differences.md.

def test_coarse_resize_scales_each_axis_to_its_rounded_side():
    """The original resizes with `cv2.resize(fx=s, fy=s)`, s = 512 / min(H, W): one factor for both
    axes. Here each axis is scaled to its rounded side, round(W * s) / W on the long one."""
    w, h, short = 800, 600, 512
    m = train_warp(w, h, short, 448, np.random.default_rng(0), max_rotation=0)  # no rotation: m is scale @ crop
    assert abs(m[1, 1]) == pytest.approx(h / short)  # the short side: the original's factor
    assert abs(m[0, 0]) == pytest.approx(w / round(w * short / h))  # 800 / 683, not the original's 600 / 512
    assert abs(m[0, 0]) != pytest.approx(h / short, abs=1e-6)
    # the gap at the far edge of the long side: at most half a pixel of the resized image
    assert abs(w * (round(w * short / h) / w) - w * (short / h)) <= 0.5


def original_box(mask, k=2.0):
    """The original's crop box, from its description (fine/dataset.py): side int(sqrt(k x area)), edges
    int(centre -+ side / 2) around the mask pixel's own coordinates, clipped. Centre as crop_box with
    rng=None (the middle of the middle third), for comparison."""
    ys, xs = np.nonzero(mask)
    n = len(ys)
    i = (n // 3 + max(n // 3 + 1, (n // 3) * 2)) // 2
    side = int(math.sqrt(k * n))
    h, w = mask.shape
    return (max(int(xs[i] - side / 2), 0), max(int(ys[i] - side / 2), 0), min(int(xs[i] + side / 2), w), min(int(ys[i] + side / 2), h))


def test_crop_box_edges_are_rounded_from_pixel_centres():
    """Here a box's edges are rounded around the centre of the mask pixel (its column + 0.5) with the
    unrounded side; the original truncates with int() around the pixel's index with an int side: the
    boxes differ by at most 1 px per side (full-resolution masks; the test-time crops use the same rule)."""
    mask = np.zeros((100, 100), np.uint8)
    mask[40:50, 40:50] = 1  # 100 pixels: side sqrt(200) = 14.14; the middle of the middle third is pixel 49: row 44, col 49
    assert crop_box(mask, 100, 100, 2.0) == (42, 37, 57, 52)  # centre (49.5, 44.5): round(49.5 -+ 7.07), round(44.5 -+ 7.07)
    assert original_box(mask) == (42, 37, 56, 51)  # int(49 -+ 7), int(44 -+ 7)
    rng = np.random.default_rng(0)
    for _ in range(200):
        m = np.zeros((60, 80), np.uint8)
        y, x, bh, bw = rng.integers(0, 50), rng.integers(0, 70), rng.integers(4, 30), rng.integers(4, 30)
        m[y : y + bh, x : x + bw] = 1
        for k in (0.5, 1, 2, 4):
            ours, theirs = crop_box(m, 80, 60, k, min_side=1), original_box(m, k)
            assert max(abs(a - b) for a, b in zip(ours, theirs)) <= 1, (ours, theirs)
