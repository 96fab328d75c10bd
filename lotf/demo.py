"""``lotf demo``: a small train-and-predict example (until the smoke campaign lands).

Labels come from ASE's EMT potential on rattled Cu/Al cells, so the demo needs no DFT.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.calculators.singlepoint import SinglePointCalculator


def emt_frames(n: int, seed: int = 0) -> list:
    rng = np.random.default_rng(seed)
    frames = []
    for i in range(n):
        atoms = bulk("Cu", "fcc", a=3.6, cubic=True).repeat((2, 2, 2))
        for k in rng.choice(len(atoms), size=4, replace=False):
            atoms[k].symbol = "Al"
        atoms.rattle(0.1, seed=int(rng.integers(1 << 30)))
        atoms.set_cell(atoms.cell * (1 + 0.02 * rng.normal()), scale_atoms=True)
        atoms.calc = EMT()
        results = dict(energy=atoms.get_potential_energy(), forces=atoms.get_forces(), stress=atoms.get_stress())
        atoms.calc = SinglePointCalculator(atoms, **results)
        frames.append(atoms)
    return frames


def run_demo(directory: Path) -> None:
    import lotf
    from lotf.training.config import TrainConfig
    from lotf.training.trainer import train

    directory = Path(directory)
    frames = emt_frames(30)
    train_set, val_set, test_set = frames[:16], frames[16:22], frames[22:]
    config = TrainConfig(epochs=40, batch_size=4)
    result = train(train_set, val_set, {"hidden": [64, 64], "n_members": 2, "ensemble": "shallow", "r_max": 5.0},
                   config, directory / "model")
    calc = lotf.load_calculator(directory / "model")
    errors_e, errors_f, sigma = [], [], []
    for atoms in test_set:
        ref_e, ref_f = atoms.get_potential_energy(), atoms.get_forces()
        calc.calculate(atoms.copy(), ["energy", "forces"])
        errors_e.append(abs(calc.results["energy"] - ref_e) / len(atoms))
        errors_f.append(np.abs(calc.results["forces"] - ref_f).mean())
        sigma.append(calc.results["forces_uncertainty"].max())
    print(f"model: {directory / 'model'}  (best epoch {result.best_epoch})")
    print(f"test energy MAE {1e3 * np.mean(errors_e):.2f} meV/atom, force MAE {1e3 * np.mean(errors_f):.1f} meV/Å, "
          f"max force uncertainty {np.max(sigma):.3f} eV/Å on {len(test_set)} structures")
