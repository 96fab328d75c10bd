"""CP2K wall time per structure through the labelling pipeline vs bare `cp2k.psmp` on the same
inputs (cheap settings, a water molecule, 4 rattled structures). Prints one JSON object."""

from __future__ import annotations

import json
import subprocess
import tempfile
import time
from pathlib import Path

from ase.build import molecule

from lotf.reference.cp2k import cp2k_command, load_settings, render_input
from lotf.reference.labelling import label_frames

SETTINGS = Path(__file__).resolve().parents[1] / "data" / "cp2k" / "test-pbe-szv.yaml"


def structures(n: int = 4):
    frames = []
    for k in range(n):
        water = molecule("H2O")
        water.rattle(0.02, seed=k)
        water.set_cell([5.0, 5.0, 5.0])
        water.center()
        water.pbc = True
        frames.append(water)
    return frames


def cp2k_benchmark(n: int = 4) -> dict:
    frames = structures(n)
    settings = load_settings(SETTINGS)
    cmd, env = cp2k_command()
    bare = []
    with tempfile.TemporaryDirectory() as tmp:
        for k, atoms in enumerate(frames):  # atomic guess each time, as a standalone run would
            (Path(tmp) / f"in{k}.inp").write_text(render_input(settings, atoms))
            start = time.perf_counter()
            subprocess.run(cmd + ["-i", f"in{k}.inp", "-o", f"out{k}.out"], cwd=tmp, env=env, check=True,
                           capture_output=True)
            bare.append(time.perf_counter() - start)
        start = time.perf_counter()
        _, report = label_frames(frames, settings, store=Path(tmp) / "store", progress=False)
        pipeline = time.perf_counter() - start
    s_bare = sum(bare) / n
    s_pipeline = pipeline / n
    return {"n_structures": n, "s_bare": s_bare, "s_pipeline": s_pipeline,
            "overhead": s_pipeline / s_bare - 1.0, "n_ok": report.n_ok}


if __name__ == "__main__":
    print(json.dumps(cp2k_benchmark()))
