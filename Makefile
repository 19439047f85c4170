# Two commands for a newcomer:  make demo  (the main job)  and  make test  (the test suite).
# Both create ./.venv on first use. TORCH_SPEC picks the torch build; the default pins the
# version CI uses (on a GPU machine, set TORCH_SPEC=torch to take your platform's CUDA build).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.13.0
PYTEST_ARGS ?=

.PHONY: demo test venv clean-checkpoints

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e .
	touch $@

venv: $(VENV)/.installed

demo: $(VENV)/.installed
	$(PY) -m megakernel.demo

# Kernels run on the CPU through Numba's CUDA simulator (with megakernel.testing.simulator's fixes).
test: $(VENV)/.installed
	NUMBA_ENABLE_CUDASIM=1 $(PY) -m pytest -q $(PYTEST_ARGS)

clean-checkpoints:
	rm -rf data/checkpoints
