# Set-up and everyday commands. Each target creates .venv and installs what it needs.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU build of torch keeps installs small; set TORCH_SPEC="torch" (or a CUDA build) on a GPU machine.
TORCH_SPEC ?= torch==2.13.0

.PHONY: demo web test lint bench clean system-deps

# Debian packages the workbench's browser tests need: the chromium package (Playwright drives it through
# executable_path; no browser is ever downloaded) and a CJK font so Japanese labels draw as glyphs.
# Installed with apt-get when missing and we are root or sudo works without a password; otherwise a message
# says what to install and the browser tests skip with that reason.
SYSTEM_PACKAGES ?= chromium fonts-ipaexfont-gothic

$(BIN)/lbw: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH_SPEC)"
	$(BIN)/pip install -q -e ".[dev]"
	touch $(BIN)/lbw

system-deps:
	@missing=""; \
	command -v chromium >/dev/null 2>&1 || [ -x /usr/bin/chromium ] || missing="$$missing chromium"; \
	if command -v fc-list >/dev/null 2>&1; then [ -n "$$(fc-list :lang=ja 2>/dev/null)" ] || missing="$$missing cjk-font"; \
	else ls /usr/share/fonts/opentype/ipaexfont-gothic/*.ttf /usr/share/fonts/opentype/noto/NotoSansCJK-*.ttc \
	  >/dev/null 2>&1 || missing="$$missing cjk-font"; fi; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if ! command -v apt-get >/dev/null 2>&1; then \
	  echo "lbw: not a Debian system; install chromium and a CJK font yourself (missing:$$missing);" \
	       "the browser tests skip until then"; exit 0; fi; \
	if [ "$$(id -u)" = 0 ]; then SUDO=""; \
	elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then SUDO="sudo -n"; \
	else echo "lbw: missing$$missing; run: sudo apt-get install -y $(SYSTEM_PACKAGES)" \
	          "(the browser tests skip until then)"; exit 0; fi; \
	echo "lbw: installing$$missing from Debian's packages: $(SYSTEM_PACKAGES)"; \
	$$SUDO apt-get install -y -q $(SYSTEM_PACKAGES) >/dev/null 2>&1 || \
	{ $$SUDO apt-get update -q >/dev/null 2>&1 && $$SUDO apt-get install -y -q $(SYSTEM_PACKAGES) >/dev/null; } || \
	echo "lbw: apt-get could not install $(SYSTEM_PACKAGES); the browser tests skip"

demo: $(BIN)/lbw
	$(BIN)/lbw demo

web: $(BIN)/lbw
	$(BIN)/lbw web --demo

test: $(BIN)/lbw system-deps
	$(BIN)/ruff check .
	$(BIN)/python -m pytest

lint: $(BIN)/lbw
	$(BIN)/ruff check .

bench: $(BIN)/lbw
	for f in benchmarks/bench_*.py; do $(BIN)/python $$f || exit 1; done

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
