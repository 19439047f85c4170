# Two commands for a newcomer:  make demo  (the main job)  and  make test  (the test suite).
# Both create ./.venv on first use. TORCH_SPEC picks the torch build; the default pins the version CI uses,
# which pip takes from PyPI: on Linux that is the CUDA build (~2.7 GB with its CUDA libraries).
#   make demo CPU=1                 the CPU-only build of torch from PyTorch's index (~200 MB), for machines
#                                   without a GPU (or TORCH_INDEX=URL for another index)
#   make venv TORCH_SPEC=torch      on a GPU machine: your platform's CUDA build
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX ?= $(if $(CPU),https://download.pytorch.org/whl/cpu)
PYTEST_ARGS ?=

.PHONY: demo test venv notebooks clean-checkpoints

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)" $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(PY) -m pip install -q -e .
	touch $@

venv: $(VENV)/.installed

demo: $(VENV)/.installed
	$(PY) -m megakernel.demo

# Kernels run on the CPU through Numba's CUDA simulator (with megakernel.testing.simulator's fixes). The 25 slowest
# tests are listed at the end (the suite's time budget: CI runs it on 2 cores).
test: $(VENV)/.installed
	NUMBA_ENABLE_CUDASIM=1 $(PY) -m pytest -q --durations=25 $(PYTEST_ARGS)

# Each notebook's source is notebooks/NN_name.py: regenerate the paired .ipynb files from it (cell ids kept,
# outputs cleared). tests/test_notebooks.py checks that every pair is in sync.
notebooks: $(VENV)/.installed
	$(PY) -m jupytext --to ipynb --update notebooks/[0-9][0-9]_*.py
	$(VENV)/bin/jupyter nbconvert --clear-output --inplace --log-level=WARN notebooks/[0-9][0-9]_*.ipynb

clean-checkpoints:
	rm -rf data/checkpoints
