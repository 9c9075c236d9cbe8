"""Decode-only contenders that `make bench` races beside the pipelines, on the same files, in the
same run: OpenCV's decode (the reference: what `read_rgb` did before simplejpeg, and what the
original's cv2.imread does) and simplejpeg's (libjpeg-turbo called directly) into RGB and RGBX,
with and without the fast DCT + fast upsampling. Each reads the file as read_rgb does.

Plus the training pipeline fed straight from an RGBX decode (`fgvc.transforms.warp` then skips
its RGB -> RGBA conversion): the layout the whole pipeline prefers decides what read_rgb returns.
"""
import numpy as np
import simplejpeg
import torch

from bench.pipelines import SHORT, SIZE, mean_pixel  # the transform exactly as pipelines.this_repo builds it
from fgvc.image import read_rgb
from fgvc.transforms import TrainTransform

OPENCV = "decode opencv (cv2.imdecode)"


def opencv(path, seed):
    return read_rgb(path, decoder="opencv")


def simplejpeg_decoder(colorspace, fast):
    def run(path, seed):
        return simplejpeg.decode_jpeg(np.fromfile(path, np.uint8), colorspace=colorspace, fastdct=fast, fastupsample=fast)

    return run


DECODERS = {  # name -> fn(path, seed) -> (H, W, 3 or 4) uint8
    OPENCV: opencv,
    "decode simplejpeg RGB": simplejpeg_decoder("RGB", False),
    "decode simplejpeg RGB fast": simplejpeg_decoder("RGB", True),
    "decode simplejpeg RGBX": simplejpeg_decoder("RGBX", False),
    "decode simplejpeg RGBX fast": simplejpeg_decoder("RGBX", True),
}


def rgbx_pipeline():
    """This repo's training transform on an RGBX decode (no conversion before the warp)."""
    t = TrainTransform(SIZE, SHORT, mean_pixel("senet154"))
    decode = DECODERS["decode simplejpeg RGBX"]

    def run(path, seed):
        return t(decode(path, seed), np.random.default_rng(seed))

    return run


def agreement(paths):
    """Mean absolute difference (grey levels) of each decoder's RGB against OpenCV's, over `paths`."""
    diffs = {name: [] for name in DECODERS}
    for p in paths:
        ref = opencv(p, None).astype(np.int16)
        for name, fn in DECODERS.items():
            diffs[name].append(float(np.abs(fn(p, None)[:, :, :3].astype(np.int16) - ref).mean()))
    return {name: round(float(np.mean(d)), 3) for name, d in diffs.items()}


def same_output(paths):
    """True when the RGBX-fed pipeline gives this repo's pipeline's tensors (same seeds)."""
    from bench.pipelines import this_repo

    a, b = this_repo(), rgbx_pipeline()
    return all(torch.equal(a(p, (0, i)), b(p, (0, i))) for i, p in enumerate(paths[:4]))
