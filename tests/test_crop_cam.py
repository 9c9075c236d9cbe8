import numpy as np
import pytest
import torch

from fgvc.boxes import box_iou, localization_accuracy, mask_to_box
from fgvc.cam import cams_to_masks
from fgvc.crop import MultiCropTransform, crop_box


def mask_of(cam, threshold):
    """The binary uint8 mask of one (h, w) CAM, by the rule localization applies to a batch."""
    return cams_to_masks(torch.as_tensor(np.asarray(cam, dtype=np.float32))[None], threshold)[1][0].numpy()


def blob(h, w, cy, cx, r, value=1.0):
    y, x = np.mgrid[:h, :w]
    return value * np.exp(-((y - cy) ** 2 + (x - cx) ** 2) / (2 * r**2))


def test_one_blob_gives_its_box():
    mask = mask_of(blob(64, 64, 20, 40, 4), 0.5)
    x, y, w, h = mask_to_box(mask)
    assert abs((x + w / 2) - 40.5) <= 1 and abs((y + h / 2) - 20.5) <= 1 and 6 <= w <= 14


def test_two_blobs_keep_the_largest_component():
    cam = blob(64, 64, 15, 15, 3) + blob(64, 64, 45, 45, 6)
    mask = mask_of(cam, 0.4)
    assert mask[15, 15] and mask[45, 45]  # both in the mask
    x, y, w, h = mask_to_box(mask)
    assert x > 30 and y > 30  # the box is the bigger blob's


def test_flat_or_empty_map_gives_empty_mask():
    assert mask_of(np.zeros((32, 32)), 0.2).sum() == 0
    assert mask_of(np.full((32, 32), 3.0), 0.2).sum() == 0
    assert mask_to_box(np.zeros((32, 32), np.uint8)) is None


def test_blob_at_border_and_negative_cam():
    cam = blob(48, 48, 0, 47, 5) - 10  # CAM values are logits: negative is fine
    mask = mask_of(cam, 0.5)
    x, y, w, h = mask_to_box(mask)
    assert y == 0 and x + w == 48


def test_threshold_monotone():
    cam = blob(64, 64, 32, 32, 8)
    areas = [mask_of(cam, t).sum() for t in (0.2, 0.5, 0.8)]
    assert areas[0] > areas[1] > areas[2] > 0


def test_iou():
    assert box_iou((0, 0, 10, 10), (0, 0, 10, 10)) == 1
    assert box_iou((0, 0, 10, 10), (5, 0, 10, 10)) == pytest.approx(50 / 150)
    assert box_iou(None, (0, 0, 1, 1)) == 0


def test_localization_accuracy_beats_centred_box_on_corner_objects():
    cams, sizes, truth = [], [], []
    for cy, cx in [(10, 10), (50, 50), (10, 50), (50, 10)]:
        cams.append((blob(64, 64, cy, cx, 5)).astype(np.float32))
        sizes.append((128, 128))
        truth.append((2 * cx - 14, 2 * cy - 14, 28, 28))
    acc, centred = localization_accuracy(np.stack(cams), sizes, truth, thresholds=(0.3, 0.5))
    assert acc[0.3] == 1.0 and centred[0.3] == 0.0


# the crop rule
def test_tiny_masks_are_counted_in_image_pixels():
    assert crop_box(np.zeros((64, 64), np.uint8), 640, 480) == (0, 0, 640, 480)
    one = np.zeros((64, 64), np.uint8)
    one[10, 10] = 1
    # one mask cell of a 64 x 64 mask over a 128 x 64 image is 2 image pixels: under 10, the whole image
    assert crop_box(one, 128, 64) == (0, 0, 128, 64)
    # over a 640 x 480 image it is 75 image pixels (side sqrt(150) > 10): the original crops
    x0, y0, x1, y1 = crop_box(one, 640, 480)
    assert (x1 - x0, y1 - y0) != (640, 480) and abs((x1 - x0) - np.sqrt(2 * 75)) <= 1


def test_side_is_sqrt_k_area_in_image_pixels():
    mask = np.zeros((64, 64), np.uint8)
    mask[24:40, 24:40] = 1  # 256 mask px = 1/16 of a 640x640 image -> 25600 image px
    for k in (1, 2, 4):
        x0, y0, x1, y1 = crop_box(mask, 640, 640, k)
        assert abs((x1 - x0) - np.sqrt(k * 25600)) <= 2 and abs((y1 - y0) - np.sqrt(k * 25600)) <= 2


def test_centre_comes_from_the_middle_third_of_the_mask():
    mask = np.zeros((90, 90), np.uint8)
    mask[0:90, 40:50] = 1  # a vertical bar: row-major middle third = rows 30..59
    rng = np.random.default_rng(0)
    for _ in range(50):
        x0, y0, x1, y1 = crop_box(mask, 90, 90, 0.5, rng)
        assert 30 <= (y0 + y1) / 2 <= 60


def test_mask_at_the_border_is_clipped_to_the_image():
    mask = np.zeros((64, 64), np.uint8)
    mask[0:8, 56:64] = 1
    x0, y0, x1, y1 = crop_box(mask, 320, 320, 4)
    assert x0 >= 0 and y0 == 0 and x1 == 320 and y1 <= 320 and x1 - x0 < 320


def test_multicrop_has_all_crops_and_mirrors():
    img = np.zeros((100, 100, 3), np.uint8)
    img[:, :50, 0] = 255
    mask = np.ones((32, 32), np.uint8)
    t = MultiCropTransform(32, factors=(4,), mirror_factors=(4,))
    out = t(img, mask, np.random.default_rng(0))
    assert out.shape == (2, 3, 32, 32)
    assert out[0, 0, :, 0].float().mean() > 200 and out[1, 0, :, -1].float().mean() > 200  # mirrored
