"""Model-side measurements on the CPU: the CAM's cost, and batched versus batch-1 test-time crops.

- localize_overhead: `fgvc.cam.localize` (logits and CAM from one forward pass, the CAM of the
  predicted class upsampled and thresholded into a 64 x 64 mask) over `fgvc.inference.predict` (the
  same forward pass and a softmax), same model and images. The images are decoded and resized
  beforehand (an in-memory dataset), so the ratio compares the model side alone: decoding would
  add the same time to both and hide the difference.
- tta_speedup_vs_batch1: `fgvc.inference.score` on `MultiCropTransform` crops, 8 images (x their
  crops) a forward pass, over the original's loop at batch size 1 (one image's crops a forward
  pass, then the softmax mean of that image). Same model, same crops (same seeds), data loading
  included in both.
- compile_train_speedup, compile_infer_speedup (--compile, issue 20.8): images/s of a training
  step (`fgvc.engine.train_step`, SGD) and of an inference batch (forward + softmax under
  inference_mode) with the model's body compiled (`prepare_model(..., compile=True)`) over eager;
  both in channels_last, same initial weights, same random batch; the compile (first calls) is
  timed apart as the warm-up and left out of the rates.
"""
import copy
import io
import time
from contextlib import redirect_stderr
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from fgvc.annotations import Split
from fgvc.cam import localize
from fgvc.config import Runtime
from fgvc.crop import MultiCropTransform
from fgvc.datasets import ImageDataset
from fgvc.engine import make_optimizer, train_step
from fgvc.inference import autocast_for, predict, prepare_model, score, to_device
from fgvc.stages import build_model
from fgvc.transforms import EvalTransform

K = 1010  # iNat 2019's classes


def image_split(paths):
    """An unlabelled Split over benchmark images (all in one folder)."""
    paths = [Path(p) for p in paths]
    return Split(name="bench", json_path=paths[0].parent / "none.json", root=paths[0].parent,
                 image_ids=np.arange(len(paths), dtype=np.int64), file_names=[p.name for p in paths],
                 labels=None, sizes=np.full((len(paths), 2), -1, np.int64))


class Preloaded(Dataset):
    """The samples of a dataset, computed once and kept in memory."""

    def __init__(self, dataset):
        self.items = [dataset[i] for i in range(len(dataset))]
        self.split, self.transform = dataset.split, dataset.transform  # localize reads them

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


def localize_vs_predict(paths, arch, img_size, batch_size, amp, rounds, race):
    model = build_model("coarse", arch, K).eval()
    data = Preloaded(ImageDataset(image_split(paths), EvalTransform(img_size)))
    masks = {}

    def run_localize(r):
        with redirect_stderr(io.StringIO()):  # localize's progress bar
            masks["m"], _ = localize(model, data, Runtime(torch.device("cpu"), batch_size, 0, amp), mask_size=(64, 64), threshold=0.5, use_labels=False)
        return len(data)

    def run_predict(r):
        for _ in predict(model, data, Runtime(torch.device("cpu"), batch_size, 0, amp)):
            pass
        return len(data)

    run_predict(0)  # warm-up: first-call allocations, oneDNN kernel selection
    t = race({"localize (logits + CAM -> masks)": run_localize, "predict (logits -> softmax)": run_predict}, rounds)
    return t, masks["m"]


@torch.no_grad()
def batch1_loop(model, dataset, amp, device="cpu"):
    """The original's test loop: batch size 1, an image's crops as one forward pass."""
    model.eval()
    autocast = autocast_for(device, amp)
    out = []
    for x, _, _, _ in DataLoader(dataset, batch_size=1, shuffle=False, num_workers=0):
        with autocast():
            logits = model(to_device(x[0], device))
        out.append(logits.float().softmax(1).mean(0).cpu().numpy())
    return np.stack(out)


def tta_batched_vs_batch1(paths, masks, arch, crop_size, batch_size, amp, rounds, race):
    model = build_model("fine", arch, K).eval()
    dataset = ImageDataset(image_split(paths), MultiCropTransform(crop_size), seed=0, masks=masks)
    probs = {}

    def batched(r):
        probs["batched"], _ = score(model, dataset, Runtime(torch.device("cpu"), batch_size, 0, amp))
        return len(dataset)

    def batch1(r):
        probs["batch1"] = batch1_loop(model, dataset, amp)
        return len(dataset)

    batch1(0)  # warm-up
    t = race({f"test crops, {batch_size} images a batch": batched, "test crops, batch size 1 (original)": batch1}, rounds)
    agree = float((probs["batched"].argmax(1) == probs["batch1"].argmax(1)).mean())
    return t, agree, len(MultiCropTransform(crop_size).factors) + len(MultiCropTransform(crop_size).mirror_factors)


def compile_vs_eager(arch, img_size, batch_size, amp, rounds, race, steps=3):
    """{"train" | "infer": race result {"eager", "compiled"}}, and the warm-up seconds of each
    compiled pass (its first calls: dynamo, inductor, the C++ compiler; less with a warm cache)."""
    eager = prepare_model(build_model("fine", arch, K, pretrained=None, freeze=False), "cpu")
    compiled = prepare_model(copy.deepcopy(eager), "cpu", compile=True)
    g = torch.Generator().manual_seed(0)
    x = to_device(torch.randint(0, 256, (batch_size, 3, img_size, img_size), dtype=torch.uint8, generator=g), "cpu")
    y = torch.randint(0, K, (batch_size,), generator=g)
    autocast = autocast_for("cpu", amp)
    opts = {id(m): make_optimizer(m, 1e-3, 1.0, name="sgd", weight_decay=0.0) for m in (eager, compiled)}

    def trainer(model):
        def run(r):
            model.train()
            for _ in range(steps):
                train_step(model, x, y, optimizer=opts[id(model)], autocast=autocast)
            return steps * batch_size
        return run

    def inferer(model):
        @torch.inference_mode()
        def run(r):
            model.eval()
            for _ in range(steps):
                with autocast():
                    model(x).float().softmax(1)
            return steps * batch_size
        return run

    out, warmup = {}, {}
    for name, make in (("train", trainer), ("infer", inferer)):
        runs = {"eager": make(eager), "compiled": make(compiled)}
        runs["eager"](0)
        t0 = time.perf_counter()
        runs["compiled"](0)  # compiles this pass's graph
        warmup[name] = time.perf_counter() - t0
        out[name] = race(runs, rounds)
    return out, warmup
