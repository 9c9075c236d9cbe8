"""The ablation command (bench/ablate.py): its statistics on crafted answers, the oracle masks, and
one tiny run that writes the table and the figure."""
import math

import numpy as np
import pytest
from harness import call, coarse_args, error_line, fine_args, make_dataset, stage

from fgvc.annotations import load_dataset
from fgvc.checkpoint import load_checkpoint
from fgvc.config import FineConfig
from fgvc.errors import UserError
from fgvc.metrics import sign_test, wilson_interval

pytestmark = pytest.mark.slow  # whole stages run: left out of `make test-fast`

def test_wilson_interval_known_values():
    assert wilson_interval(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)
    assert wilson_interval(5, 10) == pytest.approx((0.2366, 0.7634), abs=1e-4)
    assert wilson_interval(0, 0) == (0.0, 1.0)


def test_sign_test_known_values():
    a = np.array([True] * 8 + [False] * 2 + [True] * 5)
    b = np.array([False] * 8 + [True] * 2 + [True] * 5)  # the 5 agreeing images do not count
    assert sign_test(a, b) == (8, 2, pytest.approx(2 * (1 + 10 + 45) / 1024))
    assert sign_test([True] * 10, [False] * 10) == (10, 0, pytest.approx(2 / 1024))
    assert sign_test([True, False], [True, False])[2] == 1.0


def test_boxes_become_masks_on_the_grid(tmp_path):
    ablate = stage("bench/ablate.py")
    _, splits = load_dataset(make_dataset(tmp_path / "ds"))
    val = splits["val"]
    boxes = {int(i): (50.0, 10.0, 25.0, 20.0) for i in val.image_ids}  # x 50..75 of 100, y 10..30 of 40
    sizes = np.tile([100, 40], (len(val), 1))
    m = ablate.boxes_to_masks(val, boxes, sizes, (32, 32))
    assert m.shape == (len(val), 32, 32)
    ys, xs = np.nonzero(m[0])
    assert (xs.min(), xs.max(), ys.min(), ys.max()) == (16, 23, 8, 23)
    del boxes[int(val.image_ids[1])]
    with pytest.raises(UserError, match="no box for val image id"):
        ablate.boxes_to_masks(val, boxes, sizes, (32, 32))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("abl")
    data = make_dataset(tmp / "ds")
    call("coarse/train.py", *coarse_args(data, tmp / "coarse", "--epochs", "1"))
    # a baseline with a flag off its default: the retrained rows must keep it
    call("fine/train.py", *fine_args(data, tmp / "fine", tmp / "coarse", "--img-size", "48", "--epochs", "1",
                                     "--crop-centre", "on-mask", "--crop-k", "1.5", "--log-every", "3"))
    return tmp, data


def binomial_two_sided(k, n):
    """The exact two-sided p of k successes in n fair trials: the total probability of the outcomes
    no likelier than k (the textbook definition; ablate's sign_test sums one tail and doubles it)."""
    pmf = [math.comb(n, i) / 2**n for i in range(n + 1)]
    return min(1.0, sum(p for p in pmf if p <= pmf[k] * (1 + 1e-9))) if n else 1.0


def test_ablation_writes_the_table_and_the_figure_with_intervals(runs, run_cli):
    tmp, data = runs
    code, out, err = run_cli("bench/ablate.py", "--data", data, "--coarse", tmp / "coarse", "--fine", tmp / "fine",
                             "--out", tmp / "fig", "--work", tmp / "work", "--rows", "test,oracle",
                             "--device", "cpu", "--workers", "0", "--amp", "off")
    assert code == 0, err[-2000:]
    md = (tmp / "fig" / "ablation.md").read_text()
    rows = [line for line in md.splitlines() if line.startswith("| ") and not line.startswith(("| variant", "| ---"))]
    names = [r.split("|")[1].strip() for r in rows]
    assert names[0].startswith("16 crops, CAM masks, tau 1") and len(rows) == 11  # 10 test-time rows, 1 retrained
    assert names[-1].startswith("crops of the true boxes (oracle)")
    assert all(r.count("[") == 2 for r in rows)  # top-1 and top-5 intervals on every row
    n = 3 * 3  # test images of make_dataset
    for r in rows[1:]:  # the difference and the sign test against the default, from the row's own counts
        cells = [c.strip() for c in r.split("|")]
        better, worse = map(int, cells[5].split(" / "))
        assert float(cells[4].split()[0]) == pytest.approx((worse - better) / n, abs=5e-4)
        assert float(cells[6]) == pytest.approx(binomial_two_sided(better, better + worse), rel=5e-3)
    assert (tmp / "fig" / "ablation.png").stat().st_size > 5000
    assert "about" in out and "min left" in out  # a progress line per run
    oracle = np.load(tmp / "work" / "oracle" / "coarse" / "masks_test.npz")["masks"]
    assert oracle.shape[1:] == (32, 32) and 0 < oracle.mean() < 0.5
    # the retrained row replays every flag of the baseline (--crop-centre on-mask included), only
    # where it reads and writes, and this machine's device and workers, changed
    base = vars(FineConfig.from_args(load_checkpoint(tmp / "fine" / "checkpoint.pt")["args"]))
    again = vars(FineConfig.from_args(load_checkpoint(tmp / "work" / "oracle" / "fine" / "checkpoint.pt")["args"]))
    assert again["crop_centre"] == "on-mask" and again["crop_k"] == 1.5 and again["log_every"] == 3
    moved = {"coarse", "out", "save_every", "resume", "device", "workers"}
    assert {k for k in base if base[k] != again[k]} <= moved


def test_a_dataset_without_hidden_labels_is_refused(runs, run_cli, tmp_path):
    src, data = runs
    (data / "truth" / "test_labels.csv").rename(tmp_path / "labels.csv")
    try:
        code, _, err = run_cli("bench/ablate.py", "--data", data, "--coarse", src / "coarse", "--fine", src / "fine",
                               "--out", tmp_path / "fig", "--device", "cpu", "--workers", "0")
    finally:
        (tmp_path / "labels.csv").rename(data / "truth" / "test_labels.csv")
    assert code == 2 and "no hidden test labels" in error_line(err)
    assert not (tmp_path / "fig").exists()
