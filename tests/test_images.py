import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from fgvc.image import BadImage, read_rgb
from fgvc.transforms import EvalTransform, TrainTransform, grid_mask, resize_short

RGB = np.zeros((40, 60, 3), np.uint8)
RGB[:, :, 0] = 200  # red in RGB


def test_jpeg_is_rgb(tmp_path):
    cv2.imwrite(str(tmp_path / "a.jpg"), cv2.cvtColor(RGB, cv2.COLOR_RGB2BGR))
    img = read_rgb(tmp_path / "a.jpg")
    assert img.shape == (40, 60, 3) and img.dtype == np.uint8
    assert img[..., 0].mean() > 180 and img[..., 2].mean() < 20


@pytest.mark.parametrize("kind", ["gray", "png_as_jpg", "rgba_png", "gray16_png", "cmyk_jpg"])
def test_odd_formats_load_as_rgb(tmp_path, kind):
    path = tmp_path / "x.jpg"
    if kind == "gray":
        cv2.imwrite(str(path), np.full((30, 20), 128, np.uint8))
    elif kind == "png_as_jpg":
        path.write_bytes(cv2.imencode(".png", cv2.cvtColor(RGB, cv2.COLOR_RGB2BGR))[1].tobytes())
    elif kind == "rgba_png":
        path = tmp_path / "x.png"
        cv2.imwrite(str(path), np.dstack([cv2.cvtColor(RGB, cv2.COLOR_RGB2BGR), np.full((40, 60), 7, np.uint8)]))
    elif kind == "gray16_png":
        path = tmp_path / "x.png"
        cv2.imwrite(str(path), np.full((30, 20), 40000, np.uint16))
    elif kind == "cmyk_jpg":
        Image.fromarray(RGB).convert("CMYK").save(path, "JPEG")
    img = read_rgb(path)
    assert img.ndim == 3 and img.shape[2] == 3 and img.dtype == np.uint8
    if kind in ("png_as_jpg", "rgba_png", "cmyk_jpg"):
        assert img[..., 0].mean() > 150 and img[..., 2].mean() < 60, img.reshape(-1, 3).mean(0)
    if kind == "gray16_png":
        assert abs(int(img[0, 0, 0]) - 40000 // 256) <= 1


@pytest.mark.parametrize("kind,reason", [("empty", "empty file"), ("text", "not a decodable image"), ("truncated", "truncated JPEG")])
def test_bad_files_raise_with_reason(tmp_path, kind, reason):
    path = tmp_path / "bad.jpg"
    good = cv2.imencode(".jpg", np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8))[1].tobytes()
    path.write_bytes({"empty": b"", "text": b"hello, not an image", "truncated": good[: len(good) // 2]}[kind])
    with pytest.raises(BadImage, match=reason):
        read_rgb(path)


def test_missing_file_is_a_bad_image(tmp_path):
    with pytest.raises(BadImage, match="unreadable"):
        read_rgb(tmp_path / "nope.jpg")


def test_train_transform_shape_dtype_and_determinism():
    img = np.random.default_rng(1).integers(0, 255, (300, 500, 3), dtype=np.uint8)
    t = TrainTransform(size=96, short=110)
    a = t(img, np.random.default_rng(7))
    b = t(img, np.random.default_rng(7))
    c = t(img, np.random.default_rng(8))
    assert a.shape == (3, 96, 96) and a.dtype == torch.uint8
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_small_image_is_enlarged_to_the_crop():
    t = TrainTransform(size=64, short=72)
    assert t(np.zeros((10, 30, 3), np.uint8), np.random.default_rng(0)).shape == (3, 64, 64)


def test_eval_transform_keeps_whole_image():
    img = np.zeros((100, 300, 3), np.uint8)
    img[:, -10:] = 255  # a stripe at the right border must survive
    out = EvalTransform(60)(img)
    assert out.shape == (3, 60, 60) and out[0, :, -1].float().mean() > 200


def test_grid_mask_drops_about_a_tenth_of_cells_with_fill():
    rng = np.random.default_rng(0)
    dropped = []
    for _ in range(200):
        img = np.full((70, 70, 3), 255, np.uint8)
        grid_mask(img, rng, grid=7, keep=0.9, fill=(1, 2, 3))
        cells = img[::10, ::10, 0]
        assert set(np.unique(cells)) <= {1, 255}
        dropped.append((cells == 1).mean())
    assert 0.08 < np.mean(dropped) < 0.12
    assert (img[img[..., 0] == 1] == (1, 2, 3)).all()


def test_resize_short():
    assert resize_short(np.zeros((100, 200, 3), np.uint8), 50).shape == (50, 100, 3)
