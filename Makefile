# All set-up happens here so that `make demo` and `make test` work on a fresh machine.
# Every step is idempotent: stamps and `command -v` checks make re-runs cheap.
SHELL := /bin/bash
UV ?= $(shell command -v uv 2>/dev/null || echo $(HOME)/.local/bin/uv)
SYSTEM_STAMP := .venv/.system-packages
PYTEST_ARGS ?=

.PHONY: setup system-packages python-env demo test test-slow bench lint clean

setup: system-packages python-env

# CP2K and GROMACS come from Debian (DESIGN.md); Packmol comes from PyPI (see pyproject).
system-packages:
	@if ! command -v cp2k.psmp >/dev/null || ! command -v gmx >/dev/null; then \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends \
			cp2k cp2k-data gromacs openmpi-bin git; \
	fi

$(UV):
	python3 -m pip install --quiet --user uv || python3 -m pip install --quiet uv

python-env: $(UV)
	@$$(command -v uv || echo $(UV)) sync --frozen --quiet

demo: setup
	.venv/bin/lotf demo

test: setup
	.venv/bin/python -m pytest $(PYTEST_ARGS)

test-slow: setup
	.venv/bin/python -m pytest -m slow $(PYTEST_ARGS)

bench: setup
	.venv/bin/lotf bench potential

clean:
	rm -rf .venv .pytest_cache
