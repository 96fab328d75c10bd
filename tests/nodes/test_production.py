"""ProductionMD: compression to a density, equilibration, production, and resuming after a kill."""

import types

import numpy as np
import pytest

from lotf.demo import emt_frames
from lotf.nodes.production import ProductionMD
from lotf.nodes.scratch import scratch_root


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("LOTF_SCRATCH", raising=False)
    return tmp_path


@pytest.fixture
def model(emt_model_dir):
    return types.SimpleNamespace(model_dir=emt_model_dir, name="model")


def density(atoms):
    return atoms.get_masses().sum() / atoms.get_volume() * 1.66053906660


def production(model, name="prod", **options):
    settings = dict(data=emt_frames(1), model=model, temperature=300.0, timestep=1.0, density=None,
                    compress_steps=30, equilibration_steps=10, steps=60, sampling_rate=10, seed=3)
    settings.update(options)
    return ProductionMD(name=name, **settings)


def test_compression_reaches_the_target_density(workdir, model):
    start = emt_frames(1)[0]
    target = 1.08 * density(start)
    node = production(model, density=target, steps=20)
    node.run()
    assert node.metrics["density_start_production_g_cm3"] == pytest.approx(target, rel=1e-9)
    frames = node.frames
    assert len(frames) == 2 and node.metrics["frames"] == 2
    assert all(density(a) == pytest.approx(target, rel=1e-6) for a in frames)  # NVT keeps the volume
    assert node.metrics["density_mean_g_cm3"] == pytest.approx(target, rel=1e-9)
    assert not any(scratch_root().glob("*"))  # the scratch folder is gone after a finished run


def test_npt_production_changes_the_volume(workdir, model):
    node = production(model, ensemble="npt", barostat={"compressibility": 1e-4, "tau_p": 20.0}, steps=40)
    node.run()
    volumes = [a.get_volume() for a in node.frames]
    assert len(volumes) == 4 and np.ptp(volumes) > 0
    assert node.metrics["density_mean_g_cm3"] == pytest.approx(np.mean([density(a) for a in node.frames]))


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, shared_emt_model_dir):
    """The run that every killed run must reproduce (one run for all the kill points)."""
    model = types.SimpleNamespace(model_dir=shared_emt_model_dir, name="model")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(tmp_path_factory.mktemp("uninterrupted"))
        patch.delenv("LOTF_SCRATCH", raising=False)
        reference = production(model, name="reference", density=1.03 * density(emt_frames(1)[0]))
        reference.run()
        return reference.frames


@pytest.mark.parametrize("killed_in", ["compress", "equilibrate", "production"])
def test_killed_run_resumes_with_the_same_trajectory(workdir, shared_emt_model_dir, uninterrupted, monkeypatch,
                                                     killed_in):
    from lotf.dynamics import md

    model = types.SimpleNamespace(model_dir=shared_emt_model_dir, name="model")
    expected = uninterrupted

    interrupted = production(model, density=1.03 * density(emt_frames(1)[0]))
    original = md.MDRun._save_checkpoint
    calls = {"n": 0}

    checkpoint_name = "checkpoint.npz" if killed_in == "production" else f"{killed_in}.checkpoint.npz"

    def die_after_first_checkpoint(self, *args, **kwargs):
        original(self, *args, **kwargs)
        if self.checkpoint.name == checkpoint_name:
            calls["n"] += 1
            raise KeyboardInterrupt  # the job is killed right after this phase's first checkpoint

    monkeypatch.setattr(md.MDRun, "_save_checkpoint", die_after_first_checkpoint)
    setup = md.MDRun._setup

    def small_blocks(self):  # several blocks, so the kill comes mid-run
        self.block_steps = 20
        setup(self)

    monkeypatch.setattr(md.MDRun, "_setup", small_blocks)
    with pytest.raises(KeyboardInterrupt):
        interrupted.run()
    scratch = list(scratch_root().glob("prod-*"))
    assert calls["n"] == 1 and len(scratch) == 1 and (scratch[0] / checkpoint_name).exists()
    assert (scratch[0] / "prepared.npz").exists() == (killed_in == "production")

    monkeypatch.setattr(md.MDRun, "_save_checkpoint", original)
    resumed = production(model, density=1.03 * density(emt_frames(1)[0]))
    resumed.run()
    frames = resumed.frames
    assert [a.info["step"] for a in frames] == [a.info["step"] for a in expected]
    for a, b in zip(frames, expected):
        np.testing.assert_allclose(a.positions, b.positions, atol=1e-10)
        assert a.get_potential_energy() == pytest.approx(b.get_potential_energy(), abs=1e-10)


def test_bad_settings_fail_early(workdir, model):
    with pytest.raises(ValueError, match="ensemble"):
        production(model, ensemble="nve").run()
    with pytest.raises(ValueError, match="density"):
        production(model, density=-1.0).run()


def test_every_phase_runs_with_its_own_seed(workdir, model, monkeypatch):
    from lotf.dynamics import md
    from lotf.nodes.production import phase_seed

    seeds = []
    original = md.MDRun.run

    def record(self):
        seeds.append((self.trajectory.stem.split(".")[0], self.seed))
        return original(self)

    monkeypatch.setattr(md.MDRun, "run", record)
    target = 1.03 * density(emt_frames(1)[0])
    production(model, density=target, compress_steps=10, equilibration_steps=10, steps=10).run()
    assert [name for name, _ in seeds] == ["compress", "equilibrate", "frames"]
    used = [seed for _, seed in seeds]
    assert len(set(used)) == 3  # no two phases share their momenta and thermostat noise
    assert used == [phase_seed(3, p) for p in ("compress", "equilibrate", "production")]
    # derived deterministically from the node seed: the same for seed 3 again, others for seed 4
    assert [phase_seed(3, p) for p in ("compress", "equilibrate", "production")] == used
    assert not set(used) & {phase_seed(4, p) for p in ("compress", "equilibrate", "production")}
    with pytest.raises(ValueError, match="unknown ProductionMD phase"):
        phase_seed(3, "cooling")


class PairedBonds:
    """H2-like molecules (atoms 2k, 2k+1) held by harmonic bonds of stiffness ``k`` eV/Å² at 0.6 Å
    (k = 0: the atoms fly apart); no intermolecular forces. A minimal ASE calculator for the
    molecule checks. (Real H2, 0.74 Å, sits at 1.19 x the H-H covalent radii sum: half its
    vibrations would read as broken at the 1.2 x bond criterion.)"""

    def __init__(self, k: float):
        from ase.calculators.calculator import Calculator, all_changes

        stiffness = k

        class _Calc(Calculator):
            implemented_properties = ["energy", "forces"]

            def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
                super().calculate(atoms, properties, system_changes)
                pos = self.atoms.positions
                vec = pos[1::2] - pos[0::2]
                r = np.linalg.norm(vec, axis=1)
                forces = np.zeros_like(pos)
                pull = (stiffness * (r - 0.6) / r)[:, None] * vec
                forces[0::2], forces[1::2] = pull, -pull
                self.results = {"energy": float(0.5 * stiffness * np.sum((r - 0.6) ** 2)), "forces": forces}

        self.calc = _Calc()

    def get_calculator(self):
        return self.calc


def hydrogen_box(n=8, length=10.0, seed=0):
    import ase

    rng = np.random.default_rng(seed)
    centres = rng.uniform(1.0, length - 1.0, (n, 3))
    positions = np.concatenate([centres, centres + [0.6, 0.0, 0.0]], axis=1).reshape(-1, 3)
    return ase.Atoms("H" * (2 * n), positions=positions, cell=[length] * 3, pbc=True)


def test_production_of_a_molecular_system_stops_when_a_molecule_breaks(workdir):
    from lotf.nodes.production import changed_molecules, is_molecular

    box = hydrogen_box()
    assert is_molecular(box) and not is_molecular(emt_frames(1)[0])  # a metal is one "molecule"
    common = dict(data=[box], temperature=500.0, timestep=0.5, density=None, compress_steps=0, steps=200,
                  sampling_rate=5, seed=1, thermostat="langevin")
    intact = ProductionMD(name="intact", model=PairedBonds(100.0), equilibration_steps=0, **common)
    intact.run()
    assert intact.metrics["stop_reason"] == "none" and intact.metrics["molecules_intact"] == 1
    assert len(intact.frames) == 40 and changed_molecules(box, intact.frames[-1]) == ""

    broken = ProductionMD(name="broken", model=PairedBonds(0.0), equilibration_steps=0, **common)
    broken.run()  # free atoms at 500 K pass 1.5 x the H-H covalent radii sum (0.93 Å) within ~20 fs
    assert broken.metrics["stop_reason"] == "bond_graph" and broken.metrics["molecules_intact"] == 0
    assert 0 < broken.metrics["steps_done"] < 200 and len(broken.frames) < 40

    early = ProductionMD(name="early", model=PairedBonds(0.0), equilibration_steps=100, **common)
    early.run()  # broken during the equilibration: no production at all
    assert early.metrics["molecules_intact"] == 0 and early.metrics["frames"] == 0
    assert early.metrics["stop_reason"].startswith("molecules changed before production: lost 8 x H2")
    assert early.frames == []


def test_analysis_of_a_run_without_frames_reports_nan(workdir):
    import h5py

    from lotf.nodes.analysis import Density, Dihedrals, Diffusion

    empty = workdir / "empty.h5"
    h5py.File(empty, "w").close()  # what a production run that never started leaves
    run = types.SimpleNamespace(frames_path=empty, name="production")
    density = Density(data=run, temperature=300.0, experimental=None, name="density")
    density.run()
    assert np.isnan(density.metrics["density_g_cm3"]) and density.metrics["n_frames"] == 0
    dihedrals = Dihedrals(data=run, name="dihedrals")
    dihedrals.run()
    assert dihedrals.metrics == {"n_frames": 0}
    diffusion = Diffusion(data=run, groups=["H"], name="diffusion")
    diffusion.run()
    assert np.isnan(diffusion.metrics["H"]["D_A2_per_ns"])
