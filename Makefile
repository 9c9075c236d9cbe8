# make demo   the whole method on the embedded toy dataset (CPU, small architecture)
# make test   the test suite (what CI runs)
# make bench  the performance harness (bench/results.json)
# Each creates .venv from requirements.txt the first time.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.requirements-installed
TOY := data/toy
RUN := runs/toy
# Demo model: resnet18 from scratch at 128 px (the defaults stay the original's senet154 at 448 px).
MODEL := --arch resnet18 --pretrained none --img-size 128 --device cpu --workers 2
TRAIN := $(MODEL) --batch-size 32 --lr 0.1 --backbone-lr-ratio 1 --no-freeze --save-every 0

.PHONY: demo test bench clean-demo

$(STAMP): requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -r requirements.txt
	touch $(STAMP)

demo: $(STAMP)
	rm -rf $(RUN)
	$(PY) data/toy.py --out $(TOY)
	$(PY) fig/distribute.py --data $(TOY)
	$(PY) coarse/train.py --data $(TOY) --out $(RUN)/coarse $(TRAIN) --resize 146 --epochs 12
	$(PY) fine/train.py --data $(TOY) --out $(RUN)/fine --coarse $(RUN)/coarse $(TRAIN) --epochs 12
	$(PY) test.py --data $(TOY) --coarse $(RUN)/coarse --fine $(RUN)/fine --device cpu --workers 2 --eval

test: $(STAMP)
	$(PY) -m pytest -q tests

bench: $(STAMP)
	$(PY) bench/run.py
