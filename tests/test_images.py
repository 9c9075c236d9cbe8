import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from fgvc.image import BadImage, read_rgb
from fgvc.transforms import EvalTransform, TrainTransform, grid_cells, resize_short, warp

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
    t = TrainTransform(size=96, short=110, fill=FILL)
    a = t(img, np.random.default_rng(7))
    b = t(img, np.random.default_rng(7))
    c = t(img, np.random.default_rng(8))
    assert a.shape == (3, 96, 96) and a.dtype == torch.uint8
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_small_image_is_enlarged_to_the_crop():
    t = TrainTransform(size=64, short=72, fill=FILL)
    assert t(np.zeros((10, 30, 3), np.uint8), np.random.default_rng(0)).shape == (3, 64, 64)


def test_eval_transform_keeps_whole_image():
    img = np.zeros((100, 300, 3), np.uint8)
    img[:, -10:] = 255  # a stripe at the right border must survive
    out = EvalTransform(60)(img)
    assert out.shape == (3, 60, 60) and out[0, :, -1].float().mean() > 200


def grid_mask(img, rng, grid=7, keep=0.9, fill=0):
    """The grid mask on an (H, W, C) image, in place: each cell of a grid x grid partition blanked
    with p = 1 - keep (TrainTransform does the same on its planar copy)."""
    for y0, y1, x0, x1 in grid_cells(*img.shape[:2], rng, grid, keep):
        img[y0:y1, x0:x1] = fill
    return img


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


# ---------------------------------------------------------------- the one-warp training transform

def smooth_image(h, w, seed=0):
    """A photo-like test image: smooth colour fields (bilinear and area resizing then agree)."""
    rng = np.random.default_rng(seed)
    return cv2.resize(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8), (w, h), interpolation=cv2.INTER_CUBIC)


FILL = (124, 116, 104)


def step_by_step(img, rng, size, short, max_rotation=15, grid=7, keep=0.9, fill=FILL):
    """The augmentation as separate steps, drawing from rng in the same order: what the warp means.
    The rotation is the original's: an integer angle, about (w // 2, h // 2), the border filled."""
    img = resize_short(img, short)
    h, w = img.shape[:2]
    if max_rotation:
        m = cv2.getRotationMatrix2D((w // 2, h // 2), int(rng.integers(-max_rotation, max_rotation)), 1.0)
        img = cv2.warpAffine(img, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=fill)
    if h < size or w < size:
        img = resize_short(img, size)
        h, w = img.shape[:2]
    y, x = int(rng.integers(0, h - size + 1)), int(rng.integers(0, w - size + 1))
    img = img[y : y + size, x : x + size]
    if rng.random() < 0.5:
        img = img[:, ::-1]
    img = np.ascontiguousarray(img)
    if keep < 1:
        grid_mask(img, rng, grid, keep, np.asarray(fill, np.uint8))
    return torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)))


@pytest.mark.parametrize("shape,size,short", [
    ((600, 800), 96, 112),   # strong shrink: INTER_AREA first, then the warp
    ((300, 400), 224, 256),  # mild shrink: all in the warp
    ((120, 90), 64, 72),     # portrait, mild shrink
    ((50, 70), 64, 72),      # enlarged
    ((100, 300), 96, 80),    # short side below the crop: enlarged again to fit
])
def test_train_transform_matches_the_step_by_step_augmentation(shape, size, short):
    img = smooth_image(*shape)
    t = TrainTransform(size, short, FILL)
    for seed in range(6):
        a = t(img, np.random.default_rng(seed))
        b = step_by_step(img, np.random.default_rng(seed), size, short)
        assert a.shape == b.shape == (3, size, size) and a.dtype == torch.uint8 and a.is_contiguous()
        diff = (a.float() - b.float()).abs()
        assert diff.mean() < 1.5 and np.quantile(diff.numpy(), 0.99) < 12, (seed, diff.mean(), diff.max())


def test_without_resize_or_rotation_it_is_an_exact_crop_and_flip():
    img = np.random.default_rng(3).integers(0, 256, (80, 120, 3), dtype=np.uint8)
    t = TrainTransform(size=64, short=80, fill=FILL, max_rotation=0, keep=1.0)
    flips = 0
    for seed in range(10):
        rng = np.random.default_rng(seed)
        y, x, flip = int(rng.integers(0, 80 - 64 + 1)), int(rng.integers(0, 120 - 64 + 1)), rng.random() < 0.5
        want = img[y : y + 64, x : x + 64][:, ::-1] if flip else img[y : y + 64, x : x + 64]
        assert torch.equal(t(img, np.random.default_rng(seed)), torch.from_numpy(np.ascontiguousarray(want.transpose(2, 0, 1))))
        flips += flip
    assert 0 < flips < 10


def test_grid_mask_cells_carry_the_fill_in_the_train_transform():
    img = np.full((200, 200, 3), 255, np.uint8)
    t = TrainTransform(size=140, short=200, max_rotation=0, keep=0.5, fill=(1, 2, 3))
    out = t(img, np.random.default_rng(0)).numpy()
    cells = out[:, 10::20, 10::20]  # one pixel in each 20 x 20 cell of the 7 x 7 grid
    dropped = (cells == np.array([1, 2, 3])[:, None, None]).all(0)
    assert ((cells == 255).all(0) | dropped).all() and 0 < dropped.sum() < 49


def test_warp_reads_only_the_rectangle_it_needs():
    img = np.random.default_rng(0).integers(0, 256, (90, 130, 3), dtype=np.uint8)
    rng = np.random.default_rng(1)
    for _ in range(50):  # maps that stay inside, cross one border, or reach far beyond
        a, s = rng.uniform(-0.5, 0.5), rng.uniform(0.5, 2.5)
        m = np.array([[s * np.cos(a), -s * np.sin(a), rng.uniform(-60, 120)],
                      [s * np.sin(a), s * np.cos(a), rng.uniform(-60, 80)], [0, 0, 1]])
        full = cv2.warpAffine(img, m[:2], (48, 48), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                              borderMode=cv2.BORDER_REFLECT_101)
        diff = np.abs(warp(img, m, 48)[:, :, :3].astype(int) - full)
        assert diff.max() <= 1 and (diff > 0).mean() < 0.01  # the map's offset moves: fixed-point rounding

