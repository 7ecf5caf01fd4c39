# Set-up and everyday commands. Each target creates .venv and installs what it needs.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU build of torch keeps installs small; set TORCH_SPEC="torch" (or a CUDA build) on a GPU machine.
TORCH_SPEC ?= torch==2.13.0

.PHONY: demo test lint bench clean

$(BIN)/lbw: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH_SPEC)"
	$(BIN)/pip install -q -e ".[dev]"
	touch $(BIN)/lbw

demo: $(BIN)/lbw
	$(BIN)/lbw demo

test: $(BIN)/lbw
	$(BIN)/ruff check .
	$(BIN)/python -m pytest

lint: $(BIN)/lbw
	$(BIN)/ruff check .

bench: $(BIN)/lbw
	for f in benchmarks/bench_*.py; do $(BIN)/python $$f || exit 1; done

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
