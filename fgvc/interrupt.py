"""Stopping a run cleanly: Ctrl-C (SIGINT), and SIGTERM / SIGUSR1, what SLURM and Kubernetes send
before they kill a job (SLURM's `--signal=USR1@120` sends SIGUSR1 ahead of the end of the time limit).

Inside the training loop (`polling()`), SIGTERM and SIGUSR1 only set a flag: the engine finishes
the step, saves a checkpoint at that step, and stops with exit code 143; `--resume` continues from
that step (under torchrun the ranks agree on the step through the per-step reduction). Anywhere
else they stop the run at once (exit 143), and so does SIGINT (exit 130): the atomic writers leave
the previous files whole. In every case the CLI prints one line: where the run stopped and which
checkpoint is on disk.
"""
import multiprocessing
import signal
from contextlib import contextmanager

EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143, signal.SIGUSR1: 143}
PREEMPT = (signal.SIGTERM, signal.SIGUSR1)

_state = {"signal": None, "polling": False, "where": None, "saved": None}


class Stopped(BaseException):
    """The run was stopped by a signal (BaseException, like KeyboardInterrupt: no `except
    Exception` swallows it). `code` is the exit code."""

    def __init__(self, signum, note=""):
        self.signum, self.code = signum, EXIT_CODES.get(signum, 143)
        super().__init__(note)


def _on_preempt(signum, frame):
    _state["signal"] = signum
    if not _state["polling"]:
        raise Stopped(signum)


def install():
    """SIGTERM and SIGUSR1 handlers of the main process, and a fresh state (call at start)."""
    _state.update(signal=None, polling=False, where=None, saved=None)
    for s in PREEMPT:
        signal.signal(s, _on_preempt)


def worker_init(_worker_id=None):
    """Data loader processes ignore SIGTERM / SIGUSR1: the main process decides when to stop.
    So nothing but SIGKILL ends them: the main process ends them with `end_workers()`."""
    for s in PREEMPT:
        signal.signal(s, signal.SIG_IGN)


def end_workers(timeout=5.0):
    """Kill (SIGKILL) every child process still alive (the data loader workers), then join them.

    Called whenever a command ends. After an error the loader that owns the workers may never be
    shut down (the traceback keeps it alive), and the workers ignore SIGTERM, so multiprocessing's
    own exit handler (terminate, then join without a timeout) would wait for them for ever.
    SIGCHLD goes back to its default first: the loader's handler would report the kill as a crash."""
    children = multiprocessing.active_children()
    if not children:
        return
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    for p in children:
        try:
            p.kill()
        except (OSError, ValueError, AttributeError):
            pass
    for p in children:
        p.join(timeout)


@contextmanager
def polling():
    """Within: SIGTERM / SIGUSR1 set a flag that the caller checks with `requested()`."""
    before = _state["polling"]
    _state["polling"] = True
    try:
        yield
    finally:
        _state["polling"] = before


def requested():
    """The preemption signal received so far, or None."""
    return _state["signal"]


def progress(where=None, saved=None):
    """Record where the run is (e.g. 'epoch 2/32, step 40 of 120') and the last checkpoint saved."""
    if where is not None:
        _state["where"] = where
    if saved is not None:
        _state["saved"] = saved


def forget_saved():
    """No checkpoint of this run on disk any more (the preflight's temporary one is removed)."""
    _state["saved"] = None


def stop_message(signum):
    """One line: what stopped the run, where, what is on disk and how to go on."""
    name = signal.Signals(signum).name
    where = f" at {_state['where']}" if _state["where"] else ""
    if _state["saved"]:
        tail = f"; checkpoint on disk: {_state['saved']}; run the same command with --resume to continue"
    else:
        tail = "; no checkpoint of this run on disk; earlier outputs are left as they were"
    return f"stopped by {name}{where}{tail}"
