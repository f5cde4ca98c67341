# The two commands: `make demo` (set up, then run the demo on the embedded emulator and a local
# Prefect server) and `make test` (set up, then run every test). Both create .venv when it is missing.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
# uv through its module, so a uv that pip has just installed works whatever PATH says.
UV := python3 -m uv
# The suite runs on TEST_WORKERS pytest-xdist workers (most of a test's time is waiting on a
# server); tests that share one ComfyUI or a module's fixture stay on one worker (tests/conftest.py).
# TEST_WORKERS=0 (the default for now) runs it in one process: on these 2 cores three workers
# saturate the CPU and a few timing-sensitive tests still fail there (see the README).
TEST_WORKERS ?= 0
PYTEST_WORKERS := $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist loadgroup)

.PHONY: setup demo test test-fast docs comfyui bench lint clean

$(VENV)/.installed: pyproject.toml emulator/pyproject.toml
	@$(UV) --version >/dev/null 2>&1 || python3 -m pip install -q uv
	@test -x $(PY) || $(UV) venv -q $(VENV)
	$(UV) pip install -q -p $(VENV) -e ./emulator -e '.[dev]'
	@touch $@

setup: $(VENV)/.installed

demo: setup
	$(PY) -m prefect_comfy.cli.demo $(ARGS)

comfyui:
	bash scripts/install-comfyui.sh

# A failed ComfyUI install does not stop the other tests: the ComfyUI tests then fail, saying why.
test: setup docs
	@bash scripts/install-comfyui.sh || echo "ComfyUI could not be installed: the comfyui tests will fail and say why"
	@bash scripts/install-comfy-api-proxy.sh || echo "comfy-api-proxy could not be installed: the v2 proxy tests will fail and say why"
	@command -v chromium >/dev/null || { apt-get update -qq && apt-get install -y -qq chromium >/dev/null; } || echo "chromium could not be installed: the browser tests (the deployment's run form, the frontend oracle) will fail and say why"
	@python3 scripts/build-test-checkpoint.py >/dev/null || echo "the test checkpoint could not be built: the txt2img tests will fail and say why"
	$(PY) -m pytest -q $(PYTEST_WORKERS) --durations=20

test-fast: setup
	$(PY) -m pytest -q $(PYTEST_WORKERS) -m "not comfyui"

# The documentation site, into site/ (ignored by git). --strict: a broken link or an API name that
# does not resolve fails the build, and so `make test` and CI.
docs: setup
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict

bench: setup
	@for b in benchmarks/bench_*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

clean:
	rm -rf $(VENV) .pytest_cache site
