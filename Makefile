# Set-up, tests and the demo. `make test` and `make demo` each do all set-up on a fresh clone.
PYTHON      ?= python3
VENV        ?= .venv
TORCH_SPEC  ?= torch==2.13.0
PY          := $(VENV)/bin/python
STAMP       := $(VENV)/.installed
PYTEST_ARGS ?= -n 2

.PHONY: venv test demo bench clean check-targets

venv: $(STAMP)

# torch goes in first, and stays pinned by a constraint while the project installs: norse
# requires torchvision, whose newest release would otherwise replace the CPU torch with a
# multi-GB CUDA build. (torchvision is installed but never imported: it fails beside CPU torch.)
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH_SPEC)"
	echo "$(TORCH_SPEC)" > $(VENV)/torch-constraint.txt
	$(PY) -m pip install --quiet -c $(VENV)/torch-constraint.txt -e ".[dev]"
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m pytest $(PYTEST_ARGS)

demo: $(STAMP)
	$(VENV)/bin/nsm demo

bench: $(STAMP)
	$(VENV)/bin/nsm bench

# Every export target's --check on a trained `tiny` export and an untrained allconvnet18, float and 8-bit.
# sinabs pins nir <= 1.0.4 (the project needs >= 1.0.6), so it gets its own venv, with the CPU torch pinned.
TARGETS_DIR := build/targets
SINABS_PY   := $(TARGETS_DIR)/sinabs/bin/python

$(SINABS_PY):
	$(PYTHON) -m venv $(TARGETS_DIR)/sinabs
	$(SINABS_PY) -m pip install --quiet --upgrade pip
	$(SINABS_PY) -m pip install --quiet "$(TORCH_SPEC)"
	echo "$(TORCH_SPEC)" > $(TARGETS_DIR)/sinabs/torch-constraint.txt
	$(SINABS_PY) -m pip install --quiet -c $(TARGETS_DIR)/sinabs/torch-constraint.txt sinabs

check-targets: $(STAMP) $(SINABS_PY)
	$(PY) -m pipelines.export.check_targets --out $(TARGETS_DIR)/runs --importer-python $(SINABS_PY)

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
