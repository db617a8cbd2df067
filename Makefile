# One entry for the README, CI and developers. torch is pinned first: a bare `torch` requirement
# on a machine without it pulls a multi-GB CUDA build; 2.13.0 takes the local CPU wheel.
PYTHON ?= python3

.PHONY: install browser test demo lint

install:
	$(PYTHON) -m pip install -q --disable-pip-version-check torch==2.13.0
	$(PYTHON) -m pip install -q --disable-pip-version-check -e ".[test,eval]"

# The Gradio page is tested in Debian's Chromium, driven by Playwright (no browser download).
browser:
	@command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium >/dev/null)

# One torch thread per process: the tiny test models gain nothing from more, and torchrun tests start two.
test: install browser
	OMP_NUM_THREADS=1 $(PYTHON) -m pytest -q

demo: install
	sibo demo

lint:
	ruff check src tests benchmarks && ruff format --check src tests benchmarks
