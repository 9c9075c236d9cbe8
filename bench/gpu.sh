#!/usr/bin/env bash
# GPU benchmark for a machine with one CUDA device and only this repository: SENet154 at 448 px,
# training images/s (fp32, bf16, bf16 + channels_last), loader, localization and test-time
# images/s, peak GPU memory, and the preflight's projection of the whole method (coarse, fine,
# test.py) for senet154 and timm/tf_efficientnet_lite0 at 448 px -> bench/gpu_results.json.
# Under 8 minutes, unattended.
#
#   bash bench/gpu.sh            # on the GPU machine
#   bash bench/gpu.sh --smoke    # dry run anywhere (tiny sizes; checks the script, not the numbers)
#
# Python: .venv/bin/python if present; else python3 if it has the requirements; else a new .venv
# from requirements.txt (needs the package index; part of the 8 minutes).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -x .venv/bin/python ]; then
    PY=.venv/bin/python
elif python3 -c "import bench.gpu" 2>/dev/null; then  # the imports bench/gpu.py itself needs
    PY=python3
else
    python3 -m venv .venv
    .venv/bin/python -m pip install -q --upgrade pip
    .venv/bin/python -m pip install -q -r requirements.txt
    PY=.venv/bin/python
fi
# the measuring itself is budgeted at 7 minutes (no preflight starts after 400 s: bench/gpu.py
# --budget-s); results are written after every phase
exec timeout --signal=INT --kill-after=30 420 "$PY" bench/gpu.py "$@"
