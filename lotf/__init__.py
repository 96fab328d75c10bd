"""lotf: learning-on-the-fly of machine-learned interatomic potentials.

Importing lotf enables float64 in JAX: energies are accumulated in float64 and the finite-
difference checks need it (networks still run in float32 unless configured otherwise).
"""

import os

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)

# Persistent XLA compilation cache: the second run of the same model/shape skips compilation
# (tens of seconds on CPU). LOTF_JAX_CACHE="" disables it.
_cache = os.environ.get("LOTF_JAX_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "lotf", "jax"))
if _cache:
    jax.config.update("jax_compilation_cache_dir", _cache)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)

__version__ = "0.1.0"


def load_calculator(model_dir, **options):
    """ASE calculator for a trained model directory (see :mod:`lotf.potential.io`)."""
    from lotf.potential.io import load_calculator as _load

    return _load(model_dir, **options)


def __getattr__(name):
    if name == "D3Calculator":
        from lotf.potential.d3_calculator import D3Calculator

        return D3Calculator
    raise AttributeError(name)
