# Two entry points (see README): `make app` and `make test`. Both create .venv and install the project from
# requirements.lock, the exact versions CI tested. torch is installed first and on its own: TORCH_SPEC picks
# the build. The default is the CPU wheel on the dev machines; on a GPU box use e.g.
# `make app TORCH_SPEC="torch==2.13.0"` from PyPI (CUDA build on Linux) or
# `make app TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu126"`.
# Keep TORCH_SPEC at the version the lock names (2.13.0): any local build label (+cpu, +cu126) matches it.
PY ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
PIP_SPEC ?= pip==26.3
EXTRAS ?= dev,interop
BIN := $(VENV)/bin
STAMP := $(VENV)/.stir-installed
LOCK := requirements.lock

.PHONY: app test test-fast lint-imports install lint demo screenshot clean-venv lock test-latest test-next

$(STAMP): pyproject.toml $(LOCK)
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q $(PIP_SPEC)
	$(BIN)/python -m pip install -q $(TORCH_SPEC)
	$(BIN)/python -m pip install -q -r $(LOCK)
	$(BIN)/python -m pip install -q --no-deps -e ".[$(EXTRAS)]"
	$(BIN)/python -m pip check
	touch $(STAMP)

install: $(STAMP)

app: $(STAMP)
	$(BIN)/python -m app --server.address 127.0.0.1

# CI (.ci/run) runs `make test`: the layer contract first, then every test, slow ones included.
test: lint-imports
	$(BIN)/python -m pytest -q

# For development: the same suite without the tests marked `slow` (each takes more than ~5 s).
test-fast: lint-imports
	$(BIN)/python -m pytest -q -m "not slow"

# The package's layers and no import cycles ([tool.importlinter] in pyproject.toml, docs/ARCHITECTURE.md).
lint-imports: $(STAMP)
	$(BIN)/lint-imports

lint: $(STAMP)
	$(BIN)/ruff check .

demo: $(STAMP)
	$(BIN)/stir generate "3+1-9+4+2" --methods vanilla,stir

# The README's screenshot: the browser test, told to write it there (it uses a temp dir otherwise).
screenshot: $(STAMP)
	STIR_SCREENSHOT=assets/screenshots/playground.png $(BIN)/python -m pytest -q tests/test_browser.py

clean-venv:
	rm -rf $(VENV)

# Refresh the lock: resolve pyproject's ranges afresh in a throw-away venv and write every version it got.
# Run `make test` on the result before committing it (README: "Refreshing the lock").
lock:
	rm -rf .venv-lock
	$(PY) -m venv .venv-lock
	.venv-lock/bin/python -m pip install -q $(PIP_SPEC)
	.venv-lock/bin/python -m pip install -q $(TORCH_SPEC)
	.venv-lock/bin/python -m pip install -q -e ".[dev,interop]"
	(echo "# Exact versions CI tests: \`make lock\` writes this file (README: Refreshing the lock)."; \
	 echo "# torch's local build label (+cpu) is dropped: TORCH_SPEC picks the build of this version."; \
	 .venv-lock/bin/python -m pip freeze --exclude-editable | sed -E 's/^(torch==[^+]*)\+.*/\1/' | LC_ALL=C sort -f) > $(LOCK)
	rm -rf .venv-lock

# Canary: the newest versions pyproject.toml allows (no lock), then the whole suite. Tells a maintainer
# about drift in our dependencies before a user installing without the lock meets it.
test-latest:
	rm -rf .venv-latest
	$(PY) -m venv .venv-latest
	.venv-latest/bin/python -m pip install -q $(PIP_SPEC)
	.venv-latest/bin/python -m pip install -q $(TORCH_SPEC)
	.venv-latest/bin/python -m pip install -q --upgrade --upgrade-strategy eager -e ".[dev]"
	.venv-latest/bin/python -c "from stir_core.io.versions import version_line; print(version_line())"
	.venv-latest/bin/python -m pytest -q -p no:cacheprovider

# Beyond the bounds: the newest transformers and transformer-lens releases even where pyproject.toml caps
# them; passing here is what justifies raising an upper bound.
test-next:
	rm -rf .venv-next
	$(PY) -m venv .venv-next
	.venv-next/bin/python -m pip install -q $(PIP_SPEC)
	.venv-next/bin/python -m pip install -q $(TORCH_SPEC)
	.venv-next/bin/python -m pip install -q -e ".[dev]"
	.venv-next/bin/python -m pip install -q --upgrade transformers transformer-lens
	.venv-next/bin/python -c "from stir_core.io.versions import version_line; print(version_line())"
	.venv-next/bin/python -m pytest -q -p no:cacheprovider
