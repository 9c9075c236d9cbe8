"""Self-describing checkpoints (issue 23): training stores the classes' names, supercategories and
train counts; older checkpoints load without them; damaged ones are refused. And TopK, what
test.py and predict.py keep of each image."""
import json

import numpy as np
import pytest
import torch

from fgvc.annotations import class_counts, class_prior, load_dataset
from fgvc.checkpoint import class_info, load_checkpoint, save_checkpoint, stored_class_info
from fgvc.config import TrainConfig
from fgvc.datasets import ImageDataset
from fgvc.engine import fit
from fgvc.errors import CheckpointError
from fgvc.metrics import topk
from fgvc.prior import TopK, prior_correct
from fgvc.stages import build_model, model_args
from fgvc.transforms import EvalTransform, TrainTransform


def test_names_and_supercategories_are_read_in_class_order(dataset):
    classes, splits = load_dataset(dataset, splits=("train",))
    assert classes.ids == (5, 17, 40) and classes.names == ("species 5", "species 17", "species 40")
    assert classes.supercategories == ()  # iNat 2019's json has none
    doc = json.loads((dataset / "train2019.json").read_text())
    for c in doc["categories"]:
        c["supercategory"] = f"super of {c['id']}"
    doc["categories"][0].pop("name")
    (dataset / "train2019.json").write_text(json.dumps(doc))
    classes, _ = load_dataset(dataset, splits=("train",))
    missing = doc["categories"][0]["id"]
    assert classes.supercategories == tuple(f"super of {c}" for c in (5, 17, 40))
    assert classes.names[classes.ids.index(missing)] == "" and classes.names.count("") == 1


def test_training_stores_names_and_train_counts(dataset, tmp_path):
    torch.manual_seed(0)
    classes, splits = load_dataset(dataset, splits=("train", "val"))
    counts = class_counts(splits["train"], len(classes))
    flags = dict(epochs=1, batch_size=8, eval_batch_size=16, lr=0.05, backbone_lr_ratio=1.0, amp="off", workers=0, seed=0,
                 save_every=0, arch="resnet18", img_size=32)
    fit(build_model("coarse", "resnet18", len(classes)), ImageDataset(splits["train"], TrainTransform(32, 40, fill=(0, 0, 0))),
        ImageDataset(splits["val"], EvalTransform(32)), config=TrainConfig.from_flags(flags, "cpu"), out_dir=tmp_path,
        class_ids=classes.ids, model_args=model_args("coarse", "resnet18", len(classes), True), class_info=class_info(classes, counts))
    names, supers, stored = stored_class_info(load_checkpoint(tmp_path / "checkpoint.pt"))
    assert names == ["species 5", "species 17", "species 40"] and supers is None
    assert stored == counts.tolist() == [8, 8, 8]


def _save(path, **info):
    model = build_model("fine", "resnet18", 3)
    save_checkpoint(path, model, args={"img_size": 32}, model_args=model_args("fine", "resnet18", 3, True), class_ids=[5, 17, 40],
                    info=info or None)


def test_older_checkpoints_load_without_class_info(tmp_path):
    _save(tmp_path / "old.pt")
    ckpt = load_checkpoint(tmp_path / "old.pt")
    assert stored_class_info(ckpt) is None and "class_names" not in ckpt


@pytest.mark.parametrize("key, value", [("class_counts", [1, 2]), ("class_counts", [1, -2, 3]), ("class_names", ["a", "b", 3]),
                                        ("supercategories", "Plants")])
def test_damaged_class_info_is_refused(tmp_path, key, value):
    info = {"class_names": ["a", "b", "c"], "supercategories": None, "class_counts": [3, 2, 1], key: value}
    _save(tmp_path / "c.pt", **info)
    with pytest.raises(CheckpointError, match=f"damaged checkpoint: '{key}' is not a list of 3"):
        load_checkpoint(tmp_path / "c.pt")


def test_topk_keeps_the_corrected_ranking_and_its_probabilities():
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(7), size=20)
    prior = class_prior(np.array([500, 200, 100, 50, 20, 16, 300]))
    kept = TopK(prior, 1.0, k=3)(probs)
    full = prior_correct(probs, prior, 1.0)
    assert np.array_equal(kept["corrected"], topk(full, 3)) and np.array_equal(kept["uncorrected"], topk(probs, 3))
    assert np.allclose(kept["probability"], np.take_along_axis(full, kept["corrected"], 1))
    assert np.allclose(full.sum(1), 1) and (np.diff(kept["probability"], axis=1) <= 0).all()
    assert not np.array_equal(kept["corrected"], kept["uncorrected"])  # the correction changed some ranking here
    assert np.allclose(TopK(prior, 0.0, k=3)(probs)["probability"], np.take_along_axis(probs, topk(probs, 3), 1))
