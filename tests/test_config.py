"""The one config (fgvc/config.py): argparse built from it, checkpoints' args rebuilt into it (old
ones too) and replayed as a command line, and docs/config.md generated from it."""
import pytest
from harness import ROOT, error_line, stage

from fgvc import cli, config
from fgvc.config import CONFIGS, CoarseConfig, FineConfig, TestConfig
from fgvc.errors import UserError


def parse(cfg, *argv):
    return cli.parser(cfg).parse_args([str(a) for a in argv])


def test_docs_config_md_is_the_config():
    """docs/config.md lists every flag as the config has it: regenerate with `python3 -m fgvc.config > docs/config.md`."""
    assert (ROOT / "docs" / "config.md").read_text() == config.markdown() + "\n"
    text = (ROOT / "docs" / "config.md").read_text()
    assert all(f"`{f.option}" in text for c in CONFIGS for f in c.flags())


def test_the_stage_scripts_parse_with_the_config():
    for script, cfg in (("coarse/train.py", CoarseConfig), ("fine/train.py", FineConfig), ("test.py", TestConfig)):
        args = vars(stage(script).get_args_parser().parse_args([]))
        assert list(args) == [f.name for f in cfg.flags()]
        assert args == {k: (list(v) if cfg[k].nargs == "*" else v) for k, v in cfg.defaults().items()}


def test_the_defaults_are_the_originals():
    """Spelled out here from the original's code (SEED.md), not read from the config."""
    c = CoarseConfig.defaults()
    assert (c["arch"], c["img_size"], c["epochs"], c["batch_size"], c["lr"], c["optimizer"]) == ("senet154", 448, 32, 14, 0.04, "sgd")
    assert (c["weight_decay"], c["dropout"], c["rotation"], c["frozen_bn"]) == (5e-4, 0.25, "original", "train")
    assert CoarseConfig.from_args({}).resize == 512 and config.RECIPE[True] == {"freeze": True, "backbone_lr_ratio": 0.1}
    f = FineConfig.defaults()
    assert (f["crop_k"], f["crop_centre"]) == (2.0, "original")
    t = TestConfig.defaults()
    assert (t["tau"], t["model"], list(t["tta_factors"]), list(t["tta_mirror_factors"])) == (
        "1", "fine", [0.5, 0.5, 1, 1, 2, 2, 4, 4], [0.25, 0.25, 1, 1, 2, 2, 4, 4])


def test_a_config_replays_as_its_own_command_line():
    argv = ["--arch", "resnet18", "--pretrained", "none", "--img-size", "64", "--crop-centre", "on-mask", "--crop-k", "1.5",
            "--no-freeze", "--keep-epochs", "--lr", "0.0123", "--weight-decay", "1e-05", "--eval-batch-size", "3"]
    args = parse(FineConfig, *argv)
    again = parse(FineConfig, *FineConfig.argv(args))
    assert vars(again) == vars(args)
    changed = parse(FineConfig, *FineConfig.argv(args, crop_centre="original", resume=False, keep_epochs=False))
    assert (changed.crop_centre, changed.keep_epochs, changed.crop_k, changed.freeze) == ("original", False, 1.5, False)
    listed = parse(TestConfig, "--tta-factors", "1", "2", "--tta-mirror-factors")
    assert vars(parse(TestConfig, *TestConfig.argv(listed))) == vars(listed)


def test_an_old_checkpoints_args_get_the_values_those_runs_had():
    """Fine checkpoints older than --crop-centre were trained with the on-mask rule; coarse ones
    older than a recorded --resize used 512; a flag a run recorded is kept as recorded."""
    old = {"arch": "resnet18", "img_size": 64, "epochs": 1, "batch_size": 8, "lr": 0.1, "seed": 3}
    fine = FineConfig.from_args(old)
    assert fine.crop_centre == "on-mask" and fine.img_size == 64 and fine.seed == 3 and fine.dropout == 0.25
    assert FineConfig.from_args({**old, "crop_centre": "original"}).crop_centre == "original"
    assert CoarseConfig.from_args({**old, "resize": None}).resize == 512
    assert CoarseConfig.from_args({**old, "resize": 300, "world_size": 2}).world_size == 2  # not a flag, kept


def test_resume_keeps_are_declared_by_the_flags():
    keeps = FineConfig.resume_keeps()
    assert {"arch", "img_size", "epochs", "batch_size", "lr", "seed", "crop_k", "crop_centre", "world_size"} <= set(keeps)
    assert "resize" not in keeps and "resize" in CoarseConfig.resume_keeps() and "crop_k" not in CoarseConfig.resume_keeps()
    assert not {"workers", "device", "save_every", "resume", "out"} & set(keeps)


@pytest.mark.parametrize("cfg, argv, message", [
    (TestConfig, ["--tau", "abc"], "--tau 'abc': a number or 'auto'"),
    (TestConfig, ["--tau", "nan"], "--tau nan: not a finite number"),
    (CoarseConfig, ["--mask-size", "32", "5000"], "--mask-size 5000: must be >= 32 and <= 4096"),
    (FineConfig, ["--dropout", "-0.1"], "--dropout -0.1: must be >= 0 and <= 1"),
])
def test_ranges_come_from_the_config(cfg, argv, message):
    with pytest.raises(UserError) as e:
        cli.validate(parse(cfg, *argv), cfg)
    assert str(e.value) == message
    cli.validate(parse(cfg), cfg)  # the defaults lie in their ranges


def test_help_says_each_default():
    text = cli.parser(FineConfig).format_help().replace("\n", " ")
    text = " ".join(text.split())
    assert "(default: 0.25)" in text and "(default: 5e-4)" not in text and "(default: 0.0005)" in text
    assert "(default: 2 x --batch-size)" in text


# ---------------------------------------------------------------- every range refused at start, through the command line

BAD_FLAGS = [
    ("test.py", ["--tau", "nan"], "--tau nan: not a finite number"),
    ("test.py", ["--tau", "inf"], "--tau inf: not a finite number"),
    ("test.py", ["--tau", "1e400"], "--tau inf: not a finite number"),
    ("test.py", ["--tau", "-1"], "--tau -1: must be >= 0"),
    ("test.py", ["--tta-factors", "1", "0"], "--tta-factors 0: must be > 0"),
    ("coarse/train.py", ["--localize-only", "--cam-threshold", "2"], "--cam-threshold 2: must be > 0 and <= 1"),
    ("coarse/train.py", ["--localize-only", "--cam-threshold", "nan"], "--cam-threshold nan: not a finite number"),
    ("coarse/train.py", ["--localize-only", "--cam-threshold", "-1"], "--cam-threshold -1: must be > 0 and <= 1"),
    ("coarse/train.py", ["--epochs", "0"], "--epochs 0: must be >= 1"),
    ("coarse/train.py", ["--batch-size", "0"], "--batch-size 0: must be >= 1"),
    ("coarse/train.py", ["--eval-batch-size", "0"], "--eval-batch-size 0: must be >= 1"),
    ("coarse/train.py", ["--workers", "-1"], "--workers -1: must be >= 0"),
    ("coarse/train.py", ["--img-size", "0"], "--img-size 0: must be >= 16"),
    ("coarse/train.py", ["--lr", "nan"], "--lr nan: not a finite number"),
    ("coarse/train.py", ["--dropout", "1.5"], "--dropout 1.5: must be >= 0 and <= 1"),
    ("coarse/train.py", ["--mask-size", "16", "16"], "--mask-size 16: must be >= 32 and <= 4096"),
    ("coarse/train.py", ["--device", "foo"], "--device 'foo': not a device (auto, cpu, cuda, cuda:N)"),
    ("fine/train.py", ["--crop-k", "0"], "--crop-k 0: must be > 0"),
    ("coarse/train.py", ["--epochs", "two"], "argument --epochs: invalid int value: 'two'"),
]


@pytest.mark.parametrize("script,flags,message", BAD_FLAGS, ids=[" ".join(f[1]) for f in BAD_FLAGS])
def test_impossible_flags_are_refused_at_start(tmp_path, run_cli, script, flags, message):
    out = tmp_path / "out"
    where = ["--submission", tmp_path / "s.csv"] if script == "test.py" else ["--out", out]
    code, _, err = run_cli(script, "--data", tmp_path / "nowhere", *where, *flags)
    assert code == 2 and error_line(err) == f"error: {message}", err
    assert len(err.strip().splitlines()) == 1  # no usage block, no traceback
    assert not out.exists() and not (tmp_path / "s.csv").exists()


def test_resume_sees_a_tuple_flag_recorded_as_a_list_as_unchanged():
    """A checkpoint holds --mask-size as the list argparse made; the run resuming it has the tuple."""
    from fgvc.checkpoint import check_resume

    saved, now = {"mask_size": [64, 64], "cam_threshold": 0.7}, {"mask_size": (64, 64), "cam_threshold": 0.5}
    assert check_resume(saved, "ck.pt", now, essential=()) == ["--cam-threshold 0.7 -> 0.5"]
    assert check_resume(saved, "ck.pt", {**now, "mask_size": (32, 32)}, essential=())[1] == "--mask-size [64, 64] -> (32, 32)"
