"""lotf: learning-on-the-fly of machine-learned interatomic potentials.

Importing lotf enables float64 in JAX: energies are accumulated in float64 and the finite-
difference checks need it (networks still run in float32 unless configured otherwise).
"""

import os
import sys

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

# JAX is configured through its environment variables, so that importing lotf does not import
# JAX (a DVC stage that only moves frames starts faster); when JAX is already imported, the
# same settings are applied directly.
# Persistent XLA compilation cache: the second run of the same model/shape skips compilation
# (tens of seconds on CPU). LOTF_JAX_CACHE="" disables it.
_cache = os.environ.get("LOTF_JAX_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "lotf", "jax"))
_JAX_SETTINGS = {"jax_enable_x64": True}
if _cache:
    _JAX_SETTINGS.update(jax_compilation_cache_dir=_cache, jax_persistent_cache_min_compile_time_secs=1.0)
if "jax" in sys.modules:
    for _key, _value in _JAX_SETTINGS.items():
        sys.modules["jax"].config.update(_key, _value)
else:
    for _key, _value in _JAX_SETTINGS.items():
        os.environ[_key.upper()] = str(_value)

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
