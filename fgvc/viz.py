"""Figures from data: the coarse stage's sample figure (image / mask / overlay for a few val images,
from the real masks; written to --figure, default <out>/sample.png; only `make demo` updates the
README's fig/sample.png), and predict.py's --overlay picture of one prediction."""
import cv2
import numpy as np

from .atomic import atomic_write
from .image import BadImage, read_rgb
from .transforms import resize


def overlay(img, mask, color=(255, 64, 0), alpha=0.45):
    """The image with the mask (resized to it) tinted in `color` and its outline drawn."""
    m = cv2.resize(mask.astype(np.uint8), (img.shape[1], img.shape[0]), interpolation=cv2.INTER_NEAREST)
    out = img.copy()
    out[m > 0] = (out[m > 0] * (1 - alpha) + np.asarray(color) * alpha).astype(np.uint8)
    contours, _ = cv2.findContours(m, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    cv2.drawContours(out, contours, -1, color, 2)
    return out, m


def sample_rows(n_rows, n=4):
    """The rows of a split the figure shows."""
    return [int(r) for r in np.linspace(0, n_rows - 1, min(n, n_rows)).round().astype(int)]


def save_sample_figure(path, split, masks, n=4, cell=256, write=atomic_write):
    """A grid with one row per image: image | mask | overlay, each cell x cell. `masks[r]` is the
    mask of row r (an array, or a dict of the `sample_rows`); `write(path, fn)` writes the file."""
    rows = []
    for r in sample_rows(len(split), n):
        try:
            img = read_rgb(split.path(r))
        except BadImage:
            continue
        ov, m = overlay(img, masks[r])
        cells = [img, np.repeat(m[:, :, None] * 255, 3, axis=2), ov]
        rows.append(np.hstack([resize(c, cell, cell) for c in cells]))
    if not rows:
        return
    grid = np.vstack(rows)
    for j, title in enumerate(("image", "mask", "overlay")):
        cv2.putText(grid, title, (j * cell + 8, 22), cv2.FONT_HERSHEY_SIMPLEX, 0.7, (255, 255, 255), 2, cv2.LINE_AA)
    ok, png = cv2.imencode(".png", cv2.cvtColor(grid, cv2.COLOR_RGB2BGR))
    write(path, lambda f: f.write(png.tobytes()))


OVERLAY_WIDTH, CAPTION_LINE = 480, 24  # predict.py --overlay: picture width; one caption line's height


def prediction_overlay(img, cam, box, crop, top, width=OVERLAY_WIDTH):
    """One prediction as a person checks it: the photo (resized to `width`, aspect kept) with the
    CAM (h, w floats in [0, 1], None: none) as a heat map, the mask's box (x, y, w, h; green), the
    largest test-time crop (x0, y0, x1, y1; yellow), and below it one line per (name, probability)
    of `top`. Returns RGB uint8, width x (scaled height + CAPTION_LINE per line + 8)."""
    h, w = img.shape[:2]
    s = width / w
    height = max(1, round(h * s))
    out = resize(img, width, height)
    if cam is not None:
        heat = cv2.applyColorMap((np.clip(cv2.resize(cam, (width, height), interpolation=cv2.INTER_LINEAR), 0, 1) * 255).astype(np.uint8),
                                 cv2.COLORMAP_JET)
        out = cv2.addWeighted(out, 0.6, cv2.cvtColor(heat, cv2.COLOR_BGR2RGB), 0.4, 0)
    if crop is not None:
        x0, y0, x1, y1 = crop
        cv2.rectangle(out, (round(x0 * s), round(y0 * s)), (round(x1 * s) - 1, round(y1 * s) - 1), (255, 220, 0), 2)
    if box is not None:
        x, y, bw, bh = box
        cv2.rectangle(out, (round(x * s), round(y * s)), (round((x + bw) * s) - 1, round((y + bh) * s) - 1), (0, 255, 0), 2)
    caption = np.full((CAPTION_LINE * len(top) + 8, width, 3), 255, np.uint8)
    for i, (name, p) in enumerate(top):
        cv2.putText(caption, f"{i + 1}. {name}  {p:.3f}", (8, CAPTION_LINE * (i + 1) - 4), cv2.FONT_HERSHEY_SIMPLEX, 0.6,
                    (0, 0, 0), 1, cv2.LINE_AA)
    return np.vstack([out, caption])
