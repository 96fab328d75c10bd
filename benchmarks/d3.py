"""MD-step cost of the hybrid MLP+D3 on the 300-atom BMIM-BF4 box. Prints one JSON object.

GMNN alone, GMNN + D3(7.94 A) and GMNN + D3(20 A), each one fused jitted force-field call made
as the MD loop makes it (:class:`lotf.dynamics.potential.ForceField`): the neighbour lists
(skin 0.5 A, row capacity x1.25, as :class:`lotf.dynamics.md.MD`) live on the device and are
passed in, so a call costs what an MD step between list rebuilds costs. ``ms_*``: energy,
forces and virial (what NPT and frame steps need); ``ms_*_forces``: energy and forces only
(NVT steps between frames). The three set-ups are timed in interleaved rounds, so a load change
on the machine hits them alike; each number is a median.

``ms_*_ase``: the same sums through :class:`~lotf.potential.calculator.LotfCalculator` (ASE),
which also copies every neighbour list to the device at each call (about 30 MB for the 20 A
list). ``ms_rebuild_*``: one host rebuild of a term's neighbour list, which MD pays whenever an
atom has moved half the skin.
"""

from __future__ import annotations

import json
import time

import jax
import jax.numpy as jnp
import numpy as np

from lotf.bench import bmim_bf4_box
from lotf.dynamics.potential import ForceField, JaxBase
from lotf.potential import neighbors
from lotf.potential.calculator import LotfCalculator, gmnn_term
from lotf.potential.d3_calculator import d3_energy_term
from lotf.potential.graph import collate, structure_arrays
from lotf.potential.model import Model, ModelConfig

SKIN = 0.5  # MD's default skin and row headroom
CAPACITY_FACTOR = 1.25


def _md_call(terms, species, atoms, need_virial: bool):
    """A jitted ``positions -> Prediction`` with device-resident lists, as in the MD loop."""
    ff = ForceField(JaxBase(terms, species))
    ff.setup(atoms, need_stress=need_virial)
    cell = np.asarray(atoms.cell.array)
    nbrs = tuple(jax.tree_util.tree_map(jnp.asarray, neighbors.allocate(
        atoms.positions, cell, (True,) * 3, cutoff, SKIN, capacity_factor=CAPACITY_FACTOR)[1])
        for cutoff in ff.list_cutoffs)
    step = jax.jit(lambda r, c, nb: ff(r, c, nb, (), full=False, need_virial=need_virial))
    cell = jnp.asarray(cell)
    return lambda positions: step(positions, cell, nbrs)


def _ase_call(terms, species, atoms):
    calc = LotfCalculator(terms, species, members=False)
    atoms = atoms.copy()

    def call(positions):
        atoms.positions = np.asarray(positions)
        calc.calculate(atoms, ["energy", "forces"])
        return calc.results["energy"]

    return call


def _interleaved_ms(calls: dict, positions: np.ndarray, repeats: int) -> dict:
    rng = np.random.default_rng(0)
    for call in calls.values():  # compile
        jax.block_until_ready(call(jnp.asarray(positions)))
    times = {key: [] for key in calls}
    for _ in range(repeats):
        positions = positions + rng.normal(scale=1e-3, size=positions.shape)  # stays within the skin
        for key, call in calls.items():
            r = jnp.asarray(positions)
            start = time.perf_counter()
            jax.block_until_ready(call(r))
            times[key].append(time.perf_counter() - start)
    return {key: 1e3 * float(np.median(t)) for key, t in times.items()}


def _rebuild_ms(atoms, cutoff: float, repeats: int = 3) -> float:
    cell = np.asarray(atoms.cell.array)
    spec, _ = neighbors.allocate(atoms.positions, cell, (True,) * 3, cutoff, SKIN, capacity_factor=CAPACITY_FACTOR)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        neighbors.build_host(spec, atoms.positions, cell)
        times.append(time.perf_counter() - start)
    return 1e3 * float(np.median(times))


def d3_benchmark(repeats: int = 15) -> dict:
    atoms = bmim_bf4_box(10)
    species = tuple(sorted(set(atoms.numbers)))
    model = Model(ModelConfig(species=species, n_members=2))
    graph = jax.tree_util.tree_map(jnp.asarray, collate([structure_arrays(atoms, species, 5.5)]))
    gmnn = gmnn_term(model, model.init(jax.random.PRNGKey(0), graph))
    setups = {"mlp": [gmnn], "mlp_d3_short": [gmnn, d3_energy_term(species, "b97-3c", 7.93766)],
              "mlp_d3_20": [gmnn, d3_energy_term(species, "b97-3c", 20.0)]}
    out = {"atoms": len(atoms)}
    positions = np.asarray(atoms.positions)
    out.update({f"ms_{key}": ms for key, ms in _interleaved_ms(
        {key: _md_call(terms, species, atoms, True) for key, terms in setups.items()}, positions, repeats).items()})
    out.update({f"ms_{key}_forces": ms for key, ms in _interleaved_ms(
        {key: _md_call(terms, species, atoms, False) for key, terms in setups.items() if key != "mlp_d3_short"},
        positions, repeats).items()})
    out.update({f"ms_{key}_ase": ms for key, ms in _interleaved_ms(
        {key: _ase_call(terms, species, atoms) for key, terms in setups.items() if key != "mlp_d3_short"},
        positions, max(5, repeats // 2)).items()})
    out["ratio_d3_short"] = out["ms_mlp_d3_short"] / out["ms_mlp"]
    out["ratio_d3_20"] = out["ms_mlp_d3_20"] / out["ms_mlp"]
    out["ratio_d3_20_forces"] = out["ms_mlp_d3_20_forces"] / out["ms_mlp_forces"]
    out["ratio_d3_20_ase"] = out["ms_mlp_d3_20_ase"] / out["ms_mlp_ase"]
    out["ms_rebuild_mlp"] = _rebuild_ms(atoms, gmnn.cutoff)
    out["ms_rebuild_d3_20"] = _rebuild_ms(atoms, setups["mlp_d3_20"][1].cutoff)
    return out


if __name__ == "__main__":
    print(json.dumps(d3_benchmark()))
