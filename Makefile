# One entry for the README, CI and developers. torch is pinned first: a bare `torch` requirement
# on a machine without it pulls a multi-GB CUDA build; 2.13.0 takes the local CPU wheel.
# Inside a virtual environment its python is used; otherwise the project's own .venv, made on first
# use (no root, and no pip into a distribution's "externally managed" Python). PYTHON=… overrides both.
VENV_PYTHON := .venv/bin/python
ifdef VIRTUAL_ENV
PYTHON ?= python
else
PYTHON ?= $(VENV_PYTHON)
endif

.PHONY: install test demo lint

$(VENV_PYTHON):
	python3 -m venv .venv

install: $(filter $(VENV_PYTHON),$(PYTHON))
	$(PYTHON) -m pip install -q --disable-pip-version-check torch==2.13.0
	$(PYTHON) -m pip install -q --disable-pip-version-check -e ".[test,eval]"

# One torch thread per process: the tiny test models gain nothing from more, and torchrun tests start two.
# The Gradio page's browser test installs Debian's Chromium when run as root, and skips saying so otherwise.
test: install
	OMP_NUM_THREADS=1 $(PYTHON) -m pytest -q

demo: install
	$(PYTHON) -m sibo demo

lint: install
	$(PYTHON) -m ruff check src tests benchmarks && $(PYTHON) -m ruff format --check src tests benchmarks
