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


# ---------------------------------------------------------------- one config (fgvc/config.py)

SCRIPTS = [ROOT / "coarse" / "train.py", ROOT / "fine" / "train.py", ROOT / "test.py"]
TRIVIAL = (None, 0, 1, True, False, "")


def flag_defaults():
    """{flag name: set of its defaults in any command} (fgvc/config.py)."""
    from fgvc.config import CONFIGS

    out = {}
    for c in CONFIGS:
        for f in c.flags():
            d = f.default_value()
            out.setdefault(f.name, set()).add(tuple(d) if isinstance(d, list) else d)
    return out


def repeated_defaults(paths, defaults):
    """Where code outside the config writes a flag's default again: a parameter named like a flag
    with a literal default equal to the flag's, or `<dict>.get("flag", <its default>)`."""
    found = []
    for p in paths:
        for node in ast.walk(ast.parse(p.read_text())):
            pairs = []
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                a = node.args
                pos = a.posonlyargs + a.args
                pairs = [(x.arg, d) for x, d in zip(pos[len(pos) - len(a.defaults):], a.defaults)]
                pairs += [(x.arg, d) for x, d in zip(a.kwonlyargs, a.kw_defaults) if d is not None]
            elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get" and len(node.args) == 2:
                if isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
                    pairs = [(node.args[0].value, node.args[1])]
            for name, d in pairs:
                try:
                    value = ast.literal_eval(d)
                except ValueError:
                    continue  # a name: the default comes from somewhere, once
                value = tuple(value) if isinstance(value, list) else value
                if name in defaults and value not in TRIVIAL and value in defaults[name]:
                    found.append(f"{p.relative_to(ROOT) if p.is_relative_to(ROOT) else p.name}:{node.lineno} {name}={value!r}")
    return found


def test_no_flag_default_is_written_outside_the_config():
    paths = [p for p in PACKAGE if p.name != "config.py"] + SCRIPTS
    found = repeated_defaults(paths, flag_defaults())
    assert not found, "take the default from fgvc/config.py (or make the parameter required):\n" + "\n".join(found)


def test_only_the_config_declares_flags_and_their_ranges():
    """No argparse flag, no Range and no range message outside fgvc/config.py, in the package and the stages."""
    found = []
    for p in [p for p in PACKAGE if p.name != "config.py"] + SCRIPTS + [ROOT / "bench" / "ablate.py"]:
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.Call):
                f = node.func
                called = f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", "")
                if called in ("add_argument", "Range"):
                    found.append(f"{p.relative_to(ROOT)}:{node.lineno} {called}(...)")
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and ("must be >" in node.value or "must be <" in node.value):
                found.append(f"{p.relative_to(ROOT)}:{node.lineno} {node.value!r}")
    assert not found, "declare the flag in fgvc/config.py:\n" + "\n".join(found)


def test_the_default_checker_finds_a_repeated_default(tmp_path):
    """The rule above can fail: a parameter or a .get that writes a flag's default again is found;
    a default taken from a name, or a trivial one, is not."""
    bad = tmp_path / "bad.py"
    bad.write_text("def f(x, dropout=0.25, *, weight_decay=5e-4, seed=0, lr=LR):\n"
                   "    return args.get('img_size', 448), args.get('img_size', 224)\n")
    assert [f.split(" ", 1)[1] for f in repeated_defaults([bad], flag_defaults())] == [
        "dropout=0.25", "weight_decay=0.0005", "img_size=448"]


def test_no_code_outside_the_registry_compares_a_stage_name():
    """Stage kinds are looked up in fgvc/stages.py, never compared as strings (`kind == "fine"`)."""
    from fgvc.stages import STAGES

    found = []
    for p in [p for p in PACKAGE if p.name != "stages.py"] + SCRIPTS + [ROOT / "bench" / "ablate.py"]:
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.Compare):
                strings = [c.value for c in [node.left, *node.comparators] if isinstance(c, ast.Constant)]
                if set(strings) & set(STAGES):
                    found.append(f"{p.relative_to(ROOT)}:{node.lineno} {ast.unparse(node)}")
    assert not found, "look the stage up in fgvc.stages.STAGES:\n" + "\n".join(found)
