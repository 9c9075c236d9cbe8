"""Rules of the code's shape that a change could quietly break (README, Code map)."""
import ast

from harness import ROOT

PACKAGE = sorted((ROOT / "fgvc").glob("*.py"))
MAX_POSITIONAL = 6


def functions(path):
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield node


def positional(fn):
    names = [a.arg for a in fn.args.posonlyargs + fn.args.args]
    return [n for n in names if n not in ("self", "cls")]


def test_no_function_of_the_package_takes_more_than_six_positional_parameters():
    long = [f"{p.name}:{fn.lineno} {fn.name}({', '.join(positional(fn))})"
            for p in PACKAGE for fn in functions(p) if len(positional(fn)) > MAX_POSITIONAL]
    assert not long, "use keyword-only parameters (after *) or a config (fgvc/config.py):\n" + "\n".join(long)


def imported_modules(path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            yield from (a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.module.split(".")[0]


def test_only_the_backbone_adapter_knows_a_model_library():
    knows = {p.name for p in PACKAGE if {"pretrainedmodels", "timm"} & set(imported_modules(p))}
    assert knows == {"backbones.py"}


def test_the_checker_sees_a_long_signature(tmp_path):
    """The rule above can fail: a function with seven positional parameters is found."""
    bad = tmp_path / "bad.py"
    bad.write_text("def f(a, b, c, d, e, f, g, *, h=1):\n    pass\n\nclass C:\n    def m(self, a, b, c, d, e, f):\n        pass\n")
    assert [(fn.name, len(positional(fn))) for fn in functions(bad)] == [("f", 7), ("m", 6)]
