# Targets a user and CI run. Everything goes into .venv (created here).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
TORCH_PKGS := torch==2.14.1 torchvision==0.29.1

.PHONY: venv build dev-build demo test test-gpu test-all bench clean

$(VENV)/.deps:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q $(TORCH_PKGS)
	$(PIP) install -q numpy pytest ninja pybind11 cmake matplotlib tqdm scikit-learn timm submitit yacs
	$(PIP) install -q --no-deps pycls==0.1.1   # pycls's models need only yacs; skip its data deps
	touch $@

venv: $(VENV)/.deps

# Editable install: compiles regnet_ext._C in place and installs the `regnet-ext` command.
# Redone only when a C++/CUDA source or the build script changed.
BUILD_INPUTS := $(shell find csrc -type f) setup.py pyproject.toml
$(VENV)/.built: $(VENV)/.deps $(BUILD_INPUTS)
	$(PIP) install -q --no-build-isolation --no-deps -e .
	touch $@

build: $(VENV)/.built

# Incremental in-place rebuild for development (REGNET_EXT_CUDA=0 skips the CUDA sources).
dev-build: venv
	$(PY) setup.py -q build_ext --inplace

demo: build
	$(VENV)/bin/regnet-ext demo

test: build
	$(PY) -m pytest -q -m "not cuda" tests

test-gpu: build
	$(PY) -m pytest -q -m cuda tests

bench: build
	$(PY) benchmarks/bench_kernels.py

clean:
	rm -rf build regnet_ext/_C*.so regnet_ext/_build_config.py *.egg-info
