# `make run` and `make test` work on a bare machine with python3 and make: each creates .venv
# on first use, `make run` from the pinned requirements.txt, `make test` adding requirements-dev.txt.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
RUNTIME := $(VENV)/.runtime
STAMP  := $(VENV)/.installed

SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: run test lint bench bench-startup bench-prepare bench-learn bench-finetune tools image image-test clean

$(RUNTIME): requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check --no-cache-dir -r requirements.txt
	touch $(RUNTIME)

$(STAMP): $(RUNTIME) requirements-dev.txt
	$(PY) -m pip install --quiet --disable-pip-version-check --no-cache-dir -r requirements-dev.txt
	touch $(STAMP)

run: $(RUNTIME)
	$(PY) entrypoint.py

# Debian's prometheus package: the real server and promtool the metrics tests use.
tools:
	@command -v promtool >/dev/null && command -v prometheus >/dev/null || { \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends prometheus; }

# The code (ruff: pycodestyle, pyflakes, import order) and the Dockerfile (hadolint), with zero
# findings allowed; the manifests are validated in tests/test_deploy.py.
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/hadolint Dockerfile

# Two test processes (pytest-xdist): most of a test's time is TensorFlow tracing and process
# start-up, one core each; 8 min instead of 12 on 2 cores.
test: $(STAMP) tools lint
	$(PY) -m pytest -n 2 --dist worksteal --durations=25

# The CPU image from the unmodified Dockerfile, built with podman (no Docker engine or image
# registry here: image/build.sh installs podman and makes a local base once per machine).
image:
	bash image/build.sh

# The image run for real: as `docker run` users run it, and the k8s/ Jobs under `podman kube play`.
image-test: $(STAMP) tools image
	$(PY) -m pytest -m image -s

bench: $(STAMP)
	$(PY) -m bench.loader_bench
	TF_ENABLE_ONEDNN_OPTS=1 $(PY) -m bench.train_bench

# Seconds to the first training batch at 100k and 240k clips, first start and restart.
bench-startup: $(STAMP)
	$(PY) -m bench.startup_bench

# The training copy (MODE=prepare) against 1080p footage: training speed and accuracy, side by side (about 1 h).
bench-prepare: $(STAMP)
	TF_ENABLE_ONEDNN_OPTS=1 $(PY) -m bench.prepare_bench

# The training recipe's candidates x 5 seeds on both benchmark sets, then the ranking by the worse set (hours).
bench-learn: $(STAMP)
	TF_ENABLE_ONEDNN_OPTS=1 $(PY) -m bench.learn_bench --set hard
	TF_ENABLE_ONEDNN_OPTS=1 $(PY) -m bench.learn_bench --set second
	$(PY) -m bench.learn_bench --summary

# A model pretrained on the second set's motions, fine-tuned on the hard set, against training from scratch.
bench-finetune: $(STAMP)
	TF_ENABLE_ONEDNN_OPTS=1 $(PY) -m bench.finetune_bench

clean:
	rm -rf $(VENV) .cache output .pytest_cache
