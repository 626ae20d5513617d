# Set-up, tests and the demo. `make test` and `make demo` each do all set-up on a fresh clone.
PYTHON      ?= python3
VENV        ?= .venv
TORCH_SPEC  ?= torch==2.13.0
PY          := $(VENV)/bin/python
STAMP       := $(VENV)/.installed
PYTEST_ARGS ?= -n 2 --dist worksteal

.PHONY: venv test demo bench clean check-targets target-venvs

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

# Every export target's --check on a trained `tiny` export, an untrained allconvnet18 and an untrained specknet, float
# and 8-bit (the speck form 8-bit, on specknet only). Over 10 minutes on 2 cores (the 64 x 64 allconvnet18 through
# every form): not part of CI, whose suite runs the importers on smaller networks once the venvs exist.
# Each importer gets its own venv under build/targets/ with pinned versions: sinabs pins nir <= 1.0.4 (the project
# needs >= 1.0.6), SpikingJelly brings torchvision and torchaudio, Spyx a JAX stack. In the torch venvs torch goes
# in first, from the CPU wheel index, and stays pinned by a constraint, so no dependency can pull a CUDA build.
TARGETS_DIR       := build/targets
TORCH_INDEX       ?= https://download.pytorch.org/whl/cpu
SINABS_SPEC       ?= "sinabs==3.1.3"
SPIKINGJELLY_SPEC ?= "spikingjelly[nir]==2.0.0" "nirtorch==2.6" "nir==1.0.8"
SPYX_SPEC         ?= "spyx==1.0.0" "jax[cpu]==0.10.2" "flax==0.12.8" "nir==1.0.8"
SINABS_PY         := $(TARGETS_DIR)/sinabs/bin/python
SPIKINGJELLY_PY   := $(TARGETS_DIR)/spikingjelly/bin/python
SPYX_PY           := $(TARGETS_DIR)/spyx/bin/python
TARGET_VENVS      := $(addprefix $(TARGETS_DIR)/,$(addsuffix /.installed,sinabs spikingjelly spyx))

# $(call target_venv,NAME,SPEC,TORCH): a venv at $(TARGETS_DIR)/NAME holding SPEC; with TORCH = torch, the CPU
# torch first and pinned. The .installed stamp is written last, so a failed install is retried by the next make.
define target_venv
	$(PYTHON) -m venv $(TARGETS_DIR)/$(1)
	$(TARGETS_DIR)/$(1)/bin/python -m pip install --quiet --upgrade pip
	$(if $(3),$(TARGETS_DIR)/$(1)/bin/python -m pip install --quiet --index-url $(TORCH_INDEX) "$(TORCH_SPEC)")
	echo "$(if $(3),$(TORCH_SPEC))" > $(TARGETS_DIR)/$(1)/constraint.txt
	$(TARGETS_DIR)/$(1)/bin/python -m pip install --quiet -c $(TARGETS_DIR)/$(1)/constraint.txt $(2)
	touch $(TARGETS_DIR)/$(1)/.installed
endef

$(TARGETS_DIR)/sinabs/.installed:
	$(call target_venv,sinabs,$(SINABS_SPEC),torch)

$(TARGETS_DIR)/spikingjelly/.installed:
	$(call target_venv,spikingjelly,$(SPIKINGJELLY_SPEC),torch)

$(TARGETS_DIR)/spyx/.installed:
	$(call target_venv,spyx,$(SPYX_SPEC),)

# The importer venvs alone: with them the test suite runs the importers too (CI builds them; .ci/run).
target-venvs: $(TARGET_VENVS)

check-targets: $(STAMP) $(TARGET_VENVS)
	$(PY) -m pipelines.export.check_targets --out $(TARGETS_DIR)/runs --importer-python sinabs=$(SINABS_PY) \
		--importer-python spikingjelly=$(SPIKINGJELLY_PY) --importer-python spyx=$(SPYX_PY)

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
