"""torchrun with gloo on the CPU: 2 processes train, localize and test like one."""
import json
import os
import signal
import subprocess
import sys
import time
import zipfile

import numpy as np
import torch
import pytest
from harness import COARSE_TINY, ROOT, make_dataset, run_script

from fgvc.checkpoint import load_checkpoint

pytestmark = pytest.mark.slow  # whole stages run: left out of `make test-fast`

COARSE = [*COARSE_TINY, "--batch-size", "4"]


def torchrun_cmd(*args):
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *map(str, args)]


def start_training(tmp, data, out, epochs, **popen):
    """A 2-process coarse run in the background; returns once its first checkpoint exists."""
    cmd = torchrun_cmd(ROOT / "coarse" / "train.py", "--data", data, "--out", out, *COARSE, "--epochs", epochs, "--figure", tmp / "f.png")
    p = subprocess.Popen(cmd, cwd=ROOT, start_new_session=True, **popen)
    deadline = time.time() + 120
    while not (out / "checkpoint.pt").exists() and time.time() < deadline and p.poll() is None:
        time.sleep(0.05)
    return p


def torchrun(*args, timeout=300):
    p = subprocess.run(torchrun_cmd(*args), cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    if p.returncode != 0:
        raise AssertionError(f"torchrun exited {p.returncode}\n{p.stderr[-3000:]}")
    return p


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dist")
    data = make_dataset(tmp / "ds", per_class=(7, 3, 3))  # 21 train images: uneven over 2 ranks
    torchrun(ROOT / "coarse" / "train.py", "--data", data, "--out", tmp / "c2", *COARSE, "--epochs", "2", "--figure", tmp / "f.png")
    return tmp, data


def test_two_process_training_completes_and_its_checkpoint_loads(runs):
    tmp, _ = runs
    ckpt = load_checkpoint(tmp / "c2" / "checkpoint.pt")
    assert ckpt["args"]["world_size"] == 2 and ckpt["epoch"] == 2
    assert ckpt["step"] == 2 * 3  # ceil(ceil(21 / 2) / 4) = 3 steps per epoch and process
    log = (tmp / "c2" / "log.jsonl").read_text().splitlines()
    assert len(log) == 2  # only rank 0 writes


def test_sharded_localization_and_test_equal_single_process(runs):
    tmp, data = runs
    single = tmp / "c1"
    single.mkdir()
    (single / "checkpoint.pt").write_bytes((tmp / "c2" / "checkpoint.pt").read_bytes())
    run_script(ROOT / "coarse" / "train.py", "--data", data, "--out", single, *COARSE, "--localize-only", "--figure", tmp / "f1.png")
    for split in ("train", "val", "test"):
        a, b = np.load(single / f"masks_{split}.npz"), np.load(tmp / "c2" / f"masks_{split}.npz")
        assert np.array_equal(a["image_ids"], b["image_ids"]) and np.array_equal(a["masks"], b["masks"])
        # byte for byte up to the provenance, which differs in its run id and checkpoint path only
        one, two = (zipfile.ZipFile(d / f"masks_{split}.npz") for d in (single, tmp / "c2"))
        at = one.getinfo("provenance.npy").header_offset
        assert at == two.getinfo("provenance.npy").header_offset
        assert (single / f"masks_{split}.npz").read_bytes()[:at] == (tmp / "c2" / f"masks_{split}.npz").read_bytes()[:at]
        made = [json.loads(str(np.load(d / f"masks_{split}.npz")["provenance"])) for d in (single, tmp / "c2")]
        assert made[0].pop("run") != made[1].pop("run")
        assert made[0].pop("checkpoint").startswith(str(single)) and made[1].pop("checkpoint").startswith(str(tmp / "c2"))
        assert made[0] == made[1]
    common = ["--data", data, "--coarse", tmp / "c2", "--fine", tmp / "c2", "--model", "coarse", "--device", "cpu",
              "--workers", "0", "--amp", "off", "--batch-size", "2"]
    torchrun(ROOT / "test.py", *common, "--submission", tmp / "s2.csv")
    run_script(ROOT / "test.py", *common, "--submission", tmp / "s1.csv")
    assert (tmp / "s1.csv").read_text() == (tmp / "s2.csv").read_text()


def test_resume_under_torchrun_after_a_kill(runs):
    tmp, data = runs
    out = tmp / "r"
    p = start_training(tmp, data, out, 4, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    os.killpg(p.pid, signal.SIGKILL)
    p.wait()
    torchrun(ROOT / "coarse" / "train.py", "--data", data, "--out", out, *COARSE, "--epochs", "4", "--figure", tmp / "f.png", "--resume")
    ckpt = load_checkpoint(out / "checkpoint.pt")
    assert ckpt["epoch"] == 4 and ckpt["step"] == 4 * 3


def test_a_failing_rank_ends_the_job_with_a_message(runs):
    tmp, data = runs
    p = start_training(tmp, data, tmp / "fail", 50, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # SIGKILL one worker (a child of the torchrun agent): the others must not hang in a collective
    workers = subprocess.run(["pgrep", "-P", str(p.pid)], capture_output=True, text=True).stdout.split()
    assert len(workers) == 2
    os.kill(int(workers[-1]), signal.SIGKILL)
    try:
        _, err = p.communicate(timeout=120)
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
    assert p.returncode != 0
    assert "FAILED" in err and "SIGKILL" in err


def test_killed_mid_epoch_and_resumed_under_torchrun_is_the_same_run_bit_for_bit(runs):
    """Each rank draws its own dropout and augmentation (per seed, rank, epoch, step), and a run
    killed mid-epoch continues to the very weights of the uninterrupted 2-epoch run (runs' c2)."""
    tmp, data = runs
    out = tmp / "bits"
    args = [ROOT / "coarse" / "train.py", "--data", data, "--out", out, *COARSE, "--epochs", 2, "--figure", tmp / "fb.png",
            "--save-every", 1]
    p = subprocess.Popen(torchrun_cmd(*args), cwd=ROOT, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (out / "checkpoint.pt").exists() and time.time() < deadline and p.poll() is None:
        time.sleep(0.05)
    os.killpg(p.pid, signal.SIGKILL)
    p.wait()
    first = load_checkpoint(out / "checkpoint.pt")
    assert (first["epoch"], first["step_in_epoch"]) != (2, 0)  # killed before the end
    torchrun(*args, "--resume")
    a, b = load_checkpoint(out / "checkpoint.pt"), load_checkpoint(tmp / "c2" / "checkpoint.pt")
    assert a["step"] == b["step"] == 6
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in b["model"])
    mom = lambda c: [s["momentum_buffer"] for _, s in sorted(c["optimizer"]["state"].items())]  # noqa: E731
    assert all(torch.equal(x, y) for x, y in zip(mom(a), mom(b)))
