"""Benchmarks behind ``lotf bench``: each returns a JSON-serialisable dict (no assertions)."""

from __future__ import annotations

import resource
import time

import jax
import jax.numpy as jnp
import numpy as np
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator

from lotf.potential.calculator import LotfCalculator, gmnn_term
from lotf.potential.graph import collate, structure_arrays
from lotf.potential.model import Model, ModelConfig

BMIM_SMILES = "CCCCn1cc[n+](C)c1"
BF4_SMILES = "F[B-](F)(F)F"


def _molecule(smiles: str, seed: int) -> Atoms:
    from rdkit import Chem
    from rdkit.Chem import AllChem

    mol = Chem.AddHs(Chem.MolFromSmiles(smiles))
    AllChem.EmbedMolecule(mol, randomSeed=seed)
    if AllChem.MMFFHasAllMoleculeParams(mol):
        AllChem.MMFFOptimizeMolecule(mol)
    else:  # MMFF has no boron parameters
        AllChem.UFFOptimizeMolecule(mol)
    pos = mol.GetConformer().GetPositions()
    return Atoms([a.GetSymbol() for a in mol.GetAtoms()], positions=pos - pos.mean(0))


def bmim_bf4_box(n_pairs: int = 10, density: float = 1.21, seed: int = 0) -> Atoms:
    """Ion pairs on a jittered lattice with random orientations at the given density (g/cm³).

    A quick stand-in for a Packmol box for timing: same composition, density and neighbour counts.
    """
    rng = np.random.default_rng(seed)
    cation, anion = _molecule(BMIM_SMILES, seed), _molecule(BF4_SMILES, seed)
    mass = n_pairs * (cation.get_masses().sum() + anion.get_masses().sum())
    length = (mass / 0.6022140857 / density) ** (1 / 3)
    sites = int(np.ceil((2 * n_pairs) ** (1 / 3)))
    grid = np.array([(i, j, k) for i in range(sites) for j in range(sites) for k in range(sites)], float)
    grid = grid[rng.permutation(len(grid))[: 2 * n_pairs]]
    box = Atoms(cell=[length] * 3, pbc=True)
    for n, site in enumerate(grid):
        mol = (cation if n % 2 == 0 else anion).copy()
        mol.rotate(rng.uniform(0, 360), rng.normal(size=3), center=(0, 0, 0))
        mol.translate((site + 0.5 + rng.uniform(-0.1, 0.1, 3)) * length / sites)
        box += mol
    box.wrap()
    return box


def measured_peak_gflops(n: int = 1024, repeats: int = 10) -> float:
    a = jnp.asarray(np.random.default_rng(0).normal(size=(n, n)), jnp.float32)
    f = jax.jit(lambda x: x @ x)
    f(a).block_until_ready()
    best = np.inf
    for _ in range(repeats):
        t = time.perf_counter()
        f(a).block_until_ready()
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best / 1e9


def network_flops(config: ModelConfig, n_atoms: int, n_pairs: int, reverse_passes: int) -> float:
    """Useful floating-point work of one call: forward plus ``reverse_passes`` reverse passes.

    Counts the multiply-adds of the MLP (reverse pass w.r.t. inputs ≈ forward) and of the pair
    work (radial contraction K->R and the 20 angular moments per pair, reverse ≈ 2x forward).
    """
    widths = [config.n_features, *config.hidden, config.heads]
    mlp = sum(2 * a * b for a, b in zip(widths[:-1], widths[1:])) * n_atoms
    pair = (2 * config.n_basis * config.n_radial + 2 * config.n_radial * 20) * n_pairs
    return (mlp + pair) * (1 + reverse_passes) + 2 * pair * reverse_passes


def _time_calls(calc, atoms, repeats: int) -> tuple[float, float]:
    rng = np.random.default_rng(1)
    t = time.perf_counter()
    calc.calculate(atoms, ["energy", "forces"])
    first = time.perf_counter() - t
    times = []
    for _ in range(repeats):
        atoms.positions += rng.normal(scale=1e-3, size=atoms.positions.shape)  # below the skin
        t = time.perf_counter()
        calc.calculate(atoms, ["energy", "forces"])
        times.append(time.perf_counter() - t)
    return first, float(np.median(times))


def potential_benchmark(quick: bool = False) -> dict:
    """Seed-1 hyperparameters, 2-member ensemble, BMIM-BF4 boxes of 300 ... 4800 atoms."""
    sizes = [10, 20, 40] if quick else [10, 20, 40, 80, 160]
    repeats = 3 if quick else 10
    base = bmim_bf4_box(10)
    species = tuple(sorted(set(base.numbers)))
    out = {"atoms": [], "ms_per_call": [], "ms_per_call_mean_only": [], "ensemble": "shallow", "n_members": 2}
    config = ModelConfig(species=species, n_members=2, ensemble="shallow")
    model = Model(config)
    g = jax.tree_util.tree_map(jnp.asarray, collate([structure_arrays(base, species, config.r_max)]))
    params = model.init(jax.random.PRNGKey(0), g)
    for n_pairs in sizes:
        atoms = bmim_bf4_box(n_pairs, seed=n_pairs)
        calc = LotfCalculator([gmnn_term(model, params)], species, members=True)
        first, ms = _time_calls(calc, atoms, repeats)
        mean_calc = LotfCalculator([gmnn_term(model, params)], species, members=False)
        _, ms_mean = _time_calls(mean_calc, atoms, repeats)
        out["atoms"].append(len(atoms))
        out["ms_per_call"].append(1e3 * ms)
        out["ms_per_call_mean_only"].append(1e3 * ms_mean)
        if n_pairs == 10:
            out["compile_s"] = first - ms
            nbrs = calc._lists[0].nbrs
            n_real_pairs = int(np.asarray(nbrs.mask).sum())
            peak = measured_peak_gflops()
            flops = network_flops(config, len(atoms), n_real_pairs, reverse_passes=2)
            out["peak_gflops"] = peak
            out["gflop_per_call"] = flops / 1e9
            out["flop_floor_ms"] = flops / (peak * 1e9) * 1e3
            out["pairs_300"] = n_real_pairs
    per_atom = np.array(out["ms_per_call"]) / np.array(out["atoms"])
    out["time_per_atom_growth"] = float(per_atom[-1] / per_atom[0])
    out["ratio_to_floor_300"] = out["ms_per_call"][0] / out["flop_floor_ms"]
    out["train_structures_per_s"] = {kind: _training_rate(base, quick, kind) for kind in ("shallow", "full")}
    out["peak_mem_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


def training_frames(base: Atoms, n: int) -> list[Atoms]:
    """``n`` rattled copies of ``base`` with random energy, force and stress labels: training
    throughput needs the data's shapes, not their physics (also benchmarks/apax_training.py)."""
    rng = np.random.default_rng(0)
    frames = []
    for _ in range(n):
        a = base.copy()
        a.positions += rng.normal(scale=0.05, size=a.positions.shape)
        a.calc = SinglePointCalculator(a, energy=float(rng.normal()), forces=rng.normal(size=(len(a), 3)),
                                       stress=rng.normal(scale=1e-3, size=6))
        frames.append(a)
    return frames


def training_rate(train_frames: list[Atoms], val_frames: list[Atoms], ensemble: str, epochs: int) -> float:
    """Structures per second of training with the seed-1 defaults (ModelConfig: Gaussian 7,
    r 0.7-5.5 Å, 512-512; TrainConfig: E+F+stress MSE 1/4/0.2), 2 members, batch 2, from the
    median epoch time (validation included) of epochs 2 on: epoch 0 is evaluation, 1 compiles.
    Also benchmarks/apax_training.py."""
    import tempfile

    from lotf.training.config import TrainConfig
    from lotf.training.trainer import train

    with tempfile.TemporaryDirectory() as tmp:
        result = train(train_frames, val_frames, {"n_members": 2, "ensemble": ensemble},
                       TrainConfig(epochs=epochs, batch_size=2, progress=False), tmp)
    steady = [row["seconds"] for row in result.history[2:]]
    return len(train_frames) / float(np.median(steady))


def _training_rate(base: Atoms, quick: bool, ensemble: str) -> float:
    frames = training_frames(base, 8)
    return training_rate(frames, frames[:2], ensemble, 2 if quick else 4)


def warmstart_benchmark(epochs: int = 100, n_train: int = 60, seeds: tuple[int, ...] = (0, 1, 2),
                        warm_lr_factor: float = 1.0, new_fraction: float = 0.8) -> dict:
    """Continual learning: epochs a warm start and a fresh start need after 20 % new data.

    One run per data seed (:func:`_warmstart_run`); the epochs are summed over the seeds and
    ``ratio`` is warm over scratch of the sums (a single run moves by a few epochs between
    seeds). ``runs`` holds each seed's numbers.
    """
    if not 0 <= new_fraction < 1:
        raise ValueError(f"new fraction must be in [0, 1), got {new_fraction}")
    if not seeds:
        raise ValueError("no seeds given")
    t0 = time.perf_counter()
    runs = [_warmstart_run(epochs, n_train, seed, warm_lr_factor, new_fraction) for seed in seeds]
    scratch = sum(r["epochs_to_match_scratch"] for r in runs)
    warm = [r["epochs_to_match_warm"] for r in runs]
    warm_sum = None if None in warm else sum(warm)
    return {"epochs": epochs, "n_train": n_train, "seeds": list(seeds),
            "warm_start_lr_factor": warm_lr_factor, "warm_start_new_fraction": runs[0]["warm_start_new_fraction"],
            "epochs_to_match_scratch": scratch, "epochs_to_match_warm": warm_sum,
            "ratio": warm_sum / scratch if warm_sum is not None else None,
            "ratio_per_seed": [r["ratio"] for r in runs], "runs": runs, "wall_s": time.perf_counter() - t0}


def _warmstart_run(epochs: int, n_train: int, seed: int, warm_lr_factor: float, new_fraction: float) -> dict:
    """One data seed of :func:`warmstart_benchmark`.

    EMT-labelled Cu/Al cells (32 atoms, rattled and strained), a reduced GMNN (64-64,
    shallow-2) with the seed-1 learning rates and linear schedule and the per_atom loss. A model
    trained from scratch for ``epochs`` on ``n_train`` structures is the start. 20 % new
    structures from a wider distribution (rattle 0.14 Å instead of 0.1 Å, as a new sampling
    iteration brings) are added; the validation set has both kinds. The grown set is trained
    from scratch for ``epochs``; its best validation loss (+5 %) is the target, and
    ``epochs_to_match_scratch`` is the first epoch that reaches it. A warm start is run with a
    budget of fewer epochs (its schedule over that budget: ``warm_start_epochs``): 10 % to 50 %
    of ``epochs`` in steps of 5 %, then 60, 80 and 100 %, and once one reaches the target the
    budgets between it and the last that did not are bisected, so ``epochs_to_match_warm`` (the
    smallest budget whose kept model reaches the target; None if none does) is to the epoch, as
    the from-scratch count is. Warm starts run at ``warm_lr_factor`` times the rates
    (``warm_start_lr_factor``, after the 2-epoch ramp). Measured with 100 epochs: factor 1
    reached the target in 50 warm epochs, 2 and 3 in 30, 4 in 25 (ratio 0.29), but 3x the rates
    also brought the from-scratch run to that target in 44 epochs instead of 85, so a larger
    factor mostly measures that the preset's rates are low for this model; the default compares
    at the same rates (README "Warm starts keep the model"). Warm epochs give ``new_fraction``
    of their draws to the new structures (``warm_start_new_fraction``; 0: uniform, the training
    default), at the same cost per epoch as the fresh run's.
    """
    import tempfile

    from lotf.demo import emt_frames
    from lotf.training.config import TrainConfig
    from lotf.training.trainer import train

    model = {"hidden": [64, 64], "n_radial": 4, "n_basis": 6, "r_max": 4.5, "ensemble": "shallow", "n_members": 2}
    old = emt_frames(n_train, seed=seed)
    new = _rattled(emt_frames(n_train // 5, seed=seed + 1), scale=0.14, seed=seed)
    val = emt_frames(10, seed=seed + 2) + _rattled(emt_frames(5, seed=seed + 3), scale=0.14, seed=seed + 1)
    config = TrainConfig(epochs=epochs, batch_size=4, seed=seed, progress=False, loss_normalisation="per_atom")
    out: dict = {"seed": seed, "n_new": len(new), "n_val": len(val), "warm_start_new_fraction": new_fraction,
                 "warm": []}
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        first = train(old, val, model, config, f"{tmp}/first")
        scratch = train(old + new, val, model, config, f"{tmp}/scratch")
        target = 1.05 * scratch.metrics["val_loss"]
        out.update(first_val_loss_on_grown_val=None, target_val_loss=target,
                   epochs_to_match_scratch=next(r["epoch"] for r in scratch.history if r["val_loss"] <= target),
                   scratch_val_forces_mae=scratch.metrics["val_forces_mae"], epochs_to_match_warm=None)

        def reaches(budget: int) -> bool:
            warm_config = TrainConfig(**{**config.to_dict(), "warm_start_epochs": budget,
                                         "warm_start_lr_factor": warm_lr_factor,
                                         "warm_start_new_fraction": new_fraction})
            warm = train(old + new, val, model, warm_config, f"{tmp}/warm{budget}", init_from=first.model_dir)
            out["first_val_loss_on_grown_val"] = warm.history[0]["val_loss"]
            out["warm"].append({"epochs": budget, "val_loss": warm.metrics["val_loss"],
                                "val_forces_mae": warm.metrics["val_forces_mae"],
                                "n_train_new": warm.metrics["n_train_new"]})
            return warm.metrics["val_loss"] <= target

        short = 0  # the largest budget known to fall short
        grid = sorted({max(1, round(f * epochs)) for f in (0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5, 0.6, 0.8, 1.0)})
        for budget in grid:
            if reaches(budget):
                while budget - short > 1:
                    middle = (short + budget) // 2
                    short, budget = (short, middle) if reaches(middle) else (middle, budget)
                out["epochs_to_match_warm"] = budget
                break
            short = budget
    out["wall_s"] = time.perf_counter() - t0
    warm_epochs = out["epochs_to_match_warm"]
    out["ratio"] = warm_epochs / out["epochs_to_match_scratch"] if warm_epochs is not None else None
    return out


def _rattled(frames: list[Atoms], scale: float, seed: int) -> list[Atoms]:
    """Copies rattled further and relabelled with EMT."""
    from ase.calculators.emt import EMT

    out = []
    for k, atoms in enumerate(frames):
        atoms = atoms.copy()
        atoms.rattle(scale, seed=seed * 1000 + k)
        atoms.calc = EMT()
        results = dict(energy=atoms.get_potential_energy(), forces=atoms.get_forces(), stress=atoms.get_stress())
        atoms.calc = SinglePointCalculator(atoms, **results)
        out.append(atoms)
    return out
