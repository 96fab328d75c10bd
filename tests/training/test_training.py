"""Training: statistics, losses, overfitting, warm start, determinism, bad input, CLI."""

import json
import subprocess
import sys

import ase.io
import jax.numpy as jnp
import numpy as np
import pytest
from ase.calculators.singlepoint import SinglePointCalculator

import lotf
from lotf.demo import emt_frames
from lotf.potential.io import load_model
from lotf.potential.model import ConfigError
from lotf.training import statistics
from lotf.training.config import LossTerm, TrainConfig, load_preset
from lotf.training.data import DataError
from lotf.training.loss import _pointwise
from lotf.training.trainer import train

TINY = {"hidden": [16], "n_radial": 2, "n_basis": 4, "r_max": 4.5, "n_members": 2, "ensemble": "shallow",
        "contractions": [0, 1, 2, 3]}


def relabel(atoms, **labels):
    copy = atoms.copy()
    copy.calc = SinglePointCalculator(copy, **labels)
    return copy


@pytest.fixture(scope="module")
def frames():
    return emt_frames(14, seed=1)


@pytest.fixture(scope="module")
def trained(frames, tmp_path_factory):
    out = tmp_path_factory.mktemp("model")
    config = TrainConfig(epochs=60, batch_size=2, progress=False, lr_network=0.01, schedule="constant")
    return train(frames[:10], frames[10:], TINY, config, out)


def test_regression_shift_recovers_per_element_energies():
    rng = np.random.default_rng(0)
    counts = rng.integers(0, 20, size=(30, 3))
    true = np.array([-3.1, -0.7, -5.2])
    shift = statistics.regression_shift(counts @ true, counts, regularisation=0.0)
    np.testing.assert_allclose(shift, true, atol=1e-10)


def test_nll_and_mse_pointwise_against_hand_values():
    pred = jnp.array([[1.0, 3.0]])  # two members: mean 2, sample variance 2
    nll = _pointwise("nll", pred, jnp.array([1.0]), LossTerm("nll"), 1)
    assert float(nll[0]) == pytest.approx(0.5 * (1.0 / 2.0 + np.log(2.0)))
    mse = _pointwise("mse", pred, jnp.array([1.0]), LossTerm("mse"), 1)
    assert float(mse[0]) == pytest.approx((0.0 + 4.0) / 2)


def test_training_overfits_ten_structures(trained):
    curve = trained.history
    assert curve[-1]["train_loss"] < 0.05 * curve[0]["train_loss"]
    assert trained.metrics["train_energy_mae"] < 10.0  # meV/atom
    # mean |force component| of these rattled EMT cells is ~930 meV/Å
    assert trained.metrics["train_forces_mae"] < 150.0
    lines = (trained.model_dir / "learning_curve.csv").read_text().splitlines()
    assert lines[0].startswith("epoch,train_loss,val_loss") and len(lines) == 61
    assert json.loads((trained.model_dir / "metrics.json").read_text())["best_epoch"] == trained.best_epoch


def test_calculator_from_model_dir_reproduces_validation_metric(trained, frames):
    calc = lotf.load_calculator(trained.model_dir)
    errors = []
    for atoms in frames[10:]:
        calc.calculate(atoms.copy(), ["energy", "forces"])
        errors.append(np.abs(calc.results["forces"] - atoms.get_forces()))
    assert 1e3 * np.mean(errors) == pytest.approx(trained.metrics["val_forces_mae"], rel=1e-4)
    assert calc.results["forces_ensemble"].shape == (32, 3, 2)


def test_warm_start_continues_from_the_earlier_model(trained, frames, tmp_path):
    config = TrainConfig(epochs=2, batch_size=2, progress=False, lr_network=1e-4, lr_embedding=1e-4)
    warm = train(frames[:10], frames[10:], TINY, config, tmp_path / "warm", init_from=trained.model_dir)
    assert warm.history[0]["train_loss"] < 3 * trained.history[-1]["train_loss"]
    assert warm.history[0]["train_loss"] < 0.2 * trained.history[0]["train_loss"]
    with pytest.raises(ConfigError, match="'hidden' differs"):
        train(frames[:10], frames[10:], {**TINY, "hidden": [8]}, config, tmp_path / "bad", init_from=trained.model_dir)


def test_fixed_seed_gives_identical_parameters(frames, tmp_path):
    config = TrainConfig(epochs=2, batch_size=3, progress=False, seed=7)
    params = []
    for name in ("a", "b"):
        train(frames[:6], frames[10:], TINY, config, tmp_path / name)
        params.append((tmp_path / name / "params.msgpack").read_bytes())
    assert params[0] == params[1]
    train(frames[:6], frames[10:], TINY, TrainConfig(epochs=2, batch_size=3, progress=False, seed=8), tmp_path / "c")
    assert (tmp_path / "c" / "params.msgpack").read_bytes() != params[0]


def test_bad_input_fails_before_compute(frames, tmp_path):
    config = TrainConfig(epochs=1, progress=False)
    no_forces = frames[:2] + [relabel(frames[2], energy=1.0)]
    with pytest.raises(DataError, match="train frame 2: no forces label"):
        train(no_forces, frames[10:], TINY, config, tmp_path / "x")
    nan = [frames[0], relabel(frames[1], energy=float("nan"), forces=frames[1].get_forces()), frames[2]]
    with pytest.raises(DataError, match="train frame 1: NaN"):
        train(nan, frames[10:], TINY, config, tmp_path / "x")
    with pytest.raises(DataError, match="validation: empty data set"):
        train(frames[:3], [], TINY, config, tmp_path / "x")
    preset = tmp_path / "p.yaml"
    preset.write_text("model: {hiden: [8]}\n")
    with pytest.raises(ConfigError, match="unknown key 'hiden'"):
        load_preset(preset)
    with pytest.raises(ConfigError, match="unknown key 'epoch'"):
        TrainConfig.from_dict({"epoch": 3})


def test_presets_load_with_seed_values():
    model, config = load_preset("bmim_initial")
    assert model["r_max"] == 5.5 and model["hidden"] == [512, 512] and config.lr_shift == 0.05
    assert config.forces_loss.weight == 4.0 and config.stress_loss.weight == 0.2
    model, config = load_preset("water_erbs")
    assert model["n_members"] == 16 and config.energy_loss.kind == "nll"
    assert load_preset("bmim_final")[0]["r_max"] == 6.0


def test_cli_train_and_predict(frames, tmp_path):
    ase.io.write(tmp_path / "train.extxyz", frames[:4])
    ase.io.write(tmp_path / "val.extxyz", frames[10:12])
    preset = tmp_path / "tiny.yaml"
    preset.write_text(json.dumps({"model": TINY, "training": {"epochs": 2, "batch_size": 2}}))
    lotf_cmd = [sys.executable, "-m", "lotf.cli"]
    run = subprocess.run(lotf_cmd + ["train", str(preset), "--train", str(tmp_path / "train.extxyz"),
                                     "--val", str(tmp_path / "val.extxyz"), "--out", str(tmp_path / "m")],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    run = subprocess.run(lotf_cmd + ["predict", str(tmp_path / "m"), str(tmp_path / "val.extxyz"),
                                     str(tmp_path / "pred.extxyz")], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    predicted = ase.io.read(tmp_path / "pred.extxyz", ":")
    calc = lotf.load_calculator(tmp_path / "m")
    calc.calculate(frames[10].copy(), ["energy"])
    assert predicted[0].get_potential_energy() == pytest.approx(calc.results["energy"], rel=1e-6)
    # with lotf imported, ASE's extxyz reader files the known property under calc.results
    sigma = predicted[0].arrays.get("forces_uncertainty", predicted[0].calc.results.get("forces_uncertainty"))
    assert sigma.shape == (32, 3) and np.all(sigma >= 0)
    bad = subprocess.run(lotf_cmd + ["predict", str(tmp_path / "m"), str(tmp_path / "missing.xyz"),
                                     str(tmp_path / "o.xyz")], capture_output=True, text=True)
    assert bad.returncode != 0 and bad.stderr.strip().count("\n") == 0 and "does not exist" in bad.stderr


def test_partial_last_batch_and_non_periodic_frames_train_finitely(frames, tmp_path):
    from ase.build import molecule

    config = TrainConfig(epochs=2, batch_size=2, progress=False)
    result = train(frames[:3], frames[10:13], TINY, config, tmp_path / "odd")  # 3 = one full + one half batch
    assert all(np.isfinite(row["train_loss"]) for row in result.history)
    mols = []
    for k in range(3):
        mol = molecule("CH4")
        mol.rattle(0.05, seed=k)
        mol.calc = SinglePointCalculator(mol, energy=-1.0 - 0.1 * k, forces=np.zeros((5, 3)))
        mols.append(mol)
    result = train(mols, mols[:1], {**TINY, "r_max": 3.0}, config, tmp_path / "mol")
    assert all(np.isfinite(row["train_loss"]) for row in result.history)
