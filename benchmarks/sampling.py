"""Step cost of unbiased MD, UDD and ERBS on the 300-atom BMIM-BF4 box (``lotf bench sampling``).

Seed-1 GMNN hyperparameters (2-member shallow ensemble, random weights: the cost does not depend
on them), Berendsen at 300 K with τ = 500 fs and 0.5 fs steps (seed 2 §3.3), a frame with the
full ensemble prediction every 10 steps. ERBS uses the seed-2 BMIM centre point (ΔE 1.5 eV/atom,
σ 2.0, k 2) with the descriptor on the model's neighbour list (r_max = 5.5 Å, n_basis 4, float32);
``ms_step_erbs_own_list`` is the same with the reference's r_max = 6 Å on a second list. UDD:
A = 1 eV/atom, B = 0.5 eV.

The loops are timed interleaved in one process (blocks of ``steps`` steps, after a warm-up block
that compiles); medians are reported with their ratios to the unbiased step, plus the ratios of
the best (least disturbed) repeats, since other jobs share these cores.
"""

from __future__ import annotations

import json
import time

import jax
import jax.numpy as jnp
import numpy as np


def _forcefield(method: str, model, params, species):
    from lotf.dynamics.biases import ERBS, UDD
    from lotf.dynamics.potential import ForceField, JaxBase
    from lotf.potential.calculator import gmnn_term

    bias = None
    if method == "udd":
        bias = UDD(height=1.0, width=0.5, per_atom=True)
    elif method.startswith("erbs"):
        r_max = 6.0 if method == "erbs_own_list" else None  # None: the model's cutoff and list
        bias = ERBS(temperature=300.0, barrier=1.5, per_atom=True, bandwidth=2.0, n_components=2, interval=2000,
                    r_max=r_max)
    return ForceField(JaxBase([gmnn_term(model, params)], species), bias)


def sampling_benchmark(steps: int = 100, repeats: int = 5, quick: bool = False) -> dict:
    """ms per MD step for plain MD, UDD and ERBS (one process, interleaved) and their ratios."""
    from lotf.bench import bmim_bf4_box
    from lotf.dynamics.integrators import Berendsen
    from lotf.dynamics.md import MDRun
    from lotf.potential.graph import collate, structure_arrays
    from lotf.potential.model import Model, ModelConfig

    if quick:
        steps, repeats = 20, 2
    sampling_rate = 10
    steps = max(sampling_rate, steps // sampling_rate * sampling_rate)
    atoms = bmim_bf4_box(10)
    species = tuple(sorted(set(int(z) for z in atoms.numbers)))
    config = ModelConfig(species=species, n_members=2)
    model = Model(config)
    graph = jax.tree_util.tree_map(jnp.asarray, collate([structure_arrays(atoms, species, config.r_max)]))
    params = model.init(jax.random.PRNGKey(0), graph)

    runs, carries, compile_s = {}, {}, {}
    schedule = jnp.full(steps // sampling_rate, sampling_rate, jnp.int32)
    for method in ("md", "udd", "erbs", "erbs_own_list"):
        run = MDRun(atoms, _forcefield(method, model, params, species), Berendsen(timestep=0.5, tau=500.0),
                    steps=10**6, temperature=300.0, sampling_rate=sampling_rate, seed=0, progress=False,
                    block_steps=steps)
        run._setup()
        start = time.perf_counter()
        carry, _ = run._block_fn(run.specs)(run.carry, schedule)
        jax.block_until_ready(carry)
        compile_s[method] = time.perf_counter() - start
        runs[method], carries[method] = run, carry

    times: dict[str, list[float]] = {m: [] for m in runs}
    for _ in range(repeats):
        for method, run in runs.items():
            carry = carries[method]
            start = time.perf_counter()
            new, _ = run._block_fn(run.specs)(carry, schedule)
            jax.block_until_ready(new)
            elapsed = time.perf_counter() - start
            if bool(new.overflow):  # grow the lists and take the next sample instead
                carries[method] = run._reallocate(carry, new)
                continue
            carries[method] = new
            times[method].append(1e3 * elapsed / steps)

    ms = {m: float(np.median(t)) if t else float("nan") for m, t in times.items()}
    best = {m: float(np.min(t)) if t else float("nan") for m, t in times.items()}
    out = {
        "ms_step_md": ms["md"], "ms_step_udd": ms["udd"], "ms_step_erbs": ms["erbs"],
        "ratio_udd": ms["udd"] / ms["md"], "ratio_erbs": ms["erbs"] / ms["md"],
        "ms_step_erbs_own_list": ms["erbs_own_list"], "ratio_erbs_own_list": ms["erbs_own_list"] / ms["md"],
        "ratio_udd_best": best["udd"] / best["md"], "ratio_erbs_best": best["erbs"] / best["md"],
        "ms_step_all": times,
        "atoms": len(atoms), "n_members": 2, "sampling_rate": sampling_rate, "steps_per_sample": steps,
        "repeats": repeats, "compile_s": compile_s,
        "erbs": {"barrier_eV_per_atom": 1.5, "bandwidth": 2.0, "n_components": 2, "n_basis": 4, "r_max": 5.5,
                 "r_max_own_list": 6.0, "dtype": "float32"},
        "udd": {"A_eV_per_atom": 1.0, "B_eV": 0.5},
        "backend": jax.default_backend(),
    }
    return out


if __name__ == "__main__":
    import lotf  # noqa: F401  (float64)

    print(json.dumps(sampling_benchmark(), indent=1))
