"""The GPU path, tested on the CPU (issue 20): the device stated and checked, per-rank randomness,
no per-step host sync, localization without per-shape autotuning, ranks that agree."""
import json
import math
import os
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
from harness import COARSE_TINY, ROOT, error_line, run_script

import fgvc.dist as fdist
import fgvc.engine as engine
from fgvc import devices, interrupt
from fgvc.annotations import load_dataset
from fgvc.cam import localize
from fgvc.checkpoint import on_cpu
from fgvc.config import Runtime, TrainConfig
from fgvc.datasets import ImageDataset
from fgvc.errors import BadImagesError, CheckpointError, UserError
from fgvc.stages import build_model, model_args
from fgvc.transforms import ShortSideTransform, TrainTransform

no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present")


# ---------------------------------------------------------------- 1. the device, stated and checked

@no_cuda
def test_auto_is_the_cpu_with_its_reason_when_no_nvidia_gpu(monkeypatch):
    monkeypatch.setattr(devices, "nvidia_gpu", lambda: (False, None))
    assert devices.resolve("auto") == "cpu"
    line = devices.describe("cpu")
    assert line.startswith("device: cpu (CUDA not used: ") and f"torch {torch.__version__}" in line


@no_cuda
def test_a_gpu_torch_cannot_use_is_refused_unless_cpu_is_asked_for(monkeypatch):
    monkeypatch.setattr(devices, "nvidia_gpu", lambda: (True, "535.104.05"))
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    with pytest.raises(UserError) as e:
        devices.resolve("auto")
    msg = str(e.value)
    assert "driver 535.104.05" in msg and "CUDA 13.0" in msg and ">= 580" in msg
    assert "--index-url https://download.pytorch.org/whl/cu126" in msg and "--device cpu" in msg and "\n" not in msg
    with pytest.raises(UserError, match="--device cuda: CUDA is not usable here: an NVIDIA GPU is present"):
        devices.resolve("cuda")
    assert devices.resolve("cpu") == "cpu" and devices.describe("cpu").startswith("device: cpu (--device cpu)")


@no_cuda
def test_cuda_here_is_one_line_and_exit_2(tmp_path, run_cli):
    for script in ("coarse/train.py", "fine/train.py", "test.py"):
        code, _, err = run_cli(script, "--data", tmp_path, "--device", "cuda")
        assert code == 2 and error_line(err).startswith("error: --device cuda: CUDA is not usable here")
        assert len(err.strip().splitlines()) == 1


def test_compile_without_a_compiler_is_one_line_and_exit_2(tmp_path, run_cli, monkeypatch):
    """--compile (20.8) where inductor finds no C++ compiler: refused at start, before any data is read."""
    import torch._inductor.config

    monkeypatch.setattr(torch._inductor.config.cpp, "cxx", (None, "/nonexistent/g++"))
    for script in ("coarse/train.py", "fine/train.py", "test.py"):
        code, _, err = run_cli(script, "--data", tmp_path / "none", "--device", "cpu", "--compile")
        assert code == 2 and error_line(err).startswith("error: --compile: torch.compile cannot run here: no C++ compiler")
        assert len(err.strip().splitlines()) == 1


def test_every_stage_states_its_device(tmp_path, run_cli):
    from harness import make_dataset

    data = make_dataset(tmp_path / "ds", per_class=(3, 2, 2))
    tiny = [*COARSE_TINY, "--epochs", "1"]
    code, out, _ = run_cli("coarse/train.py", "--data", data, "--out", tmp_path / "c", *tiny, "--deterministic")
    assert code == 0 and "device: cpu (--device cpu), torch " in out
    assert not torch.are_deterministic_algorithms_enabled()  # cli.run put it back
    code, out, _ = run_cli("fine/train.py", "--data", data, "--coarse", tmp_path / "c", "--out", tmp_path / "f",
                           *[a for a in tiny if a not in ("--resize", "56", "--mask-size", "32")])
    assert code == 0 and "device: cpu (--device cpu)" in out
    code, out, _ = run_cli("test.py", "--data", data, "--coarse", tmp_path / "c", "--fine", tmp_path / "f", "--device", "cpu",
                           "--workers", "0", "--amp", "off", "--submission", tmp_path / "s.csv", "--deterministic")
    assert code == 0 and "device: cpu (--device cpu)" in out


# ---------------------------------------------------------------- 2. per-rank randomness

def test_step_seed_differs_by_rank_and_rank_0_is_the_single_process_seed():
    old = int(np.random.SeedSequence([7, 2, 5]).generate_state(1, np.uint64)[0] >> 1)  # before ranks counted
    assert engine.step_seed(7, 2, 5) == engine.step_seed(7, 2, 5, rank=0) == old
    assert len({engine.step_seed(7, 2, 5, rank=r) for r in range(8)}) == 8


def test_augmentation_differs_by_rank_and_rank_0_is_the_single_process_draw(dataset):
    _, splits = load_dataset(dataset, splits=("train",))
    ds = ImageDataset(splits["train"], TrainTransform(48, 56, fill=(124, 116, 104)), seed=3)
    single, r0, r1 = ds[(1, 4)][0], ds[(1, 4, 0)][0], ds[(1, 4, 1)][0]
    assert torch.equal(single, r0) and not torch.equal(r0, r1)
    assert torch.equal(ds[(1, 4, 1)][0], r1)  # reproducible per (seed, epoch, index, rank)


DRAW = """
import sys, torch
sys.path.insert(0, {root!r})
from fgvc import dist
from fgvc.engine import step_seed
dist.setup("cpu")
torch.manual_seed(step_seed(0, 1, 3, dist.rank()))
mask = torch.nn.Dropout2d(0.25)(torch.ones(1, 64, 2, 2))[0, :, 0, 0] > 0
draws = dist.all_gather_objects(mask.tolist())
if dist.is_main():
    open({out!r}, "w").write(repr(draws))
"""


def test_two_gloo_processes_draw_different_dropout(tmp_path):
    script = tmp_path / "draw.py"
    script.write_text(DRAW.format(root=str(ROOT), out=str(tmp_path / "draws.txt")))
    run_script("-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", script, timeout=300)
    a, b = eval((tmp_path / "draws.txt").read_text())
    torch.manual_seed(engine.step_seed(0, 1, 3))
    single = (torch.nn.Dropout2d(0.25)(torch.ones(1, 64, 2, 2))[0, :, 0, 0] > 0).tolist()
    assert a == single and a != b


# ---------------------------------------------------------------- 3. no per-step host sync

@pytest.fixture
def small(tmp_path):
    from harness import make_dataset

    return make_dataset(tmp_path / "small", per_class=(4, 1, 1))  # 12 train images: 6 steps of 2


def _config(**kw):
    c = dict(epochs=1, batch_size=2, eval_batch_size=4, lr=0.01, backbone_lr_ratio=1.0, amp="off", workers=0, seed=0,
             resume=False, save_every=0, max_bad_images=5, log_every=4, sync_bn=False, arch="resnet18", img_size=32,
             resize=40, freeze=True, world_size=1, optimizer="sgd", dropout=0.25, frozen_bn="train")
    c.update(kw)
    return TrainConfig.from_flags(c, "cpu")


def _fit(root, out, **kw):
    classes, splits = load_dataset(root, splits=("train",))
    train = ImageDataset(splits["train"], TrainTransform(32, 40, fill=(124, 116, 104)), 0)
    model = build_model("coarse", "resnet18", len(classes))
    engine.fit(model, train, None, config=_config(**kw), out_dir=out, class_ids=classes.ids,
               model_args=model_args("coarse", "resnet18", len(classes), True))
    return len(train)


def _count_syncs(monkeypatch, root, out, log_every):
    """Device-to-host reads and collectives made inside train_one_epoch."""
    calls = {"read": 0, "collective": 0}
    on = {"yes": False}

    def counted(kind, real):
        def f(*a, **k):
            if on["yes"]:
                calls[kind] += 1
            return real(*a, **k)
        return f

    for name in ("item", "tolist", "cpu", "__float__", "__int__", "__bool__"):
        monkeypatch.setattr(torch.Tensor, name, counted("read", getattr(torch.Tensor, name)))
    monkeypatch.setattr(torch.distributed, "all_reduce", counted("collective", torch.distributed.all_reduce))
    monkeypatch.setattr(fdist, "all_sum", counted("collective", fdist.all_sum))
    monkeypatch.setattr(fdist, "all_min", counted("collective", fdist.all_min))
    real_epoch = engine.train_one_epoch

    def epoch(*a, **k):
        on["yes"] = True
        try:
            return real_epoch(*a, **k)
        finally:
            on["yes"] = False

    monkeypatch.setattr(engine, "train_one_epoch", epoch)
    n = _fit(root, out, log_every=log_every)
    monkeypatch.undo()
    return calls, math.ceil(n / 2)


def test_a_training_step_does_not_wait_on_the_device(small, tmp_path, monkeypatch):
    # one read (all_sum's tolist) and one collective per window of --log-every steps, plus two reads
    # of host tensors when the epoch's loader starts (its base seed, the sampler's permutation)
    calls, steps = _count_syncs(monkeypatch, small, tmp_path / "a", log_every=3)
    assert steps == 6 and calls == {"read": 2 + 2, "collective": 2}, calls
    calls, _ = _count_syncs(monkeypatch, small, tmp_path / "b", log_every=1)
    assert calls == {"read": 2 + 6, "collective": 6}, calls


def test_a_readable_batch_goes_to_the_device_without_a_copy(small, tmp_path, monkeypatch):
    seen, sent = [], []
    real_loader, real_to_device = engine.make_loader, engine.to_device

    class Watched:
        def __init__(self, loader):
            self.loader, self.dataset = loader, loader.dataset

        def __iter__(self):
            for batch in self.loader:
                seen.append(batch[0].data_ptr())
                yield batch

    monkeypatch.setattr(engine, "make_loader", lambda *a, **k: Watched(real_loader(*a, **k)))
    monkeypatch.setattr(engine, "to_device", lambda x, d: (sent.append(x.data_ptr()), real_to_device(x, d))[1])
    _fit(small, tmp_path / "o")
    assert len(seen) == 6 and sent == seen


def test_a_non_finite_loss_is_found_at_its_step_between_reads(small, tmp_path, monkeypatch):
    from fgvc.errors import NonFiniteLoss

    real, calls = engine.F.cross_entropy, {"n": 0}

    def nan_at_step_2(*a, **k):
        calls["n"] += 1
        loss = real(*a, **k)
        return loss * float("nan") if calls["n"] == 2 else loss

    monkeypatch.setattr(engine.F, "cross_entropy", nan_at_step_2)
    with pytest.raises(NonFiniteLoss, match=r"at epoch 1, step 2 of the epoch \(global step 2; read after step 3\)"):
        _fit(small, tmp_path / "o", log_every=3)


# ---------------------------------------------------------------- 5. fp16: overflowing steps skipped, counted

def _fp16_on_the_cpu(monkeypatch, bad_calls):
    """fp16's GradScaler on the CPU (torch.amp.GradScaler("cpu"); autocast stays fp32, which fp16
    refuses on the CPU), with the loss made infinite at the training steps in `bad_calls` (1-based),
    and the head's weight recorded before and after every step."""
    from contextlib import nullcontext

    monkeypatch.setattr(engine, "autocast_for", lambda device, amp: nullcontext)
    real_ce, calls = engine.F.cross_entropy, {"n": 0}

    def ce(*a, **k):
        calls["n"] += 1
        loss = real_ce(*a, **k)
        return loss * float("inf") if calls["n"] in bad_calls else loss

    monkeypatch.setattr(engine.F, "cross_entropy", ce)
    real_step, steps = engine.train_step, []

    def step(model, *a, **k):
        head = engine.unwrap(model).param_groups()[1][0]
        before = head.detach().clone()
        loss, skipped = real_step(model, *a, **k)
        steps.append((bool(skipped), torch.equal(before, head.detach())))
        return loss, skipped

    monkeypatch.setattr(engine, "train_step", step)
    return steps


def test_fp16_skips_an_overflowing_step_counts_it_and_goes_on(small, tmp_path, monkeypatch, capsys):
    steps = _fp16_on_the_cpu(monkeypatch, bad_calls={2, 3, 5})
    _fit(small, tmp_path / "o", amp="fp16", epochs=2, log_every=3, max_overflow_steps=3)
    assert len(steps) == 12
    assert [s for s, _ in steps] == [i in (1, 2, 4) for i in range(12)]  # the scaler skipped exactly those steps
    assert all(same == skipped for skipped, same in steps)  # their weights unchanged; every other step moved them
    log = [json.loads(l) for l in (tmp_path / "o" / "log.jsonl").read_text().splitlines()]
    assert [r["fp16_skipped_steps"] for r in log] == [3, 0] and all(math.isfinite(r["train_loss"]) for r in log)
    out = capsys.readouterr().out
    assert "epoch 1/2: loss " in out and ", 3 fp16 steps skipped (overflow)" in out and ", 0 fp16 steps skipped" in out


def test_fp16_stops_after_max_overflow_steps_in_a_row(small, tmp_path, monkeypatch):
    from fgvc.errors import NonFiniteLoss

    _fp16_on_the_cpu(monkeypatch, bad_calls={1, 2, 4, 5, 6})  # 2 in a row (not yet), then 3: the third stops it
    with pytest.raises(NonFiniteLoss) as e:
        _fit(small, tmp_path / "o", amp="fp16", log_every=6, max_overflow_steps=3)
    msg = str(e.value)
    assert msg.startswith("fp16: 3 steps in a row skipped by the GradScaler") and "--max-overflow-steps 3" in msg
    assert "at epoch 1, step 6 of the epoch (global step 6; read after step 6); no checkpoint was written yet" in msg
    assert "\n" not in msg


def test_an_overflow_run_is_counted_across_epochs(small, tmp_path, monkeypatch):
    from fgvc.errors import NonFiniteLoss

    _fp16_on_the_cpu(monkeypatch, bad_calls={5, 6, 7, 8})  # the last two steps of epoch 1, the first two of epoch 2
    with pytest.raises(NonFiniteLoss, match=r"^fp16: 4 steps in a row .* at epoch 2, step 2 of the epoch \(global step 8;"):
        _fit(small, tmp_path / "o", amp="fp16", epochs=2, log_every=6, max_overflow_steps=4)


def test_bf16_and_fp32_still_stop_at_the_first_non_finite_loss(small, tmp_path, monkeypatch):
    from fgvc.errors import NonFiniteLoss

    steps = _fp16_on_the_cpu(monkeypatch, bad_calls={2})
    with pytest.raises(NonFiniteLoss, match=r"^non-finite loss \((inf|nan)\) at epoch 1, step 2 of the epoch"):
        _fit(small, tmp_path / "o", amp="off", log_every=3, max_overflow_steps=3)
    assert [s for s, _ in steps] == [False] * 3  # no scaler: nothing skipped, the weights moved by the inf step


# ---------------------------------------------------------------- 4. localization shapes; 6. ranks agree

def _coarse(root):
    classes, splits = load_dataset(root)
    return build_model("coarse", "resnet18", len(classes)), splits


def test_localization_does_not_autotune_per_shape(dataset, monkeypatch):
    model, splits = _coarse(dataset)
    flags, real = [], model.forward_cam
    monkeypatch.setattr(model, "forward_cam", lambda x: (flags.append(torch.backends.cudnn.benchmark), real(x))[1])
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", True)
    localize(model, ImageDataset(splits["val"], ShortSideTransform(56)), Runtime(torch.device("cpu"), 4),
             mask_size=(32, 32), threshold=0.5, use_labels=False)
    assert flags and not any(flags) and torch.backends.cudnn.benchmark is True


def test_bad_images_are_summed_over_processes_before_anyone_raises(dataset, monkeypatch):
    from harness import spoil

    model, splits = _coarse(dataset)
    spoil(splits["val"].path(0), "truncated")
    ds = ImageDataset(splits["val"], ShortSideTransform(56))
    run = Runtime(torch.device("cpu"), 4)
    localize(model, ds, run, mask_size=(32, 32), threshold=0.5, use_labels=False, max_bad=1)  # 1 here: within the limit
    real = fdist.all_sum
    monkeypatch.setattr(fdist, "all_sum", lambda v, d: [x + 1 for x in real(v, d)])  # another process saw 1 more
    with pytest.raises(BadImagesError, match="2 unreadable images, more than --max-bad-images 1"):
        localize(model, ds, run, mask_size=(32, 32), threshold=0.5, use_labels=False, max_bad=1)


def test_rank_0_decides_whether_there_is_a_run_to_resume(small, tmp_path, monkeypatch):
    monkeypatch.setattr(fdist, "broadcast_object", lambda obj: True)  # rank 0 sees a checkpoint this process does not
    with pytest.raises(CheckpointError, match="exists: pass --resume"):
        _fit(small, tmp_path / "o")


def test_checkpoint_state_is_moved_to_the_cpu():
    state = {"a": torch.ones(2, requires_grad=True), "b": [torch.zeros(1), (torch.ones(1), 3)], "c": "x"}
    moved = on_cpu(state)
    assert moved["a"].device.type == "cpu" and not moved["a"].requires_grad
    assert isinstance(moved["b"][1], tuple) and moved["b"][1][1] == 3 and moved["c"] == "x"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_n_in_one_process_is_the_current_device():
    n = torch.cuda.device_count() - 1
    assert fdist.setup(f"cuda:{n}", announce=False) == torch.device("cuda", n) and torch.cuda.current_device() == n


def test_amp_auto_is_bf16_only_where_it_is_native(monkeypatch):
    from fgvc.cli import resolve_amp

    assert resolve_amp("off", "cpu") == "off" and resolve_amp("bf16", "cpu") == "bf16"
    for cap, amp in (((7, 5), "fp16"), ((8, 0), "bf16"), ((9, 0), "bf16"), ((6, 1), "fp16")):
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None, cap=cap: cap)
        assert resolve_amp("auto", "cuda") == amp and resolve_amp("auto", "cuda:0") == amp, cap
    assert resolve_amp("fp16", "cuda") == "fp16" and resolve_amp("off", "cuda") == "off"
    monkeypatch.undo()
    # the CPU's own flags, read independently of torch: no AVX-512 at all -> fp32; native bf16 -> bf16
    info = Path("/proc/cpuinfo")
    if not info.is_file():
        pytest.skip("no /proc/cpuinfo to read the CPU's flags from")
    flags = set(next((l.split(":", 1)[1].split() for l in info.read_text().splitlines() if l.startswith("flags")), []))
    if not any(f.startswith("avx512") for f in flags):
        assert resolve_amp("auto", "cpu") == "off"
    elif {"avx512_bf16", "amx_bf16"} & flags:
        assert resolve_amp("auto", "cpu") == "bf16"
    else:
        pytest.skip("AVX-512 without native bf16: either answer is defensible")


# ---------------------------------------------------------------- 7. --deterministic

def test_deterministic_sets_torch_and_puts_it_back(monkeypatch):
    cudnn = torch.backends.cudnn
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    monkeypatch.setattr(cudnn, "benchmark", True)
    before = torch.are_deterministic_algorithms_enabled(), cudnn.deterministic
    with devices.determinism(False):  # the default: nothing changes
        assert (torch.are_deterministic_algorithms_enabled(), cudnn.deterministic) == before and cudnn.benchmark
    with devices.determinism(True):
        assert torch.are_deterministic_algorithms_enabled() and cudnn.deterministic and not cudnn.benchmark
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    assert (torch.are_deterministic_algorithms_enabled(), cudnn.deterministic) == before and cudnn.benchmark
    assert "CUBLAS_WORKSPACE_CONFIG" not in os.environ


def test_an_op_without_a_deterministic_kernel_is_one_line_and_exit_2(small, tmp_path, run_cli, monkeypatch):
    def step(*a, **k):  # Tensor.put_ has no deterministic kernel, on the CPU too
        torch.zeros(3).put_(torch.tensor([0]), torch.tensor([1.0]))

    monkeypatch.setattr(engine, "train_step", step)
    code, _, err = run_cli("coarse/train.py", "--data", small, "--out", tmp_path / "c", *COARSE_TINY, "--deterministic")
    line = error_line(err)
    assert code == 2 and line.startswith("error: --deterministic: put_ does not have a deterministic implementation")
    assert line.endswith("; run without --deterministic") and "Traceback" not in err


def test_a_deterministic_run_resumes_bit_for_bit(small, tmp_path, monkeypatch, sigterm_handlers):
    from fgvc.checkpoint import load_checkpoint

    with devices.determinism(True):
        torch.manual_seed(0)  # the model's initial weights
        _fit(small, tmp_path / "full", epochs=2)
        real, calls = engine.train_step, {"n": 0}

        def step(*a, **k):
            calls["n"] += 1
            if calls["n"] == 8:  # epoch 2, its 2nd step: saved and stopped at the next read (step 4)
                os.kill(os.getpid(), signal.SIGTERM)
            return real(*a, **k)

        monkeypatch.setattr(engine, "train_step", step)
        torch.manual_seed(0)
        with pytest.raises(interrupt.Stopped):
            _fit(small, tmp_path / "cut", epochs=2)
        saved = load_checkpoint(tmp_path / "cut" / "checkpoint.pt")
        assert (saved["epoch"], saved["step"], saved["step_in_epoch"]) == (1, 10, 4)
        monkeypatch.setattr(engine, "train_step", real)
        interrupt.install()  # a new process, as after a requeue
        _fit(small, tmp_path / "cut", epochs=2, resume=True)
    full, cut = (load_checkpoint(tmp_path / d / "checkpoint.pt")["model"] for d in ("full", "cut"))
    assert all(torch.equal(full[k], cut[k]) for k in full)
