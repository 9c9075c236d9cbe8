"""The coarse stage's sample figure: image / mask / overlay for a few val images, from the real
masks. Written to --figure (default <out>/sample.png); only `make demo` updates the README's
fig/sample.png."""
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
