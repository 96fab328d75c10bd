# All set-up happens here so that `make demo` and `make test` work on a fresh machine.
# Every step is idempotent: it checks before it installs, so re-runs are cheap.
SHELL := /bin/bash
PYTEST_ARGS ?=
DEMO_DIR ?= lotf-demo

.PHONY: setup system-packages python-env demo test test-slow bench clean

setup: system-packages python-env

# CP2K and GROMACS come from Debian (DESIGN.md); Packmol comes from PyPI (pyproject.toml),
# because Debian's Packmol 20.14 rejects the `pbc` keyword that periodic packing needs.
# slurm-wlm and munge: the slow tier's throw-away SLURM (tests/reference/slurm_cluster.py).
system-packages:
	@if ! command -v cp2k.psmp >/dev/null || ! command -v gmx >/dev/null || ! command -v mpirun >/dev/null \
		|| ! command -v sbatch >/dev/null || ! [ -x /usr/sbin/slurmctld ] || ! [ -x /usr/sbin/munged ]; then \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq cp2k cp2k-data gromacs openmpi-bin git \
			slurm-wlm munge >/dev/null; \
	fi

# uv from PyPI if it is missing, then the locked environment in .venv. Bytecode is compiled at
# install: with PYTHONDONTWRITEBYTECODE set (as on our machines) every `zntrack run` of a DVC
# stage would otherwise recompile zntrack, dvc, jax, ... from source (about 4.5 s per stage).
python-env:
	@python3 -m uv --version >/dev/null 2>&1 || python3 -m pip install --quiet uv
	@python3 -m uv sync --frozen --quiet --compile-bytecode
	@.venv/bin/python -m compileall -q lotf stages >/dev/null

demo: setup
	.venv/bin/lotf demo $(DEMO_DIR)

test: setup
	.venv/bin/python -m pytest $(PYTEST_ARGS)

test-slow: setup
	.venv/bin/python -m pytest -m slow $(PYTEST_ARGS)

bench: setup
	.venv/bin/lotf bench potential

clean:
	rm -rf .venv .pytest_cache
