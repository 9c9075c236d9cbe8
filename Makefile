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
# Demo model: resnet18 from scratch at 128 px with AdamW, 10 epochs for the coarse stage and 20 for
# the fine one (the defaults stay the original's: senet154 from ImageNet weights at 448 px, SGD, 32
# epochs). Nothing is pretrained here, so nothing is frozen and the backbone learns at the head's
# rate. The fine model needs the longer run: at 10 epochs it has barely learnt the rare classes and
# the prior correction only trades errors between groups (README, "The demo's numbers").
MODEL := --arch resnet18 --pretrained none --img-size 128 --device cpu --workers 2
TRAIN := $(MODEL) --batch-size 32 --optimizer adamw --lr 0.003 --weight-decay 0.05 --backbone-lr-ratio 1 --no-freeze --save-every 0

.PHONY: demo test bench clean-demo

$(STAMP): requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -r requirements.txt
	$(PY) -m pip install --no-deps $$(sed -n 's/^# no-deps: *\([^ ]*\).*/\1/p' requirements.txt)
	touch $(STAMP)

demo: $(STAMP)
	rm -rf $(RUN)
	$(PY) data/toy.py --out $(TOY) --overwrite
	$(PY) fig/distribute.py --data $(TOY)
	$(PY) coarse/train.py --data $(TOY) --out $(RUN)/coarse $(TRAIN) --epochs 10 --resize 146
	$(PY) fine/train.py --data $(TOY) --out $(RUN)/fine --coarse $(RUN)/coarse $(TRAIN) --epochs 20
	$(PY) test.py --data $(TOY) --coarse $(RUN)/coarse --fine $(RUN)/fine --device cpu --workers 2 --eval --tau auto

test: $(STAMP)
	$(PY) -m pytest -q tests

bench: $(STAMP)
	$(PY) bench/run.py
