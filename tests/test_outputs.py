"""Outputs never destroy what is not theirs (issue 15, items 1-4 and 14): the atomic writer refuses
a target that is not a regular file and writes through a symlink; no output may resolve to an
input; a run locks its output directory (test.py: its submission) for its whole life; the
temporary files of killed writers are removed by the next lock holder, never by pid numbers;
test.py checks --submission before loading any model.

Device nodes, FIFOs and sockets are made inside the test's own temporary directory; nothing here
touches a system path (/dev/null is only stat'ed, for its device numbers).
"""
import json
import os
import socket
import stat
import subprocess
import sys
import time

import pytest
from harness import COARSE_TINY, ROOT, SCORING_TINY, error_line, lock_holder, make_dataset, stage

from fgvc.atomic import atomic_write, remove_temps
from fgvc.errors import UserError

@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A dataset no test writes into (each checks that it did not)."""
    return make_dataset(tmp_path_factory.mktemp("outputs") / "ds")


def snapshot(root):
    """{relative path: bytes} of every file under `root`."""
    return {p.relative_to(root): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def scoring(data, submission, fine, *extra):
    return ["--data", data, "--coarse", fine.parent / "no-coarse", "--fine", fine, "--submission", submission, *SCORING_TINY, *extra]


def special(path, kind):
    """Make a FIFO, a character device (/dev/null's numbers), a directory or a socket at `path`."""
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "device":
        try:
            os.mknod(path, stat.S_IFCHR | 0o666, os.stat("/dev/null").st_rdev)
        except PermissionError:
            pytest.skip("no permission to make a device node here")
    elif kind == "directory":
        path.mkdir()
    else:
        s = socket.socket(socket.AF_UNIX)
        s.bind(str(path))
        s.close()
    return os.lstat(path).st_mode


NAMES = {"fifo": "a FIFO", "device": "a character device", "directory": "a directory", "socket": "a socket"}


# ---------------------------------------------------------------- 1. the atomic writer

@pytest.mark.parametrize("kind", NAMES)
def test_atomic_write_refuses_what_is_not_a_regular_file(tmp_path, kind):
    target = tmp_path / "out.csv"
    mode = special(target, kind)
    with pytest.raises(UserError, match=f"is {NAMES[kind]}, not a regular file: refusing to replace it"):
        atomic_write(target, lambda f: f.write(b"id,predicted\n"))
    assert os.lstat(target).st_mode == mode  # still what it was
    assert os.listdir(tmp_path) == ["out.csv"]  # no temporary file either


def test_atomic_write_writes_through_a_symlink(tmp_path):
    real, link = tmp_path / "real.csv", tmp_path / "link.csv"
    real.write_bytes(b"old")
    os.chmod(real, 0o600)
    link.symlink_to(real.name)
    atomic_write(link, lambda f: f.write(b"new"))
    assert link.is_symlink() and os.readlink(link) == "real.csv"  # the link stays a link
    assert real.read_bytes() == b"new" and stat.S_IMODE(real.stat().st_mode) == 0o600
    dangling = tmp_path / "dangling.csv"
    dangling.symlink_to(tmp_path / "sub" / "created.csv")
    atomic_write(dangling, lambda f: f.write(b"made"))
    assert dangling.is_symlink() and (tmp_path / "sub" / "created.csv").read_bytes() == b"made"
    fifo, to_fifo = tmp_path / "fifo", tmp_path / "to_fifo.csv"
    os.mkfifo(fifo)
    to_fifo.symlink_to(fifo)
    with pytest.raises(UserError, match=r"fifo \(via the symlink .*to_fifo.csv\) is a FIFO"):
        atomic_write(to_fifo, lambda f: f.write(b"x"))
    assert stat.S_ISFIFO(os.stat(to_fifo).st_mode)
    assert sorted(os.listdir(tmp_path)) == ["dangling.csv", "fifo", "link.csv", "real.csv", "sub", "to_fifo.csv"]


def test_atomic_write_leaves_other_temporaries_alone_and_remove_temps_takes_only_temporaries(tmp_path):
    other = tmp_path / f".checkpoint.pt.{os.getpid() + 10**6}.abcd_123.tmp"  # a pid that may be dead here
    other.write_bytes(b"another writer's")
    atomic_write(tmp_path / "checkpoint.pt", lambda f: f.write(b"mine"))
    assert other.read_bytes() == b"another writer's"  # the writer no longer judges pids
    keep = [tmp_path / ".hidden", tmp_path / "a.tmp", tmp_path / ".x.tmp", tmp_path / ".masks_val.npz.1.abc.tmp"]
    for p in keep:
        p.write_bytes(b"")
    assert remove_temps(tmp_path, "checkpoint.pt") == [other.name]
    assert remove_temps(tmp_path) == [".masks_val.npz.1.abc.tmp"]
    assert sorted(os.listdir(tmp_path)) == [".hidden", ".x.tmp", "a.tmp", "checkpoint.pt"]


# ---------------------------------------------------------------- 1, 2, 14. test.py --submission

@pytest.mark.parametrize("kind", ["fifo", "device", "symlink to a fifo"])
def test_submission_that_is_not_a_regular_file_is_refused_before_any_model(data, tmp_path, run_cli, kind):
    target = tmp_path / "submission.csv"
    if kind == "symlink to a fifo":
        os.mkfifo(tmp_path / "fifo")
        target.symlink_to(tmp_path / "fifo")
        kind = "fifo"
    mode = special(target, kind) if not target.is_symlink() else os.lstat(target).st_mode
    before = sorted(os.listdir(tmp_path))
    code, _, err = run_cli("test.py", *scoring(data, target, tmp_path / "missing-fine"))
    line = error_line(err)
    assert code == 2 and line.startswith("error: --submission: ") and f"is {NAMES[kind]}, not a regular file" in line
    assert "checkpoint" not in line  # refused before the (missing) fine checkpoint was looked at
    assert os.lstat(target).st_mode == mode and sorted(os.listdir(tmp_path)) == before


def test_submission_that_is_an_input_is_refused_and_the_input_unchanged(data, tmp_path, run_cli):
    fine = tmp_path / "fine"
    fine.mkdir()
    (fine / "checkpoint.pt").write_bytes(b"the fine checkpoint")
    (tmp_path / "link.csv").symlink_to(data / "val2019.json")
    (tmp_path / "images").symlink_to(data / "test2019")  # a folder of images reached from outside the root
    image = sorted((data / "test2019").iterdir())[0]
    cases = [(fine / "checkpoint.pt", "the --fine checkpoint"),
             (data / "test2019.json", "the dataset file test2019.json"),
             (tmp_path / "link.csv", "the dataset file val2019.json"),  # --eval reads val
             (data / "truth" / "test_labels.csv", "the hidden labels"),
             (image, "an image of test2019.json"),
             (tmp_path / "images" / image.name, "an image of test2019.json")]
    dataset, ours = snapshot(data), snapshot(tmp_path)
    for target, what in cases:
        code, _, err = run_cli("test.py", *scoring(data, target, fine, "--eval"))
        line = error_line(err)
        assert code == 2 and f"--submission {target}" in line and f"is an input of this run, {what}" in line, line
        assert "refusing to overwrite it" in line
    assert snapshot(data) == dataset and snapshot(tmp_path) == ours  # byte for byte, and no lock or temp left


def test_image_behind_a_symlinked_folder_of_the_dataset_is_an_input(tmp_path, run_cli):
    data = make_dataset(tmp_path / "ds")
    (data / "test2019").rename(tmp_path / "elsewhere")  # a symlinked image folder, as on a cluster
    (data / "test2019").symlink_to(tmp_path / "elsewhere")
    image = sorted((tmp_path / "elsewhere").iterdir())[0]
    before = image.read_bytes()
    code, _, err = run_cli("test.py", *scoring(data, image, tmp_path / "missing-fine"))
    assert code == 2 and "is an input of this run, an image of test2019.json" in error_line(err)
    assert image.read_bytes() == before


def test_unwritable_submission_is_refused_before_any_model(data, tmp_path, run_cli):
    (tmp_path / "a-file").write_bytes(b"x")  # its "directory" is a file: not writable even as root
    code, _, err = run_cli("test.py", *scoring(data, tmp_path / "a-file" / "sub.csv", tmp_path / "missing-fine"))
    line = error_line(err)
    assert code == 2 and line.startswith(f"error: --submission: {tmp_path / 'a-file' / 'sub.csv'}: cannot write there")
    assert "Not a directory" in line
    assert "checkpoint" not in line
    # a directory that can be created is fine: the run goes on to the (missing) checkpoint, and
    # the directories it made for nothing are gone again
    code, _, err = run_cli("test.py", *scoring(data, tmp_path / "new" / "deeper" / "sub.csv", tmp_path / "missing-fine"))
    assert code == 2 and "checkpoint not found" in error_line(err)
    assert sorted(os.listdir(tmp_path)) == ["a-file"]


# ---------------------------------------------------------------- 1, 2, 4. the coarse stage's outputs

def test_figure_that_is_an_image_or_a_fifo_is_refused_before_training(data, tmp_path, run_cli):
    out = tmp_path / "run"
    image = sorted((data / "train_val2019").rglob("*.jpg"))[0]
    os.mkfifo(tmp_path / "fig.png")
    dataset = snapshot(data)
    for figure, message in [(image, "is an input of this run, an image of"),
                            (tmp_path / "fig.png", "is a FIFO, not a regular file"),
                            (out / "checkpoint.pt", "is also the checkpoint")]:
        code, _, err = run_cli("coarse/train.py", "--data", data, "--out", out, *COARSE_TINY, "--epochs", "1", "--figure", figure)
        assert code == 2 and message in error_line(err), err[-2000:]
        assert not out.exists()  # nothing written, not even the output directory
    assert snapshot(data) == dataset and stat.S_ISFIFO(os.stat(tmp_path / "fig.png").st_mode)


def test_fine_stage_refuses_to_write_over_its_pretrained_weights(data, tmp_path, run_cli):
    out = tmp_path / "fine"
    out.mkdir()
    (out / "epoch-2.pt").write_bytes(b"weights kept by an earlier run")
    args = ["--data", data, "--out", out, "--coarse", tmp_path / "no-coarse", "--arch", "resnet18", "--img-size", "32",
            "--device", "cpu", "--workers", "0", "--amp", "off", "--epochs", "3", "--keep-epochs"]
    code, _, err = run_cli("fine/train.py", *args, "--pretrained", out / "epoch-2.pt")
    line = error_line(err)
    assert code == 2 and f"--keep-epochs weights {out / 'epoch-2.pt'} is an input of this run, --pretrained" in line
    assert sorted(os.listdir(out)) == ["epoch-2.pt"] and (out / "epoch-2.pt").read_bytes() == b"weights kept by an earlier run"


# ---------------------------------------------------------------- 3. the lock, and temporaries

def test_second_run_into_a_locked_out_is_refused_while_the_first_finishes_untouched(tmp_path, run_cli):
    data = make_dataset(tmp_path / "ds")
    out = tmp_path / "run"
    out.mkdir()
    # temporaries of writers that are gone, named with pids that are alive here (this process,
    # pid 1): pid liveness would keep them; the next holder of the lock removes them
    dead = [out / f".checkpoint.pt.{os.getpid()}.deadbeef.tmp", out / ".masks_val.npz.1.abcdefgh.tmp"]
    for p in dead:
        p.write_bytes(b"left by a killed writer")
    repo_figure = ROOT / "fig" / "sample.png"
    figure_before = repo_figure.read_bytes() if repo_figure.exists() else None
    args = ["--data", data, "--out", out, *COARSE_TINY, "--epochs", "2"]  # no --figure: it goes into --out
    stage("coarse/train.py")  # imported now, so that the second run is refused within the first's life
    with open(tmp_path / "first.log", "w") as log:
        first = subprocess.Popen([sys.executable, str(ROOT / "coarse" / "train.py"), *map(str, args), "--seed", "0"],
                                 cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    try:
        t0 = time.monotonic()
        while not ((out / ".lock").exists() and (out / ".lock").read_text().startswith("pid")):
            assert first.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
            assert time.monotonic() - t0 < 120, "the first run never took its lock"
            time.sleep(0.02)
        # a live writer's temporary, named with a pid that is dead here (another pid namespace):
        # neither the first run's own writes nor the refused second run may touch it
        live = out / f".checkpoint.pt.{2**22 + 7}.livetemp.tmp"
        live.write_bytes(b"a live writer's")
        code, _, err = run_cli("coarse/train.py", *args, "--seed", "1")
        line = error_line(err)
        assert code == 2 and f"--out {out} is in use by another run, pid {first.pid} on {socket.gethostname()}, started " in line
        assert "coarse/train.py" in line and "wait for it to end or choose another path" in line
        assert first.wait(timeout=300) == 0, (tmp_path / "first.log").read_text()[-3000:]
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    log = [json.loads(l) for l in (out / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2]  # the first run's epochs, once each
    assert not any(p.exists() for p in dead) and live.read_bytes() == b"a live writer's"
    assert not (out / ".lock").exists()  # released (and removed) when the run ended
    assert (out / "sample.png").stat().st_size > 1000  # item 4: the figure defaults into --out ...
    assert (repo_figure.read_bytes() if repo_figure.exists() else None) == figure_before  # ... not the repo's


def test_lock_of_a_killed_run_is_released_and_its_temporaries_removed_by_the_next(data, tmp_path, run_cli):
    target = tmp_path / "submission.csv"
    holder = lock_holder("--submission", target)
    try:
        temp = tmp_path / f".submission.csv.{holder.pid}.abcdefgh.tmp"  # its write in progress
        temp.write_bytes(b"partial")
        dead = tmp_path / ".checkpoint.pt.1.abcdefgh.tmp"
        dead.write_bytes(b"left by a killed writer")
        code, _, err = run_cli("test.py", *scoring(data, target, tmp_path / "missing-fine"))
        assert code == 2 and f"--submission {target} is in use by another run, pid {holder.pid}" in error_line(err)
        assert temp.exists()
        # a run whose --out is this directory takes its lock and cleans it, but not around a
        # file that another run holds
        code, _, err = run_cli("coarse/train.py", "--data", data, "--out", tmp_path, *COARSE_TINY, "--localize-only")
        assert code == 2 and "checkpoint not found" in error_line(err)
        assert temp.exists() and not dead.exists()
    finally:
        holder.kill()
        holder.wait()
    assert (tmp_path / ".submission.csv.lock").exists()  # killed: the file stays, its lock is gone
    code, _, err = run_cli("test.py", *scoring(data, target, tmp_path / "missing-fine"))
    assert code == 2 and "checkpoint not found" in error_line(err)  # took the lock, then stopped
    assert not temp.exists() and sorted(os.listdir(tmp_path)) == []
