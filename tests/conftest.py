"""Shared fixtures: tiny datasets in the iNat 2019 layout, written in a few milliseconds, and the
stage scripts run in-process. What they are made of is in harness.py, where tests import it from."""
import signal

import pytest
from harness import make_dataset, run_stage

from fgvc import interrupt


@pytest.fixture
def dataset(tmp_path):
    return make_dataset(tmp_path / "ds")


@pytest.fixture
def run_cli(capsys):
    """Run a stage in-process through cli.run, as the command line does; returns (exit code, stdout, stderr)."""

    def go(script, *args):
        capsys.readouterr()
        code = run_stage(script, *args)
        out, err = capsys.readouterr()
        return code, out, err

    return go


@pytest.fixture
def sigterm_handlers():
    """The stages' SIGTERM / SIGUSR1 handlers for one test, the defaults back afterwards."""
    interrupt.install()
    yield
    for s in interrupt.PREEMPT:
        signal.signal(s, signal.SIG_DFL)
