"""NPT density of BMIM-BF4 with our OPLS-AA (CL&P) topologies against experiment; prints JSON.

Experiment: 1.20 g/cm^3 at 298 K (Hayamizu et al., as cited by seed 1). Passes within 5 %.
Measured (2 cores, about 10 min): 32 pairs, 9.0 A cutoff, 1 ns, last 500 ps: 1.184 +- 0.003 g/cm^3
(-1.3 %); 20 pairs, 7.7 A cutoff: 1.168 g/cm^3 (-2.7 %).

    .venv/bin/python benchmarks/opls_density.py            # defaults: 32 pairs, 1 ns
    .venv/bin/python benchmarks/opls_density.py --pairs 16 --ps 150 --average-ps 75   # quick
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from lotf.reference import gromacs, structures

EXPERIMENT = 1.20  # g/cm^3 at 298 K


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pairs", type=int, default=32, help="ion pairs")
    p.add_argument("--start-density", type=float, default=1.10, help="Packmol density, g/cm^3")
    p.add_argument("--temperature", type=float, default=298.15, help="K")
    p.add_argument("--ps", type=float, default=1000.0, help="NPT length in ps")
    p.add_argument("--average-ps", type=float, default=500.0, help="average over the last ... ps")
    p.add_argument("--timestep", type=float, default=2.0, help="fs (C-H bonds constrained, as in CL&P)")
    p.add_argument("--cutoff", type=float, default=None, help="Angstrom; default from the box")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--workdir", type=Path, default=None)
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args()

    species = {"bmim": args.pairs, "bf4": args.pairs}
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="lotf_opls_density_"))
    box = structures.pack_species(species, args.start_density, seed=args.seed)
    # the box shrinks in NPT: take the cutoff from the box at the experimental density
    cutoff = args.cutoff or gromacs.auto_cutoff(box) * (args.start_density / EXPERIMENT / 1.03) ** (1 / 3)
    settings = gromacs.GromacsSettings(cutoff=cutoff, constraints="h-bonds", n_threads=args.threads)
    n_steps = round(args.ps * 1000 / args.timestep)
    interval = max(1, round(1000 / args.timestep))  # one frame per ps
    t0 = time.perf_counter()
    frames = gromacs.run_md(
        box,
        species,
        workdir,
        "npt",
        args.temperature,
        n_steps,
        args.timestep,
        interval,
        args.seed,
        pressure=1.01325,
        settings=settings,
    )
    wall = time.perf_counter() - t0
    t = np.array([a.info["time_fs"] for a in frames]) / 1000.0  # ps
    rho = np.array([a.info["density"] for a in frames])
    tail = rho[t >= t[-1] - args.average_ps]
    # block average (5 blocks) for an honest error bar on correlated data
    blocks = np.array([b.mean() for b in np.array_split(tail, 5)])
    mean = float(tail.mean())
    result = {
        "system": f"{args.pairs} BMIM-BF4 pairs ({len(box)} atoms)",
        "temperature_K": args.temperature,
        "npt_ps": args.ps,
        "averaged_ps": args.average_ps,
        "cutoff_A": round(cutoff, 3),
        "timestep_fs": args.timestep,
        "density_g_cm3": round(mean, 4),
        "density_err_g_cm3": round(float(blocks.std(ddof=1) / np.sqrt(len(blocks))), 4),
        "density_experiment_g_cm3": EXPERIMENT,
        "relative_error": round((mean - EXPERIMENT) / EXPERIMENT, 4),
        "within_5_percent": bool(abs(mean - EXPERIMENT) / EXPERIMENT < 0.05),
        "start_density_g_cm3": args.start_density,
        "wall_s": round(wall, 1),
        "s_per_ps": round(wall / args.ps, 3),
        "workdir": str(workdir),
    }
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
