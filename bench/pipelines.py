"""The three training input pipelines that `make bench` races, one image at a time, one process.

- this repo: `fgvc.image.read_rgb` + `fgvc.transforms.TrainTransform(448, 512)`: uint8 throughout,
  resize + rotation + crop + flip in one warp; normalisation is left to the model, on the device.
- the original (re-implemented faithfully): decode, float32, normalise with the dataset's mean/std
  at full resolution, THEN short side to 512, rotation by an integer angle `randint(-15, 15)` about
  (w // 2, h // 2) with OpenCV's default border (constant 0: the normalised mean), random 448 crop,
  flip, 7x7 grid mask (cells set to 0, the normalised mean), to a float32 tensor. Same decoder
  (OpenCV: `read_rgb(decoder="opencv")`, as the original's cv2.imread) and OpenCV's float kernels.
- torchvision's usual ImageNet pipeline: PIL open + RandomResizedCrop(448) + RandomHorizontalFlip
  + ToTensor + Normalize, the same output size.
"""
import cv2
import numpy as np
import torch
from PIL import Image
from torchvision import transforms as T

from fgvc.image import read_rgb
from fgvc.backbones import mean_pixel
from fgvc.transforms import TrainTransform

SIZE, SHORT = 448, 512
DATASET_MEAN = np.array([115.75, 120.83, 93.49], np.float32)  # the original's, on 0-255 RGB
DATASET_STD = np.array([50.46, 50.08, 49.67], np.float32)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def decode_only(path, seed):
    return read_rgb(path)


def this_repo():
    t = TrainTransform(SIZE, SHORT, mean_pixel("senet154"))

    def run(path, seed):
        return t(read_rgb(path), np.random.default_rng(seed))  # the generator, as ImageDataset makes it

    return run


def original(path, seed, size=SIZE, short=SHORT, max_rotation=15, grid=7, keep=0.9):
    """The original's order of operations, all in float32 (see the module docstring)."""
    rng = np.random.default_rng(seed)
    img = (read_rgb(path, decoder="opencv").astype(np.float32) - DATASET_MEAN) / DATASET_STD  # full resolution
    h, w = img.shape[:2]
    s = short / min(h, w)
    img = cv2.resize(img, (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_LINEAR)
    h, w = img.shape[:2]
    m = cv2.getRotationMatrix2D((w // 2, h // 2), int(rng.integers(-max_rotation, max_rotation)), 1.0)
    img = cv2.warpAffine(img, m, (w, h))  # the original's call: bilinear, constant border 0
    x, y = int(rng.integers(0, w - size + 1)), int(rng.integers(0, h - size + 1))
    img = img[y : y + size, x : x + size]
    if rng.random() < 0.5:
        img = img[:, ::-1]
    img = np.ascontiguousarray(img)
    edges = np.linspace(0, size, grid + 1).round().astype(int)
    for i, j in zip(*np.nonzero(rng.random((grid, grid)) >= keep)):
        img[edges[i] : edges[i + 1], edges[j] : edges[j + 1]] = 0.0
    return torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)))


def torchvision_pipeline():
    t = T.Compose([T.RandomResizedCrop(SIZE), T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])

    def run(path, seed):  # torch's global generator, as in a torchvision data loader
        with Image.open(path) as im:
            return t(im.convert("RGB"))

    return run


PIPELINES = {  # name -> factory of fn(path, seed) -> tensor
    "decode only (read_rgb)": lambda: decode_only,
    "this repo (uint8, one warp)": this_repo,
    "original (float32 first)": lambda: original,
    "torchvision (PIL, RRC)": torchvision_pipeline,
}
