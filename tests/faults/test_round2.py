"""Hardening, second round (issue 24): the cases a hostile user found after the first round. Each
ends in a one-line refusal or survives with nothing lost.

1. `data/prepare.py --overwrite` removes only what prepare wrote, never a source; a killed run's
   tree is removed by the next run; SIGINT / SIGTERM end it with one line, exit 130 / 143.
"""
import fcntl
import os
import signal
import subprocess
import sys
import time

import cv2
import numpy as np
from harness import ROOT, make_dataset, run_script

PREPARE = ROOT / "data" / "prepare.py"


def make_folder(root, classes=("ant", "bee"), per_class=7, size=(40, 48)):
    """root/<class>/img<n>.png, each image different (prepare skips copies)."""
    rng = np.random.default_rng(0)
    for name in classes:
        (root / name).mkdir(parents=True)
        for n in range(per_class):
            cv2.imwrite(str(root / name / f"img{n}.png"), rng.integers(0, 255, (*size, 3), dtype=np.uint8))
    return root


def prepare(*args):
    return run_script(PREPARE, *args, check=False)


def refused(p, *words):
    """Exit 2 with exactly one 'error:' line holding every one of `words`; returns the line."""
    lines = p.stderr.strip().splitlines()
    assert p.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), (p.returncode, p.stderr)
    assert all(w in lines[0] for w in words), lines[0]
    return lines[0]


def snapshot(root):
    """{relative path: bytes} of every file below root (symlinks not followed)."""
    out = {}
    for parent, _, files in os.walk(root):
        for f in files:
            path = os.path.join(parent, f)
            if not os.path.islink(path):
                out[os.path.relpath(path, root)] = open(path, "rb").read()
    return out


def leftovers(out):
    return sorted(p.name for p in out.parent.iterdir() if p.name.startswith(f"{out.name}.") and p != out)


# ---------------------------------------------------------------- 1. prepare.py --overwrite

def test_overwrite_refuses_a_source_inside_the_target(tmp_path):
    """`prepare.py folder DS/raw --out DS --overwrite` with DS prepared earlier once deleted DS/raw."""
    ds = tmp_path / "DS"
    assert prepare("folder", make_folder(tmp_path / "first"), "--out", ds).returncode == 0
    raw = make_folder(ds / "raw")
    before = snapshot(raw)
    refused(prepare("folder", raw, "--out", ds, "--overwrite"), "contains the source", str(raw))
    assert snapshot(raw) == before and (ds / "train2019.json").is_file()
    # the other direction: the target inside the source
    refused(prepare("folder", tmp_path / "first", "--out", tmp_path / "first" / "ant" / "DS", "--overwrite"),
            "inside the source")
    assert not (tmp_path / "first" / "ant" / "DS").exists()


def test_overwrite_refuses_a_dataset_it_did_not_write(tmp_path):
    """An iNat-2019-layout dataset with real images (make_dataset) has train2019.json but no
    manifest: `--out data/ --overwrite` must not delete a competition download."""
    inat = make_dataset(tmp_path / "inat")
    before = snapshot(inat)
    refused(prepare("folder", make_folder(tmp_path / "src"), "--out", inat, "--overwrite"),
            "is not a prepared dataset", ".prepared.json")
    assert snapshot(inat) == before and not leftovers(inat)


def test_overwrite_refuses_a_prepared_dataset_holding_a_file_it_did_not_write(tmp_path):
    src, ds = make_folder(tmp_path / "src"), tmp_path / "DS"
    assert prepare("folder", src, "--out", ds, "--copy").returncode == 0
    (ds / "images" / "ant" / "mine.txt").write_text("my notes")
    refused(prepare("folder", src, "--out", ds, "--overwrite"), "images/ant/mine.txt", "not written by")
    assert (ds / "images" / "ant" / "mine.txt").read_text() == "my notes"
    os.unlink(ds / "images" / "ant" / "mine.txt")
    # a copied image replaced by the user's own file (another size): not ours any more
    (ds / "images" / "bee" / "img0.png").write_bytes(b"not the copy prepare made")
    refused(prepare("folder", src, "--out", ds, "--overwrite"), "images/bee/img0.png", "changed since")
    assert (ds / "images" / "bee" / "img0.png").read_bytes() == b"not the copy prepare made"


def test_overwrite_replaces_what_it_wrote_and_nothing_else(tmp_path):
    src, ds = make_folder(tmp_path / "src"), tmp_path / "DS"
    for extra in ((), ("--copy",), ("--copy",)):  # symlinks -> copies -> copies again
        p = prepare("folder", src, "--out", ds, "--overwrite", *extra)
        assert p.returncode == 0, p.stderr
    assert (ds / "images" / "ant" / "img0.png").is_file() and not (ds / "images").is_symlink()
    assert prepare("folder", src, "--out", ds, "--overwrite").returncode == 0  # copies -> a symlink
    assert (ds / "images").is_symlink() and len(snapshot(src)) == 14 and not leftovers(ds)


def slow_copy_run(*args):
    """prepare.py in a child whose image copies take 0.2 s each, so that it can be stopped mid-copy."""
    code = ("import runpy, shutil, sys, time\n_copy = shutil.copy2\n"
            "shutil.copy2 = lambda *a, **k: (time.sleep(0.2), _copy(*a, **k))[1]\n"
            "sys.argv = sys.argv[1:]\nrunpy.run_path(sys.argv[0], run_name='__main__')\n")
    return subprocess.Popen([sys.executable, "-c", code, str(PREPARE), *map(str, args)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def stop_mid_copy(proc, out, signum):
    """Send `signum` once the child's DIR.tmp-<pid> holds a copied image; returns (code, stdout, stderr)."""
    tmp = out.with_name(f"{out.name}.tmp-{proc.pid}")
    t0 = time.monotonic()
    while not list(tmp.glob("images/*/*.png")):
        assert proc.poll() is None and time.monotonic() - t0 < 60, proc.communicate()
        time.sleep(0.01)
    proc.send_signal(signum)
    stdout, stderr = proc.communicate(timeout=60)
    return proc.returncode, stdout, stderr


def test_killed_copy_leaves_a_tree_that_the_next_run_removes(tmp_path):
    src, ds = make_folder(tmp_path / "src"), tmp_path / "DS"
    proc = slow_copy_run("folder", src, "--out", ds, "--copy")
    code, _, _ = stop_mid_copy(proc, ds, signal.SIGKILL)
    assert code == -signal.SIGKILL and leftovers(ds) == [f"DS.tmp-{proc.pid}"] and not ds.exists()
    p = prepare("folder", src, "--out", ds, "--copy")
    assert p.returncode == 0 and f"removed {ds}.tmp-{proc.pid}, left by a killed run" in p.stdout, p.stderr
    assert not leftovers(ds) and len(snapshot(src)) == 14


def test_a_kill_between_the_two_renames_puts_the_previous_dataset_back(tmp_path):
    src, ds = make_folder(tmp_path / "src"), tmp_path / "DS"
    assert prepare("folder", src, "--out", ds, "--copy").returncode == 0
    before = snapshot(ds)
    ds.rename(tmp_path / "DS.old-99999")  # as a kill between `DIR -> DIR.old` and `DIR.tmp -> DIR` leaves it
    p = prepare("folder", src, "--out", ds)
    refused(p, "exists; delete it or pass --overwrite")
    assert "put back" in p.stdout and snapshot(ds) == before and not leftovers(ds)


def test_a_live_run_is_not_disturbed_and_a_foreign_folder_is_left_alone(tmp_path):
    src, ds = make_folder(tmp_path / "src"), tmp_path / "DS"
    live = tmp_path / "DS.tmp-4242"
    live.mkdir()
    fd = os.open(live, os.O_RDONLY | os.O_DIRECTORY)
    fcntl.flock(fd, fcntl.LOCK_EX)  # as the running prepare.py holds its tree
    try:
        refused(prepare("folder", src, "--out", ds), "another data/prepare.py (pid 4242) is writing it")
        assert live.is_dir() and not ds.exists()
    finally:
        os.close(fd)
    (live / "mine.txt").write_text("not prepare's")  # no marker, no manifest: not a tree prepare made
    assert prepare("folder", src, "--out", ds).returncode == 0
    assert (live / "mine.txt").read_text() == "not prepare's"


def test_sigint_and_sigterm_end_prepare_with_one_line(tmp_path):
    src = make_folder(tmp_path / "src")
    for signum, code, name in ((signal.SIGINT, 130, "SIGINT"), (signal.SIGTERM, 143, "SIGTERM")):
        ds = tmp_path / f"DS_{name}"
        proc = slow_copy_run("folder", src, "--out", ds, "--copy")
        got, _, stderr = stop_mid_copy(proc, ds, signum)
        lines = stderr.strip().splitlines()
        assert got == code and len(lines) == 1 and lines[0].startswith(f"error: stopped by {name}"), stderr
        assert "Traceback" not in stderr and not ds.exists() and not leftovers(ds)
