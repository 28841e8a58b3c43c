# mrrn — every target calls the CLI; no logic lives here.
# Variables (override on the command line, e.g. `make index DATASET=hmdb51 ROOT=... SPLITS=...`):
PYTHON  ?= python3
CONSTRAINTS ?= constraints.txt
LOCK_PYTHONS ?= python3.10 python3.11 python3.12
VENV    ?= .venv
PY      := $(VENV)/bin/python
MRRN    := $(VENV)/bin/mrrn
STAMP   := $(VENV)/.mrrn-installed

DATASET ?= ucf101
ROOT    ?= data/UCF-101
SPLITS  ?= data/ucfTrainTestlist
SPLIT   ?= 1
BACKBONE ?= resnet34
VIEWS   ?= center
CACHE   ?= data/$(DATASET)_$(BACKBONE)$(if $(filter-out center,$(VIEWS)),_$(subst $(comma),_,$(VIEWS))).h5
BACKBONE_WEIGHTS ?= $(or $(WEIGHTS),imagenet)
DEVICE  ?= auto
NPROC   ?= 1
EXTRACT_ARGS ?=
LEVEL   ?= high
RUN     ?= runs/$(DATASET)_split$(SPLIT)_$(LEVEL)
TRAIN_ARGS ?=
RUNS    ?= runs/$(DATASET)_split$(SPLIT)
FUSED   ?= $(RUNS)_mrrn
FUSE_ARGS ?=
SWEEP   ?= runs/sweep_$(DATASET)_split$(SPLIT)
SWEEP_ARGS ?= --levels high --hidden 256,512,1024 --layers 3,4,5
# The demo's arithmetic in both stages: auto (bf16 on CPUs and GPUs that compute it natively), or fp32 to compare
DEMO_PRECISION ?= auto
# The demo's stage-2 settings: small model, higher learning rate and feature standardisation,
# because the demo backbone has random weights (its features are far from ImageNet's in scale).
DEMO_TRAIN := --hidden 128 --layers 2 --epochs 30 --lr 1e-3 --lr-step 100 --normalize --precision $(DEMO_PRECISION)

comma   := ,
SAMPLE  := data/sample
SAMPLE_STAMP := $(SAMPLE)/ucfTrainTestlist/classInd.txt
DEMO_CACHE := data/sample.h5
DEMO_FLOW_CACHE := data/sample_flow.h5
DEMO_FLIP_CACHE := data/sample_flip.h5

.PHONY: install lock test demo sample index extract inspect train sweep fuse bench clean help
.DEFAULT_GOAL := help

help:
	@echo "make install   create .venv and install mrrn (editable) with test + report extras, at constraints.txt's versions"
	@echo "make lock      rewrite constraints.txt: the newest allowed releases for each of LOCK_PYTHONS"
	@echo "make test      run the test suite (installs first if needed)"
	@echo "make demo      run the pipeline end to end on the bundled sample dataset"
	@echo "make sample    generate the sample dataset into $(SAMPLE)"
	@echo "make index     index a dataset: DATASET=ucf101|hmdb51|kinetics|ssv2|list|folder ROOT=dir SPLITS=dir SPLIT=n"
	@echo "make extract   stage 1 into CACHE=$(CACHE) (BACKBONE=resnet34 VIEWS=center|center,flip|five|ten"
	@echo "               BACKBONE_WEIGHTS=imagenet|random|path DEVICE=auto NPROC=1 EXTRACT_ARGS=...)"
	@echo "make inspect   describe and verify CACHE"
	@echo "make train     stage 2 on CACHE: LEVEL=low|mid|high SPLIT=n RUN=dir NPROC=1 TRAIN_ARGS=..."
	@echo "make sweep     a grid of runs on CACHE into SWEEP=dir (SWEEP_ARGS, default: paper table 1)"
	@echo "make fuse      fuse the low, mid and high runs of make train into FUSED=dir (eq. 10), with a report"
	@echo "make bench     throughput benchmarks, appended to benchmarks/results.md"

install: $(STAMP)

$(STAMP): setup.cfg pyproject.toml $(CONSTRAINTS)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -e '.[test,report]' $(if $(CONSTRAINTS),-c $(CONSTRAINTS)) || { echo "Error: $(CONSTRAINTS): the pinned\
	 releases did not install on $$($(PY) --version) (pip's reason above); make install CONSTRAINTS= installs the newest allowed" >&2; exit 1; }
	touch $(STAMP)

# The newest releases setup.cfg allows, resolved on each of LOCK_PYTHONS (nothing is installed), frozen into
# constraints.txt with a python_version marker where they differ. Run `rm -rf .venv && make test demo`
# afterwards and commit constraints.txt only if both pass.
lock:
	$(PYTHON) .ci/lock.py constraints.txt $(LOCK_PYTHONS)

test: $(STAMP)
	$(PY) -m pytest -q

$(SAMPLE_STAMP): pipeline/datasets/sample.py | $(STAMP)
	rm -rf $(DEMO_CACHE) $(DEMO_CACHE).journal $(DEMO_FLOW_CACHE) $(DEMO_FLOW_CACHE).journal $(DEMO_FLIP_CACHE) $(DEMO_FLIP_CACHE).journal runs/demo runs/demo-models runs/demo-views runs/demo-tune
	$(MRRN) sample-data --out $(SAMPLE)

sample: $(SAMPLE_STAMP)

index: $(STAMP)
	$(MRRN) index --dataset $(DATASET) --root $(ROOT) $(if $(SPLITS),--splits $(SPLITS)) --split $(SPLIT)

extract: $(STAMP)
	$(MRRN) extract --dataset $(DATASET) --root $(ROOT) $(if $(SPLITS),--splits $(SPLITS)) --out $(CACHE) \
		--backbone $(BACKBONE) --views $(VIEWS) --backbone-weights $(BACKBONE_WEIGHTS) --device $(DEVICE) \
		--nproc $(NPROC) $(EXTRACT_ARGS)

inspect: $(STAMP)
	$(MRRN) inspect $(CACHE) --verify

train: $(STAMP)
	$(MRRN) train --cache $(CACHE) --split $(SPLIT) --level $(LEVEL) --out $(RUN) --nproc $(NPROC) $(TRAIN_ARGS)

fuse: $(STAMP)
	$(MRRN) fuse $(RUNS)_low $(RUNS)_mid $(RUNS)_high --out $(FUSED) $(FUSE_ARGS)

sweep: $(STAMP)
	$(MRRN) sweep --cache $(CACHE) --split $(SPLIT) --out $(SWEEP) $(SWEEP_ARGS)

bench: $(STAMP)
	$(PY) benchmarks/bench_extract.py
	$(PY) benchmarks/bench_precision.py
	$(PY) benchmarks/bench_cache.py
	$(PY) benchmarks/bench_journal.py
	$(PY) benchmarks/bench_shards.py
	$(PY) benchmarks/bench_scale.py
	$(PY) benchmarks/bench_train.py
	$(PY) benchmarks/bench_backbones.py

demo: $(SAMPLE_STAMP)
	@echo "== 1. index: the sample dataset as UCF-101 split 1"
	$(MRRN) index --dataset ucf101 --root $(SAMPLE)/videos --splits $(SAMPLE)/ucfTrainTestlist --split 1 --strict
	@echo "== 2. extract: frozen ResNet-34 with RANDOM weights (seed 0; ImageNet weights are not downloaded for the demo), 96 px frames"
	$(MRRN) extract --dataset ucf101 --root $(SAMPLE)/videos --splits $(SAMPLE)/ucfTrainTestlist --out $(DEMO_CACHE) \
		--backbone-weights random --seed 0 --short-side 96 --crop 96 --precision $(DEMO_PRECISION) --quiet
	$(MRRN) inspect $(DEMO_CACHE) --verify
	@echo "== 3. train: SRU classifiers on the low, mid and high levels, each beside the order-blind meanpool control"
	$(MRRN) sweep --cache $(DEMO_CACHE) --split 1 --out runs/demo --levels low,mid,high --models rrn,meanpool \
		$(DEMO_TRAIN) --quiet
	@echo "== 4. fuse: 0.7 high + 0.2 mid + 0.1 low (eq. 10), with the report"
	$(MRRN) fuse runs/demo/low_rrn_h128_l2_mean runs/demo/mid_rrn_h128_l2_mean runs/demo/high_rrn_h128_l2_mean \
		--out runs/demo/mrrn
	@echo "== 5. motion stream: optical flow (Farneback at 64 px, smaller than the usual 256 to keep the demo short) through the same backbone"
	$(MRRN) extract --dataset ucf101 --root $(SAMPLE)/videos --splits $(SAMPLE)/ucfTrainTestlist --out $(DEMO_FLOW_CACHE) \
		--backbone-weights random --seed 0 --short-side 96 --crop 96 --modality flow --flow-size 64 --precision $(DEMO_PRECISION) --quiet
	@echo "== 6. compare the heads on the high level, RGB and flow, and the two-stream head on both"
	$(MRRN) sweep --cache $(DEMO_CACHE) --flow-cache $(DEMO_FLOW_CACHE) --split 1 --out runs/demo-models --levels high \
		--modalities rgb,flow --models rrn,lstm,reslstm,tresnet,meanpool,twostream $(DEMO_TRAIN) --quiet
	@echo "== 7. late fusion of the RGB and flow RRNs (sum of softmax scores)"
	$(MRRN) fuse runs/demo-models/high_rrn_h128_l2_mean runs/demo-models/flow_high_rrn_h128_l2_mean --method sum \
		--out runs/demo-models/rgb_flow
	@echo "== 8. cached views: each frame with its mirror image (--views center,flip); training draws one view per clip,"
	@echo "   testing averages both. The high-level RRN on that cache beside the same RRN on the centre-only cache"
	$(MRRN) extract --dataset ucf101 --root $(SAMPLE)/videos --splits $(SAMPLE)/ucfTrainTestlist --out $(DEMO_FLIP_CACHE) \
		--backbone-weights random --seed 0 --short-side 96 --crop 96 --views center,flip --precision $(DEMO_PRECISION) --quiet
	$(MRRN) sweep --caches $(DEMO_CACHE),$(DEMO_FLIP_CACHE) --split 1 --out runs/demo-views --levels high --models rrn \
		$(DEMO_TRAIN) --quiet > /dev/null
	head -6 runs/demo-views/results.md
	@echo "== 9. search: mrrn tune, 6 trials over two heads and their sizes on the high level, the median pruner stopping"
	@echo "   hopeless ones; trials scored on validation videos held out of training, the test score for the chosen one only"
	$(MRRN) tune --cache $(DEMO_CACHE) --level high --out runs/demo-tune --trials 6 --models rrn,attentive --hidden 64,128 \
		--layers 1,2 --lr-range 1e-3,3e-3 --dropout-range 0.5 --batch-size 16 --epochs 20 --val-fraction 0.25 --normalize --precision $(DEMO_PRECISION)
	@echo "== demo done. Three pairs of the eight sample classes differ only in frame order: on RGB features meanpool"
	@echo "   can at best get half of each pair right (5/8 = 62.5%); the temporal heads tell them apart, and flow"
	@echo "   carries the direction of motion itself."
	@echo "   Reports: runs/demo/mrrn/report.md, runs/demo-models/rgb_flow/report.md; tables: runs/demo-models/results.md,"
	@echo "   runs/demo-views/results.md; the search: runs/demo-tune/results.md (a second make demo continues its study)"

clean:
	rm -rf $(SAMPLE) $(DEMO_CACHE) $(DEMO_CACHE).journal $(DEMO_FLOW_CACHE) $(DEMO_FLOW_CACHE).journal $(DEMO_FLIP_CACHE) $(DEMO_FLIP_CACHE).journal runs
