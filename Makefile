# mrrn — every target calls the CLI; no logic lives here.
# Variables (override on the command line, e.g. `make index DATASET=hmdb51 ROOT=... SPLITS=...`):
PYTHON  ?= python3
VENV    := .venv
PY      := $(VENV)/bin/python
MRRN    := $(VENV)/bin/mrrn
STAMP   := $(VENV)/.mrrn-installed

DATASET ?= ucf101
ROOT    ?= data/UCF-101
SPLITS  ?= data/ucfTrainTestlist
SPLIT   ?= 1

SAMPLE  := data/sample
SAMPLE_STAMP := $(SAMPLE)/ucfTrainTestlist/classInd.txt

.PHONY: install test demo sample index clean help
.DEFAULT_GOAL := help

help:
	@echo "make install   create .venv and install mrrn (editable) with test + report extras"
	@echo "make test      run the test suite (installs first if needed)"
	@echo "make demo      run the pipeline end to end on the bundled sample dataset"
	@echo "make sample    generate the sample dataset into $(SAMPLE)"
	@echo "make index     index a dataset: DATASET=ucf101|hmdb51|folder ROOT=dir SPLITS=dir SPLIT=n"

install: $(STAMP)

$(STAMP): setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -e '.[test,report]'
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

$(SAMPLE_STAMP): pipeline/sample_data.py | $(STAMP)
	$(MRRN) sample-data --out $(SAMPLE)

sample: $(SAMPLE_STAMP)

index: $(STAMP)
	$(MRRN) index --dataset $(DATASET) --root $(ROOT) $(if $(SPLITS),--splits $(SPLITS)) --split $(SPLIT)

demo: $(SAMPLE_STAMP)
	@echo "== mrrn demo: the sample dataset, indexed as UCF-101 split 1"
	$(MRRN) index --dataset ucf101 --root $(SAMPLE)/videos --splits $(SAMPLE)/ucfTrainTestlist --split 1 --strict
	@echo "== demo done (extraction, training and fusion arrive with the later stages)"

clean:
	rm -rf $(SAMPLE) runs
