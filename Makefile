# One-command entry points; each sets itself up from a fresh clone.
PY ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: setup system-deps demo test lint farm-local bench clean

$(BIN)/.installed: pyproject.toml
	@$(PY) -c 'import sys; assert sys.version_info[:2] == (3, 11), "bpy 5.0.1 needs Python 3.11"'
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $@

setup: $(BIN)/.installed

# redis-server (tests, local farm) from Debian's packages, only when missing.
system-deps:
	@command -v redis-server >/dev/null || { $(SUDO) apt-get update -qq && \
		$(SUDO) apt-get install -y -qq redis-server; }

demo: setup
	$(BIN)/python -m farm demo

lint: setup
	$(BIN)/ruff check .

test: setup system-deps lint
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) demo-out .pytest_cache
