# One-command entry points; each sets itself up from a fresh clone.
PY ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: setup system-deps demo test check test-stack lint farm-local bench clean

$(BIN)/.installed: pyproject.toml
	@$(PY) -c 'import sys; assert sys.version_info[:2] == (3, 11), "bpy 5.0.1 needs Python 3.11"'
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[render,control,test]'
	touch $@

setup: $(BIN)/.installed

# From Debian's packages, only the missing ones: redis-server (tests, local farm), prometheus (the
# dashboard test, local-up --monitoring), chromium (the tests open the report in a browser) and
# faketime (a worker whose clock is wrong), slurm-wlm and munge (the Slurm test's one-node cluster).
system-deps:
	@missing=""; \
	command -v redis-server >/dev/null || missing="$$missing redis-server"; \
	command -v prometheus >/dev/null || missing="$$missing prometheus"; \
	command -v chromium >/dev/null || command -v chromium-browser >/dev/null || \
		missing="$$missing chromium"; \
	command -v faketime >/dev/null || missing="$$missing faketime"; \
	command -v slurmctld >/dev/null || [ -x /usr/sbin/slurmctld ] || missing="$$missing slurm-wlm"; \
	command -v munged >/dev/null || [ -x /usr/sbin/munged ] || missing="$$missing munge"; \
	[ -z "$$missing" ] || { $(SUDO) apt-get update -qq && \
		$(SUDO) apt-get install -y -qq --no-install-recommends $$missing; }

demo: setup
	$(BIN)/python -m worker demo

lint: setup
	$(BIN)/ruff check .

# The fast loop (60-100 s on 2 cores): lint, the architecture test and every test that
# needs no service, no render and no cluster.
check: setup
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q -m "not render and not services and not stack and not slurm"

# Every test but the container stack's, on TEST_WORKERS parallel workers (pytest-xdist; each
# has its own redis-server and S3 server); with CI=true the stack test follows (CI runs it always).
# TEST_WORKERS=0 runs it in one process.
TEST_WORKERS ?= 4
test: setup system-deps lint
	$(BIN)/python -m pytest -q -m "not stack" -n $(TEST_WORKERS) --dist worksteal
	@if [ "$$CI" = true ]; then $(MAKE) --no-print-directory test-stack; else \
		echo "test-stack not run (CI unset): 'make test-stack' builds the images and runs the stack"; fi

# The container stack: installs and starts a Docker engine if needed, builds the images, runs
# the farm with docker compose (CPU workers) and drives it (tests/stack/; ~10 minutes cold).
test-stack: setup
	bash tests/stack/run.sh

# The AWS CLI the upload benchmark compares against, in its own venv (it pins its own botocore).
.venv-aws/bin/aws:
	$(PY) -m venv .venv-aws
	.venv-aws/bin/pip install -q awscli

# Every benchmark (under 15 minutes on a 2-core CPU); tables on stdout, rows in bench-results.json.
bench: setup system-deps .venv-aws/bin/aws
	$(BIN)/python -m bench --json bench-results.json all

clean:
	rm -rf $(VENV) .venv-aws demo-out .pytest_cache bench-results.json build/stack
