import os
import sys

# the environment's own executables (dvc, zntrack, packmol, lotf) first, however pytest was started
os.environ["PATH"] = os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")

os.environ.setdefault("LOTF_CP2K_STORE", os.path.join(os.path.dirname(__file__), "..", ".pytest_cache", "cp2k-store"))

# persistent XLA cache shared by the test session and its subprocesses (CLI tests)
os.environ.setdefault("LOTF_JAX_CACHE", os.path.join(os.path.dirname(__file__), "..", ".pytest_cache", "jax"))

import lotf  # noqa: E402,F401  (enables float64 in JAX before any test builds arrays)

