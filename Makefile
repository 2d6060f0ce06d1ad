# Two entry points (see README): `make app` and `make test`. Both create .venv and install the project.
# torch is installed first and on its own: TORCH_SPEC picks the build. The default pin is the CPU wheel
# on the dev machines; on a GPU box use e.g. `make app TORCH_SPEC="torch==2.13.0"` from PyPI (CUDA build
# on Linux) or `make app TORCH_SPEC="torch --index-url https://download.pytorch.org/whl/cu126"`.
PY ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.stir-installed

.PHONY: app test install lint demo clean-venv

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH_SPEC)
	$(BIN)/python -m pip install -q -e ".[dev,interop]"
	touch $(STAMP)

install: $(STAMP)

app: $(STAMP)
	$(BIN)/python -m streamlit run app/Home.py --server.address 127.0.0.1

test: $(STAMP)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check .

demo: $(STAMP)
	$(BIN)/stir generate "3+1-9+4+2" --methods vanilla,stir

clean-venv:
	rm -rf $(VENV)
