# Entry points for a newcomer: `make demo` and `make test` (each sets up .venv first).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.setup-stamp
# Debian packages the pipeline shells out to: ffmpeg for clip cutting, Java for METEOR/SPICE.
SYSTEM_PACKAGES := ffmpeg:ffmpeg java:default-jre-headless
# loadfile: a test file's module fixtures (reference models, a caption run) are made once, on one worker.
PYTEST_ARGS ?= -n 2 --dist loadfile --durations=10

.PHONY: setup system-deps demo test bench clean

setup: system-deps $(STAMP)

system-deps:
	@missing=""; \
	for entry in $(SYSTEM_PACKAGES); do \
	  command -v "$${entry%%:*}" >/dev/null 2>&1 || missing="$$missing $${entry#*:}"; \
	done; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ]; then sudo=""; elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then sudo="sudo"; \
	else echo "warning: please install these Debian/Ubuntu packages yourself:$$missing"; exit 0; fi; \
	if ! command -v apt-get >/dev/null 2>&1; then echo "warning: no apt-get; please install:$$missing"; exit 0; fi; \
	echo "installing system packages:$$missing"; \
	$$sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -qq --no-install-recommends $$missing \
	  || echo "warning: could not install$$missing; the steps that need them will say so"

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev,tf]"
	touch $(STAMP)

demo: setup
	$(PY) -m panda_jax.demo --out out/demo

test: setup
	$(PY) -m pytest $(PYTEST_ARGS)

bench: setup
	@ls benchmarks/*_bench.py >/dev/null 2>&1 || { echo "no benchmarks yet"; exit 0; }; \
	for b in benchmarks/*_bench.py; do echo "== $$b"; $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) out .pytest_cache
