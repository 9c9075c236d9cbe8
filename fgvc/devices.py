"""Which device a stage runs on, stated at start and checked before anything is read or written.

`resolve(arg)` turns --device (auto, cpu, cuda, cuda:N) into a device string or a one-line
UserError (exit 2): `--device cuda` where CUDA is unusable ends at once; with the default (auto)
a machine that has an NVIDIA GPU which this torch cannot use refuses to fall back to the CPU,
naming the driver / CUDA mismatch and what to install (`--device cpu` runs on the CPU on purpose).
`compile_problem(device)` says why --compile cannot run (checked at start too).
`describe(device)` is the line every stage prints: the GPU's name, memory, compute capability,
torch and CUDA versions, or "cpu" with the reason CUDA is not used.
"""
import glob
import os
import shutil
import subprocess
from contextlib import contextmanager

import torch

from .errors import UserError

# The NVIDIA driver the pinned torch wheel's CUDA needs (CUDA 13.x: >= 580), and the one line that
# installs a build of the same torch for an older CUDA (CUDA 12.6 runs on drivers >= 525).
DRIVER_FOR_CUDA = {"13": 580, "12": 525}
OLDER_CUDA_INSTALL = (f"pip install torch=={torch.__version__.split('+')[0]} --index-url https://download.pytorch.org/whl/cu126")

_reason = {"text": ""}  # why the resolved device was chosen (for describe)


def nvidia_gpu():
    """(present, driver version or None): an NVIDIA GPU on this machine (a /dev/nvidia<N> node or
    a working nvidia-smi), whether or not torch can use it."""
    driver = None
    try:
        with open("/proc/driver/nvidia/version") as f:
            first = f.readline()
        driver = next((w for w in first.split() if w[:1].isdigit() and "." in w), None)
    except OSError:
        pass
    nodes = glob.glob("/dev/nvidia[0-9]*")
    if not nodes and shutil.which("nvidia-smi"):
        try:
            p = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                               capture_output=True, text=True, timeout=20)
            lines = [l.strip() for l in p.stdout.splitlines() if l.strip()]
            if p.returncode == 0 and lines:
                return True, driver or lines[0]
        except (OSError, subprocess.SubprocessError):
            pass
    return bool(nodes), driver


def cuda_problem():
    """Why torch cannot use CUDA here, in one clause (None when it can)."""
    if torch.cuda.is_available():
        return None
    built = torch.version.cuda
    present, driver = nvidia_gpu()
    if built is None:
        return f"this torch {torch.__version__} is a CPU-only build" + (" although an NVIDIA GPU is present" if present else "")
    if not present:
        return "no NVIDIA GPU found (no /dev/nvidia*, no working nvidia-smi)"
    need = DRIVER_FOR_CUDA.get(built.split(".")[0])
    have = f"driver {driver}" if driver else "a driver of unknown version"
    wants = f"; it needs a driver >= {need}" if need else ""
    return (f"an NVIDIA GPU is present ({have}) but torch {torch.__version__} is built for CUDA {built} and cannot use it{wants}: "
            f"install a newer driver, or a torch build for an older CUDA ({OLDER_CUDA_INSTALL})")


def resolve(arg):
    """--device -> 'cpu', 'cuda' or 'cuda:N'; a UserError (one line, exit 2) when it cannot run."""
    arg = "auto" if arg is None else str(arg)
    if arg == "auto":
        problem = cuda_problem()
        if problem is None:
            _reason["text"] = "--device auto"
            return "cuda"
        if nvidia_gpu()[0]:
            raise UserError(f"--device auto: {problem}; pass --device cpu to run on the CPU anyway")
        _reason["text"] = f"CUDA not used: {problem}"
        return "cpu"
    try:
        d = torch.device(arg)
    except (RuntimeError, ValueError):
        raise UserError(f"--device {arg!r}: not a device (auto, cpu, cuda, cuda:N)") from None
    if d.type not in ("cpu", "cuda"):
        raise UserError(f"--device {arg}: only cpu and cuda are supported")
    if d.type == "cuda":
        problem = cuda_problem()
        if problem is not None:
            raise UserError(f"--device {arg}: CUDA is not usable here: {problem}; use --device cpu")
        if d.index is not None and d.index >= torch.cuda.device_count():
            raise UserError(f"--device {arg}: only {torch.cuda.device_count()} CUDA devices")
    _reason["text"] = f"--device {arg}"
    return arg


def compile_problem(device):
    """Why torch.compile (inductor) cannot run on `device` here, in one clause (None when it can):
    dynamo unsupported by this Python, no C++ compiler for the CPU kernels, no triton for CUDA."""
    import torch._dynamo

    if not torch._dynamo.is_dynamo_supported():
        return f"torch {torch.__version__} has no torch.compile on this Python"
    if torch.device(device).type == "cuda":
        from torch.utils._triton import has_triton

        return None if has_triton() else "triton, which inductor needs for CUDA kernels, is not installed"
    from torch._inductor.cpp_builder import get_cpp_compiler
    from torch._inductor.exc import InvalidCxxCompiler

    try:
        get_cpp_compiler()
    except InvalidCxxCompiler:
        return "no C++ compiler for inductor's CPU kernels (it runs $CXX, else g++): install g++ or set CXX"
    return None


def capability(device):
    """(major, minor) compute capability of a CUDA device, None elsewhere."""
    device = torch.device(device)
    return torch.cuda.get_device_capability(device) if device.type == "cuda" else None


# cuBLAS is deterministic only with a fixed workspace (CUDA >= 10.2; torch raises without it)
CUBLAS_WORKSPACE = ":4096:8"


@contextmanager
def determinism(on):
    """--deterministic, inside: cuDNN's deterministic algorithms and no autotuning (cudnn.deterministic,
    cudnn.benchmark off; inference.prepare_model then leaves it off), torch.use_deterministic_algorithms(True)
    (an op with no deterministic kernel raises instead of running: cli.run says so in one line), and
    CUBLAS_WORKSPACE_CONFIG (unless already set). Off: nothing changes. Put back on the way out."""
    if not on:
        yield
        return
    cudnn = torch.backends.cudnn
    was = torch.are_deterministic_algorithms_enabled(), cudnn.deterministic, cudnn.benchmark, os.environ.get("CUBLAS_WORKSPACE_CONFIG")
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)
    torch.use_deterministic_algorithms(True)
    cudnn.deterministic, cudnn.benchmark = True, False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(was[0])
        cudnn.deterministic, cudnn.benchmark = was[1], was[2]
        if was[3] is None:
            os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)


def describe(device, world=1):
    """One line: where this stage runs."""
    device = torch.device(device)
    procs = f", {world} processes (one device each)" if world > 1 else ""
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        return (f"device: {device} ({p.name}, {p.total_memory / 2**30:.1f} GiB, compute capability {p.major}.{p.minor}), "
                f"torch {torch.__version__}, CUDA {torch.version.cuda}{procs}")
    why = _reason["text"] or "CUDA not used"
    return f"device: cpu ({why}), torch {torch.__version__}, {torch.get_num_threads()} threads{procs}"
