"""--preflight (fgvc/preflight.py) on the three stages, on the CPU: it reports the rates, the limit,
peak memory and the projected time, writes nothing into --out but preflight.json, never touches a
real run's files, and does not stop a later real run into the same --out."""
import json

import pytest
from harness import TINY

pytestmark = pytest.mark.slow  # whole stages run: left out of `make test-fast`

KEYS = {"loader_images_per_s", "step_images_per_s", "limit", "peak_memory_mb", "projected_epoch_s", "projected_total_s"}
FAST = ["--preflight", "--preflight-steps", "2"]


def report(path):
    r = json.loads(path.read_text())
    assert KEYS <= set(r) and r["limit"] in ("loader", "step")
    assert all(r[k] > 0 for k in KEYS - {"limit"})
    return r


def contents(d):
    return {p.name: p.read_bytes() for p in sorted(d.iterdir()) if p.is_file()}


def test_preflight_of_every_stage_writes_only_its_report(dataset, tmp_path, run_cli):
    coarse, fine = tmp_path / "coarse", tmp_path / "fine"
    code, out, err = run_cli("coarse/train.py", "--data", dataset, "--out", coarse, *TINY, *FAST)
    assert code == 0, err[-2000:]
    assert sorted(p.name for p in coarse.iterdir()) == ["preflight.json"]
    r = report(coarse / "preflight.json")
    assert r["images"] == {"train": 24, "val": 9, "test": 9} and r["localize_images_per_s"] > 0
    assert r["projected_total_s"] > r["epochs"] * r["projected_epoch_s"]  # plus the localization
    assert "the loop" in out and "projected: an epoch" in out and "peak RSS" in out

    # a real run into the same --out is not refused because of it, and a preflight then leaves its files alone
    assert run_cli("coarse/train.py", "--data", dataset, "--out", coarse, *TINY, "--epochs", "1")[0] == 0
    before = contents(coarse)
    assert {"checkpoint.pt", "log.jsonl", "masks_train.npz"} <= set(before)
    assert run_cli("coarse/train.py", "--data", dataset, "--out", coarse, *TINY, *FAST)[0] == 0
    after = contents(coarse)
    assert {k: v for k, v in after.items() if k != "preflight.json"} == {k: v for k, v in before.items() if k != "preflight.json"}
    assert sorted(p.name for p in coarse.iterdir()) == sorted(p.name for p in coarse.iterdir() if not p.name.startswith("."))

    # fine: on the coarse run's masks
    code, out, err = run_cli("fine/train.py", "--data", dataset, "--out", fine, "--coarse", coarse, *TINY, *FAST)
    assert code == 0, err[-2000:]
    assert sorted(p.name for p in fine.iterdir()) == ["preflight.json"]
    assert report(fine / "preflight.json")["masks"].endswith("masks_train.npz")

    # test.py: with the fine checkpoint, all 16 crops; the report beside --submission, no submission
    assert run_cli("fine/train.py", "--data", dataset, "--out", fine, "--coarse", coarse, *TINY, "--epochs", "1")[0] == 0
    sub = tmp_path / "sub" / "submission.csv"
    code, out, err = run_cli("test.py", "--data", dataset, "--coarse", coarse, "--fine", fine, "--submission", sub, "--device", "cpu",
                             "--workers", "0", "--amp", "off", "--batch-size", "2", *FAST)
    assert code == 0, err[-2000:]
    assert sorted(p.name for p in sub.parent.iterdir()) == ["preflight.json"]
    r = report(sub.parent / "preflight.json")
    assert r["crops_per_image"] == 16 and r["model"] == str(fine / "checkpoint.pt") and r["images"] == {"test": 9}


def test_fine_preflight_without_masks_uses_stand_ins(dataset, tmp_path, run_cli):
    code, _, err = run_cli("fine/train.py", "--data", dataset, "--out", tmp_path / "f", "--coarse", tmp_path / "none", *TINY, *FAST)
    assert code == 0, err[-2000:]
    assert report(tmp_path / "f" / "preflight.json")["masks"].startswith("stand-in")
    assert not (tmp_path / "none").exists()


def test_stand_in_masks_cover_the_stated_area():
    from fgvc.preflight import STAND_IN_AREA, stand_in_masks

    m = stand_in_masks(3, (64, 64))
    assert m.shape == (3, 64, 64) and abs(m[0].mean() - STAND_IN_AREA) < 0.01 and m[0, 32, 32] == 1 and m[0, 0, 0] == 0
