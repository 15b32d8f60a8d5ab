# Two entry points, each working on a fresh machine by itself:
#   make demo   create .venv, install the pinned stack, train + evaluate the tiny CLIP
#   make test   create .venv if needed, install, run the whole test suite
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# SkyPilot in its own venv (requirements-launch.txt says why); tests parse the launch tasks.
SKY_VENV := .venv-sky
SKY_STAMP := $(SKY_VENV)/.installed
DEMO_WORKDIR ?= workdirs/clip_tiny_demo

.PHONY: demo test lint install clean-venv

$(STAMP): requirements.txt requirements-torch.txt requirements-dev.txt requirements-nodeps.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -U pip
	$(PY) -m pip install -q -r requirements.txt -r requirements-torch.txt -r requirements-dev.txt
	$(PY) -m pip install -q --no-deps -r requirements-nodeps.txt
	third_party/tcmalloc/install.sh $(PY)
	touch $(STAMP)

$(SKY_STAMP): requirements-launch.txt
	test -x $(SKY_VENV)/bin/python || $(PYTHON) -m venv $(SKY_VENV)
	$(SKY_VENV)/bin/python -m pip install -q -U pip
	$(SKY_VENV)/bin/python -m pip install -q -r requirements-launch.txt
	touch $(SKY_STAMP)

install: $(STAMP) $(SKY_STAMP)

demo: $(STAMP)
	$(PY) -m experiments.train --config experiments/configs/clip/tiny.py --workdir $(DEMO_WORKDIR)

test: $(STAMP) $(SKY_STAMP)
	$(PY) -m ruff check .
	$(PY) -m pytest -n 2 --durations=15 tests

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

clean-venv:
	rm -rf $(VENV) $(SKY_VENV)

.PHONY: bazel-test
# Bazel (Debian bazel-bootstrap 4.2.3, offline; see README "Bazel"): installs Bazel
# if missing, then builds every target and runs every test target.
BAZEL_TEST_ARGS ?=
bazel-test: $(STAMP) $(SKY_STAMP)
	third_party/bazel/setup.sh test //... $(BAZEL_TEST_ARGS)
