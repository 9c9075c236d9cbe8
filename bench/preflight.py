"""Is the preflight's projection honest? coarse/train.py --preflight against a real one-epoch run
at the same settings (resnet18 on the toy dataset, the CPU), one after the other:

    flock /work/wt/bench.lock .venv/bin/python bench/preflight.py     # about 10 minutes on 2 cores

Prints the projected epoch (preflight.json's projected_epoch_s), the measured one (log.jsonl's
time_s of the epoch: training, validation, the save) and their ratio (README: within 25 %).
"""
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = ["--data", str(ROOT / "data" / "toy"), "--arch", "resnet18", "--pretrained", "none", "--img-size", "112", "--resize", "128",
            "--batch-size", "14", "--workers", "2", "--amp", "off", "--device", "cpu"]


def main():
    if not (ROOT / "data" / "toy" / "train2019.json").is_file():
        sys.exit("bench/preflight.py: no data/toy (make toy)")
    with tempfile.TemporaryDirectory() as tmp:
        pre, real = Path(tmp) / "pre", Path(tmp) / "real"
        script = str(ROOT / "coarse" / "train.py")
        subprocess.run([sys.executable, script, *SETTINGS, "--out", str(pre), "--preflight", "--preflight-steps", "20"], check=True)
        subprocess.run([sys.executable, script, *SETTINGS, "--out", str(real), "--epochs", "1"], check=True)
        projected = json.loads((pre / "preflight.json").read_text())["projected_epoch_s"]
        measured = json.loads((real / "log.jsonl").read_text().splitlines()[0])["time_s"]
    print(json.dumps({"projected_epoch_s": projected, "measured_epoch_s": measured, "ratio": round(projected / measured, 3)}))


if __name__ == "__main__":
    main()
