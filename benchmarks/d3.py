"""MD-step cost (energy, forces, stress of the mean) on the 300-atom BMIM-BF4 box: GMNN alone,
GMNN + D3(7.94 Å) and GMNN + D3(20 Å), each one fused jitted function. Prints one JSON object."""

from __future__ import annotations

import json
import time

import jax
import jax.numpy as jnp
import numpy as np

from lotf.bench import bmim_bf4_box
from lotf.potential.calculator import LotfCalculator, gmnn_term
from lotf.potential.d3_calculator import d3_energy_term
from lotf.potential.graph import collate, structure_arrays
from lotf.potential.model import Model, ModelConfig


def _median_ms(calc, atoms, repeats: int = 10) -> float:
    rng = np.random.default_rng(0)
    calc.calculate(atoms, ["energy", "forces"])  # compile
    times = []
    for _ in range(repeats):
        atoms.positions += rng.normal(scale=1e-3, size=atoms.positions.shape)
        start = time.perf_counter()
        calc.calculate(atoms, ["energy", "forces"])
        times.append(time.perf_counter() - start)
    return 1e3 * float(np.median(times))


def d3_benchmark() -> dict:
    atoms = bmim_bf4_box(10)
    species = tuple(sorted(set(atoms.numbers)))
    model = Model(ModelConfig(species=species, n_members=2))
    graph = jax.tree_util.tree_map(jnp.asarray, collate([structure_arrays(atoms, species, 5.5)]))
    gmnn = gmnn_term(model, model.init(jax.random.PRNGKey(0), graph))
    out = {"atoms": len(atoms)}
    for key, extra in (("ms_mlp", []), ("ms_mlp_d3_short", [d3_energy_term(species, "b97-3c", 7.93766)]),
                       ("ms_mlp_d3_20", [d3_energy_term(species, "b97-3c", 20.0)])):
        calc = LotfCalculator([gmnn, *extra], species, members=False)
        out[key] = _median_ms(calc, atoms.copy())
    out["ratio_d3_short"] = out["ms_mlp_d3_short"] / out["ms_mlp"]
    out["ratio_d3_20"] = out["ms_mlp_d3_20"] / out["ms_mlp"]
    return out


if __name__ == "__main__":
    print(json.dumps(d3_benchmark()))
