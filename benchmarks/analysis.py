"""Analysis throughput on a synthetic 10^5-frame, 300-atom H5MD trajectory.

Builds a 10-ion-pair BMIM-BF4 box (RDKit conformers packed by Packmol at 1.21 g/cm^3,
14.58 A), moves every molecule as a rigid random walk with a known diffusion coefficient plus
per-atom jitter, writes the frames block by block in the znh5md layout (gzip, chunks of
64 frames x 64 atoms), then streams the file through the RDF (all element pairs, every
frame) and the MSD (H, B atoms and both molecular centres of mass; lags up to 50 ps, 5 blocks).

Prints one JSON object: ``s_rdf``, ``s_msd`` (wall seconds), ``peak_mem_mb`` (peak resident
set size of the whole process, ``getrusage``), plus context.  Wall times are noisy on shared
machines; compare runs of the same machine only.

    python benchmarks/analysis.py [--frames 100000] [--keep traj.h5]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def build_box(seed: int = 1):
    """10 BMIM+ and 10 BF4- packed at 1210 kg/m^3 (300 atoms)."""
    import rdkit2ase

    os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    bmim = rdkit2ase.smiles2conformers("CCCCN1C=C[N+](=C1)C", numConfs=10, randomSeed=seed)
    bf4 = rdkit2ase.smiles2conformers("[B-](F)(F)(F)F", numConfs=10, randomSeed=seed)
    return rdkit2ase.pack([bmim, bf4], [10, 10], density=1210, seed=seed)


def synthetic_blocks(
    atoms, n_frames: int, block: int, dt_fs: float, d_a2_per_ns: float, seed: int = 0
):
    """Rigid-molecule random walks (diffusion coefficient ``d_a2_per_ns``) with 0.05 A jitter."""
    from lotf.analysis.diffusion import find_molecules, make_whole

    rng = np.random.default_rng(seed)
    mols = find_molecules(atoms)
    owner = np.empty(len(atoms), int)
    for k, m in enumerate(mols):
        owner[m] = k
    base = make_whole(atoms, mols)
    L = atoms.cell.lengths()
    sigma = np.sqrt(2.0 * d_a2_per_ns * 1e-6 * dt_fs)  # per axis per frame
    walk = np.zeros((len(mols), 3))
    cells = np.tile(atoms.cell.array, (block, 1, 1))
    for start in range(0, n_frames, block):
        n = min(block, n_frames - start)
        steps = rng.normal(scale=sigma, size=(n, len(mols), 3))
        steps[0] += walk
        path = np.cumsum(steps, axis=0)
        walk = path[-1]
        pos = base[None] + path[:, owner] + rng.normal(scale=0.05, size=(n, len(atoms), 3))
        yield np.mod(pos, L), cells[:n]


def analysis_benchmark(
    frames: int = 100_000,
    dt_fs: float = 50.0,
    max_lag_ps: float = 50.0,
    n_bins: int = 200,
    compression: str | None = "gzip",
    keep: Path | None = None,
) -> dict:
    """Write the synthetic trajectory, time the streamed RDF and MSD; returns the JSON dict."""
    from lotf.analysis.diffusion import compute_msd, einstein_diffusion
    from lotf.analysis.io import write_h5md_like_znh5md
    from lotf.analysis.rdf import compute_rdf

    d_true = 50.0  # A^2/ns imposed on every molecular centre
    atoms = build_box()
    tmpdir = tempfile.TemporaryDirectory() if keep is None else None
    path = Path(keep) if keep is not None else Path(tmpdir.name) / "bench.h5"
    try:
        t0 = time.perf_counter()
        write_h5md_like_znh5md(
            path,
            atoms.numbers,
            frames,
            synthetic_blocks(atoms, frames, 1000, dt_fs, d_true),
            timestep_fs=dt_fs,
            compression=compression,
        )
        s_write = time.perf_counter() - t0
        rss_before = _rss_mb()

        t0 = time.perf_counter()
        rdf = compute_rdf(path, n_bins=n_bins, chunk_size=1000)
        s_rdf = time.perf_counter() - t0
        rss_after_rdf = _rss_mb()

        t0 = time.perf_counter()
        groups = ["H", "B", "com:C8H15N2", "com:BF4"]
        msd = compute_msd(path, groups, max_lag_fs=1000.0 * max_lag_ps, n_blocks=5, chunk_size=1000)
        s_msd = time.perf_counter() - t0
        file_mb = path.stat().st_size / 2**20
    finally:
        if tmpdir is not None:
            tmpdir.cleanup()
    D = {k: einstein_diffusion(v) for k, v in msd.items()}
    return {
        "n_frames": frames,
        "n_atoms": len(atoms),
        "file_mb": round(file_mb, 1),
        "compression": compression or "none",
        "s_write": round(s_write, 2),
        "s_rdf": round(s_rdf, 2),
        "s_msd": round(s_msd, 2),
        "rdf_frames_per_s": round(frames / s_rdf, 1),
        "msd_frames_per_s": round(frames / s_msd, 1),
        "rdf_pairs": len(rdf.g),
        "msd_groups": groups,
        "msd_max_lag_frames": int(len(msd["H"].lag_fs) - 1),
        "peak_mem_mb": round(_rss_mb(), 1),
        "rss_before_analysis_mb": round(rss_before, 1),
        "rss_after_rdf_mb": round(rss_after_rdf, 1),
        "D_imposed_A2_per_ns": d_true,
        "D_com_BF4_A2_per_ns": round(D["com:BF4"].D, 2),
        "D_com_BF4_sem": round(D["com:BF4"].sem, 2),
        "D_com_BMIM_A2_per_ns": round(D["com:C8H15N2"].D, 2),
        "cpu_count": os.cpu_count(),
        "load_avg_1min": round(os.getloadavg()[0], 2),
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=100_000)
    parser.add_argument("--dt-fs", type=float, default=50.0, help="time between stored frames")
    parser.add_argument("--max-lag-ps", type=float, default=50.0)
    parser.add_argument("--n-bins", type=int, default=200)
    parser.add_argument("--compression", choices=["gzip", "none"], default="gzip")
    parser.add_argument("--keep", type=Path, default=None, help="keep the trajectory at this path")
    args = parser.parse_args(argv)
    result = analysis_benchmark(
        args.frames,
        args.dt_fs,
        args.max_lag_ps,
        args.n_bins,
        None if args.compression == "none" else "gzip",
        args.keep,
    )
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
