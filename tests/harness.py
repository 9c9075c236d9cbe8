"""Running the stage scripts in-process, as their command lines do (no interpreter start-up per
case). The `run_cli` fixture (conftest.py) wraps `run_stage` with pytest's output capture."""
import importlib.util
import sys

from fgvc import cli

ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]
_STAGES = {}


def stage(script):
    """The stage script as a module (its main() and get_args_parser()), loaded once."""
    if script not in _STAGES:
        spec = importlib.util.spec_from_file_location("stage_" + script.replace("/", "_")[:-3], ROOT / script)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        _STAGES[script] = module
    return _STAGES[script]


def call(script, *args):
    """Run a stage in-process without the CLI wrapper (fixtures); errors propagate."""
    s = stage(script)
    s.main(s.get_args_parser().parse_args([str(a) for a in args]))


def run_stage(script, *args):
    """Run a stage through cli.run with sys.argv set, as the command line does; returns its exit code."""
    s = stage(script)
    argv = sys.argv
    sys.argv = [script, *map(str, args)]
    try:
        cli.run(s.main, s.get_args_parser())
        return 0
    except SystemExit as e:
        return e.code
    finally:
        sys.argv = argv


def error_line(err):
    """The one `error: ...` line of a failed run (tqdm may have written progress before it)."""
    lines = [l for l in err.replace("\r", "\n").splitlines() if l.startswith("error: ")]
    assert len(lines) == 1, err[-2000:]
    return lines[0]
