"""Issue 12, item 2: every input file is a DVC dependency of exactly the stages that read it.

A real git + DVC project runs a GROMACS seed and three density nodes; after changing one input
file (an OPLS topology, one experimental table) ``dvc status`` must name exactly its readers.
"""

import json
import shutil
import subprocess
from pathlib import Path

import ase.io
import pytest
import yaml
import zntrack

from lotf.demo import emt_frames
from tests.campaigns.test_build import REPO, fresh_project, lotf


def stale_stages() -> set[str]:
    run = subprocess.run(["dvc", "status", "--json"], capture_output=True, text=True, check=True)
    return set(json.loads(run.stdout or "{}"))


def touch(path: str) -> None:
    with open(path, "a") as fh:
        fh.write("# edited\n")


@pytest.mark.slow  # a GROMACS seed and a dvc repro (about 40 s)
def test_changing_one_input_puts_exactly_its_readers_out_of_date(dvc_project):
    from lotf.nodes import LoadFrames
    from lotf.nodes.analysis import Density, DensityComparison
    from lotf.nodes.seed import GromacsSeed

    for folder in ("opls", "experimental"):
        shutil.copytree(REPO / "data" / folder, dvc_project / "data" / folder)
    ase.io.write("box.extxyz", emt_frames(6, seed=1))

    with zntrack.Project() as project:
        GromacsSeed(species={"bmim": 2, "bf4": 2}, density=0.6, n_steps=20, interval=10, seed=1)
        box = LoadFrames(file="box.extxyz")
        bmim = Density(data=box, temperature=298.15, name="DensityBmim")
        water = Density(data=box, temperature=300.0, experimental="data/experimental/water_density.csv",
                        name="DensityWater")
        DensityComparison(densities=[bmim, water], labels=["a", "b"], experimental=None, name="Comparison")
    project.repro()
    assert stale_stages() == set()
    assert Density.from_rev("DensityWater").metrics["experimental_g_cm3"] == pytest.approx(0.9965, abs=1e-3)

    expectations = {
        "data/experimental/water_density.csv": {"DensityWater"},
        "data/experimental/bmim_bf4_density.csv": {"DensityBmim"},
        "data/opls/bf4.itp": {"GromacsSeed"},
        "data/opls/clandp_atomtypes.itp": {"GromacsSeed"},
        "data/experimental/bmim_bf4_self_diffusion.csv": set(),  # nothing here reads it
    }
    for path, readers in expectations.items():
        original = Path(path).read_bytes()
        touch(path)
        assert stale_stages() == readers, path
        Path(path).write_bytes(original)
        assert stale_stages() == set()


def test_campaign_graph_declares_its_input_files(tmp_path):
    """The built BMIM-BF4 graph: seeds depend on the topologies, observables on their tables."""
    project = fresh_project(tmp_path / "p")
    run = lotf("build", "bmim_bf4", "--profile", "smoke", cwd=project)
    assert run.returncode == 0, run.stderr
    stages = yaml.safe_load((project / "dvc.yaml").read_text())["stages"]
    checked = 0
    for name, stage in stages.items():
        deps = set(stage.get("deps", []))
        kind = stage["cmd"].split()[2].rsplit(".", 1)[-1]
        if kind == "GromacsSeed":
            assert {"data/opls/bmim.itp", "data/opls/bf4.itp", "data/opls/clandp_atomtypes.itp"} <= deps, name
        elif kind in ("Density", "DensityComparison", "ProductionMD"):
            assert "data/experimental/bmim_bf4_density.csv" in deps, name
        elif kind == "ArrheniusPlot":
            assert "data/experimental/bmim_bf4_self_diffusion.csv" in deps, name
        else:
            assert not any(d.startswith(("data/opls", "data/experimental")) for d in deps), name
            continue
        checked += 1
    assert checked >= 4
    productions = {k: v for k, v in yaml.safe_load((project / "params.yaml").read_text()).items() if "_NVT" in k}
    assert productions and all(v["density"] is None for v in productions.values())  # from the table, at run time
    params = (project / "params.yaml").read_text()
    assert "bmim_bf4_density" not in params and "self_diffusion" not in params  # paths, not parameters


def test_a_seed_without_its_topology_fails_in_one_line():
    from lotf.nodes.seed import GromacsSeed

    seed = GromacsSeed(species={"bmim": 1, "bf4": 1}, topologies=["data/opls/bmim.itp"])
    with pytest.raises(ValueError, match=r"^GromacsSeed.topologies: bf4.itp, clandp_atomtypes.itp not among"):
        seed._itp_dir()


def test_production_compresses_to_the_table_density_read_at_run_time(tmp_path, monkeypatch):
    from lotf.analysis.density import experimental_density
    from lotf.nodes.production import ProductionMD

    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    table = tmp_path / "data" / "rho.csv"
    table.write_text("T_K,density_g_cm3\n280,1.30\n320,1.26\n")
    md = ProductionMD(data=[], model=None, temperature=300.0, density_table="data/rho.csv")
    assert md._target_density() == pytest.approx(1.28)
    table.write_text("T_K,density_g_cm3\n280,1.10\n320,1.06\n")  # replaced estimates
    assert md._target_density() == pytest.approx(1.08)
    assert ProductionMD(data=[], model=None, temperature=300.0, density=1.2, density_table="data/rho.csv"
                        )._target_density() == 1.2  # an explicit density wins
    assert experimental_density(300.0, "data/rho.csv") == pytest.approx(1.08)
