"""Fixtures of the fault-injection tests: one trained pipeline to break and one dataset of bad and
odd image files.

Both are scope="package": tests/faults/ has no __init__.py, so pytest has no Package node for it and
a package-scoped fixture falls back to the session. Each is therefore built once for all the test
files here (only they see this conftest), as it was when they were one module-scoped file.
"""
import pytest
from harness import call, coarse_args, fine_args, make_dataset, scoring_args, spoil
from helpers import BAD_TEST, BAD_TRAIN, BAD_VAL, ODD_TEST, ODD_TRAIN, ODD_VAL

from fgvc.annotations import load_dataset


# ---------------------------------------------------------------- a trained pipeline to break

@pytest.fixture(scope="package")
def clean(tmp_path_factory):
    """One tiny run of every stage: coarse checkpoint and masks, fine checkpoint, submission."""
    tmp = tmp_path_factory.mktemp("clean")
    data = make_dataset(tmp / "ds")
    coarse, fine, sub = tmp / "coarse", tmp / "fine", tmp / "submission.csv"
    call("coarse/train.py", *coarse_args(data, coarse, "--epochs", "1"))
    call("fine/train.py", *fine_args(data, fine, coarse, "--epochs", "1"))
    call("test.py", *scoring_args(data, coarse, fine, sub, "--model", "coarse"))
    return data, coarse, fine, sub


# ---------------------------------------------------------------- bad and odd image files

@pytest.fixture(scope="package")
def spoiled(tmp_path_factory):
    data = make_dataset(tmp_path_factory.mktemp("spoiled") / "ds")
    _, splits = load_dataset(data)
    for name, kinds in (("train", {**BAD_TRAIN, **ODD_TRAIN}), ("val", {**BAD_VAL, **ODD_VAL}), ("test", {**BAD_TEST, **ODD_TEST})):
        for row, kind in kinds.items():
            spoil(data / splits[name].file_names[row], kind)
    return data, splits
