"""Training: statistics, losses, overfitting, warm start, determinism, bad input, CLI."""

import json
import subprocess
import sys

import ase.io
import jax
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
    config = TrainConfig(epochs=60, batch_size=2, progress=False, lr_network=0.01, schedule="constant",
                         loss_normalisation="per_atom")
    return train(frames[:10], frames[10:], TINY, config, out)


def test_regression_shift_recovers_per_element_energies():
    rng = np.random.default_rng(0)
    counts = rng.integers(0, 20, size=(30, 3))
    true = np.array([-3.1, -0.7, -5.2])
    shift = statistics.regression_shift(counts @ true, counts, regularisation=0.0)
    np.testing.assert_allclose(shift, true, atol=1e-10)


def test_nll_and_mse_pointwise_against_hand_values():
    pred = jnp.array([[1.0, 4.0]])  # two members: mean 2.5, 1/M variance 2.25 (seed-2 eq. 6)
    nll = _pointwise("nll", pred, jnp.array([1.0]), LossTerm("nll"), 1)
    assert float(nll[0]) == pytest.approx(0.5 * (1.5**2 / 2.25 + np.log(2.25)))
    mse = _pointwise("mse", pred, jnp.array([1.0]), LossTerm("mse"), 1)
    assert float(mse[0]) == pytest.approx((0.0 + 9.0) / 2)


def test_beta_nll_gives_the_mean_an_mse_gradient_and_still_fits_the_spread():
    ref = jnp.array([1.0])

    def loss(shift, spread, beta):  # members mean 2.5 + shift, spread scaled
        pred = jnp.array([[2.5 + shift - 1.5 * spread, 2.5 + shift + 1.5 * spread]])
        return _pointwise("nll", pred, ref, LossTerm("nll", beta=beta), 1)[0]

    # value: the plain NLL for every beta (validation losses stay comparable)
    assert float(loss(0.0, 1.0, 1.0)) == pytest.approx(0.5 * (1.5**2 / 2.25 + np.log(2.25)))
    # d/d(mean): beta=1 gives the residual (as 0.5 (mu - y)^2 would), plain NLL residual / variance
    assert float(jax.grad(loss)(0.0, 1.0, 1.0)) == pytest.approx(1.5)
    assert float(jax.grad(loss)(0.0, 1.0, 0.0)) == pytest.approx(1.5 / 2.25)
    # the spread is still pulled toward the error: too wide shrinks, too narrow grows
    assert float(jax.grad(loss, argnums=1)(0.0, 2.0, 1.0)) > 0
    assert float(jax.grad(loss, argnums=1)(0.0, 0.5, 1.0)) < 0


def test_training_overfits_ten_structures(trained):
    curve = trained.history
    assert curve[-1]["train_loss"] < 0.05 * curve[0]["train_loss"]
    assert trained.metrics["train_energy_mae"] < 10.0  # meV/atom
    # mean |force component| of these rattled EMT cells is ~930 meV/Å
    assert trained.metrics["train_forces_mae"] < 150.0
    lines = (trained.model_dir / "learning_curve.csv").read_text().splitlines()
    assert lines[0].startswith("epoch,train_loss,val_loss") and len(lines) == 62  # header, epochs 0..60
    assert json.loads((trained.model_dir / "metrics.json").read_text())["best_epoch"] == trained.best_epoch


def test_calculator_from_model_dir_reproduces_validation_metric(trained, frames):
    calc = lotf.load_calculator(trained.model_dir)
    errors = []
    for atoms in frames[10:]:
        calc.calculate(atoms.copy(), ["energy", "forces"])
        errors.append(np.abs(calc.results["forces"] - atoms.get_forces()))
    assert 1e3 * np.mean(errors) == pytest.approx(trained.metrics["val_forces_mae"], rel=1e-4)
    assert calc.results["forces_ensemble"].shape == (32, 3, 2)


def test_warm_start_with_seed1_rates_keeps_the_model(trained, frames, tmp_path):
    # the seed-1 learning rates (0.01/0.005/0.001/0.05) on the data the model converged on: with a
    # fresh Adam state at full rate, epoch 1 used to lose the model (val loss x4, energy MAE 7 -> 125)
    start = trained.metrics["val_loss"]
    config = TrainConfig(epochs=3, batch_size=2, progress=False, loss_normalisation="per_atom")
    warm = train(frames[:10], frames[10:], TINY, config, tmp_path / "warm", init_from=trained.model_dir)
    assert warm.history[0]["epoch"] == 0 and warm.history[0]["val_loss"] == pytest.approx(start, rel=1e-6)
    assert max(row["val_loss"] for row in warm.history) < 1.2 * start
    assert warm.metrics["val_loss"] <= start * (1 + 1e-9)
    assert not warm.metrics["shift_refitted"]
    # without the warm-up and the reduced rates the first epoch destroys it ...
    cold_rates = TrainConfig(epochs=1, batch_size=2, progress=False, loss_normalisation="per_atom",
                             warm_start_lr_factor=1.0, warmup_epochs=0)
    spoilt = train(frames[:10], frames[10:], TINY, cold_rates, tmp_path / "spoilt", init_from=trained.model_dir)
    assert spoilt.history[1]["val_loss"] > 1.5 * start
    # ... and then the starting parameters (epoch 0) are what is kept
    assert spoilt.best_epoch == 0 and spoilt.metrics["val_loss"] == pytest.approx(start, rel=1e-6)
    with pytest.raises(ConfigError, match="'hidden' differs"):
        train(frames[:10], frames[10:], {**TINY, "hidden": [8]}, config, tmp_path / "bad", init_from=trained.model_dir)


def test_emphasised_order_gives_new_structures_their_share():
    from lotf.training.data import emphasised_order

    rng = np.random.default_rng(0)
    new = np.zeros(60, bool)
    new[48:] = True  # 12 new of 60, as after 20 % new data
    order = emphasised_order(new, 0.67, rng)
    assert len(order) == 60  # an epoch keeps its length (and cost)
    drawn_new = order[new[order]]
    assert len(drawn_new) == 40  # round(0.67 * 60)
    counts = np.bincount(drawn_new, minlength=60)[48:]
    assert counts.min() >= 3 and counts.max() <= 4  # cycled: every new one before any repeats
    drawn_old = order[~new[order]]
    assert len(set(drawn_old.tolist())) == len(drawn_old) == 20  # old ones without replacement
    # never fewer draws than uniform: a share already above the fraction, or one kind only
    for mask, fraction in ((new, 0.1), (np.zeros(60, bool), 0.67), (np.ones(60, bool), 0.67)):
        assert sorted(emphasised_order(mask, fraction, rng).tolist()) == list(range(60))


def test_fingerprints_survive_a_file_round_trip_and_tell_structures_apart(frames, tmp_path):
    from lotf.training.data import fingerprint, seen_before

    ase.io.write(tmp_path / "f.extxyz", frames[:3])
    back = ase.io.read(tmp_path / "f.extxyz", ":")
    earlier = [fingerprint(a) for a in frames[:3]]
    assert seen_before([fingerprint(a) for a in back], earlier).all()
    single = back[0].copy()
    single.positions = single.positions.astype(np.float32).astype(float)  # float32 storage (H5MD)
    nudged = frames[0].copy()
    nudged.positions[5, 1] += 0.01
    swapped = frames[0].copy()
    swapped.numbers[[0, 1]] = swapped.numbers[[1, 0]] if swapped.numbers[0] != swapped.numbers[1] else [13, 29]
    others = [fingerprint(a) for a in (single, nudged, swapped, frames[3])]
    assert seen_before(others, earlier).tolist() == [True, False, False, False]
    assert not seen_before(others, []).any()


def test_warm_start_knows_which_structures_are_new(trained, frames, tmp_path):
    from lotf.training.trainer import TRAINING_FRAMES_FILE

    recorded = json.loads((trained.model_dir / TRAINING_FRAMES_FILE).read_text())
    assert len(recorded) == 10 and trained.metrics["n_train_new"] == 10
    # the old frames come back through a file, as a campaign's data do, plus three new ones
    ase.io.write(tmp_path / "old.extxyz", frames[:10])
    grown = ase.io.read(tmp_path / "old.extxyz", ":") + emt_frames(3, seed=7)
    config = TrainConfig(epochs=2, batch_size=2, progress=False, loss_normalisation="per_atom")
    warm = train(grown, frames[10:], TINY, config, tmp_path / "warm", init_from=trained.model_dir)
    assert warm.metrics["n_train_new"] == 3
    assert len(json.loads((warm.model_dir / TRAINING_FRAMES_FILE).read_text())) == 13
    # a model directory without the record (older lotf) warm-starts with uniform draws
    (tmp_path / "old_model").mkdir()
    for name in ("config.yaml", "params.msgpack", "metrics.json"):
        (tmp_path / "old_model" / name).write_bytes((trained.model_dir / name).read_bytes())
    legacy = train(grown, frames[10:], TINY, config, tmp_path / "legacy", init_from=tmp_path / "old_model")
    assert legacy.metrics["n_train_new"] == 13
    with pytest.raises(ConfigError, match="warm_start_new_fraction"):
        TrainConfig(warm_start_new_fraction=1.0)


def test_warm_start_refits_the_shift_only_when_the_energy_zero_moves(trained, frames, tmp_path):
    # labels without a constant -60 meV/atom term (as when D3 is taken out of DFT+D3 labels)
    moved = [relabel(a, energy=a.get_potential_energy() - 0.06 * len(a), forces=a.get_forces()) for a in frames]
    config = TrainConfig(epochs=1, batch_size=2, progress=False, loss_normalisation="per_atom",
                         warm_start_lr_factor=1e-6)
    warm = train(moved[:10], moved[10:], TINY, config, tmp_path / "moved", init_from=trained.model_dir)
    assert warm.metrics["shift_refitted"] and warm.metrics["shift_offset_mev_per_atom"] == pytest.approx(60, abs=10)
    # epoch 0 already sees the moved zero: energies as good as before, not 60 meV/atom off
    assert warm.history[0]["val_energy_mae"] < trained.metrics["val_energy_mae"] + 5.0
    never = train(moved[:10], moved[10:], TINY, TrainConfig(**{**config.to_dict(), "refit_shift": "never"}),
                  tmp_path / "never", init_from=trained.model_dir)
    assert never.history[0]["val_energy_mae"] > 50.0
    same = train(frames[:10], frames[10:], TINY, config, tmp_path / "same", init_from=trained.model_dir)
    assert not same.metrics["shift_refitted"]
    _, before, _ = load_model(trained.model_dir)
    _, after, _ = load_model(same.model_dir)
    np.testing.assert_allclose(np.asarray(after["shift"]), np.asarray(before["shift"]), atol=1e-4)


def test_loss_normalisation_eq7_as_written_and_per_atom():
    from lotf.training.data import Labels
    from lotf.training.loss import loss_terms

    class G:  # the two fields loss_terms reads
        atom_mask = jnp.ones(3)
        structure = jnp.zeros(3, jnp.int32)

    d_energy, d_force, volume = 0.3, 0.2, 10.0
    d_stress = np.array([[1e-3, 2e-3, 0], [2e-3, 0, 0], [0, 0, -1e-3]])
    labels = Labels(energy=np.array([1.0]), forces=np.zeros((3, 3)), stress=np.zeros((1, 3, 3)),
                    has_stress=np.array([True]), n_atoms=np.array([3.0]), structure_mask=np.array([True]),
                    volume=np.array([volume]))
    out = {"energy_ensemble": jnp.array([[1.0 + d_energy]]), "forces": jnp.full((3, 3), d_force),
           "virial": jnp.asarray(d_stress * volume)[None]}
    eq7 = loss_terms(out, G, labels, TrainConfig())
    assert float(eq7["energy"]) == pytest.approx(d_energy**2)  # (ΔE)², no per-atom division
    assert float(eq7["forces"]) == pytest.approx(d_force**2)  # Σ_i |ΔF_i|² / (3N)
    assert float(eq7["stress"]) == pytest.approx(np.sum((volume * d_stress) ** 2))  # |V Δσ|²
    assert float(eq7["total"]) == pytest.approx(d_energy**2 + 4 * d_force**2 + 0.2 * np.sum((volume * d_stress) ** 2))
    per_atom = loss_terms(out, G, labels, TrainConfig(loss_normalisation="per_atom"))
    assert float(per_atom["energy"]) == pytest.approx(d_energy**2 / 3)
    assert float(per_atom["stress"]) == pytest.approx(np.sum((volume * d_stress) ** 2) / 27)
    with pytest.raises(ConfigError, match="loss_normalisation"):
        TrainConfig(loss_normalisation="per_structure")


def test_kept_epoch_is_scored_by_the_mean_error_not_the_spread():
    from lotf.training.data import Labels
    from lotf.training.loss import loss_terms, selection_score

    class G:
        atom_mask = jnp.ones(2)
        structure = jnp.zeros(2, jnp.int32)

    labels = Labels(energy=np.array([0.0]), forces=np.zeros((2, 3)), stress=np.zeros((1, 3, 3)),
                    has_stress=np.array([False]), n_atoms=np.array([2.0]), structure_mask=np.array([True]),
                    volume=np.array([0.0]))
    nll = TrainConfig(loss_normalisation="per_atom", energy_loss={"kind": "nll"}, forces_loss={"kind": "nll", "weight": 4.0})

    def out(mean_error, spread):  # two members around a mean that misses every label by mean_error
        e = jnp.array([[2 * (mean_error - spread), 2 * (mean_error + spread)]])
        f = jnp.stack([jnp.full((2, 3), mean_error - spread), jnp.full((2, 3), mean_error + spread)], axis=-1)
        return {"energy": jnp.mean(e, axis=1), "energy_ensemble": e, "forces": jnp.mean(f, axis=-1),
                "forces_ensemble": f, "virial": jnp.zeros((1, 3, 3))}

    # a calibrated spread wins on NLL although its mean is twice as wrong ...
    calibrated, overconfident = out(0.2, 0.2), out(0.1, 0.001)
    assert loss_terms(calibrated, G, labels, nll)["total"] < loss_terms(overconfident, G, labels, nll)["total"]
    # ... the selection score reads the mean alone: per-atom energy error² + 4 × force error²
    assert float(selection_score(overconfident, G, labels, nll)) == pytest.approx(0.1**2 * 2 + 4 * 0.1**2)
    assert selection_score(overconfident, G, labels, nll) < selection_score(calibrated, G, labels, nll)
    as_loss = TrainConfig(**{**nll.to_dict(), "select_on": "loss"})
    assert float(selection_score(calibrated, G, labels, as_loss)) == pytest.approx(float(loss_terms(calibrated, G, labels, nll)["total"]))
    with pytest.raises(ConfigError, match="select_on"):
        TrainConfig(select_on="nll")


def test_training_keeps_the_epoch_with_the_lowest_selection_score(frames, tmp_path):
    config = dict(epochs=6, batch_size=2, progress=False, loss_normalisation="per_atom",
                  energy_loss={"kind": "nll"}, forces_loss={"kind": "nll", "weight": 4.0})
    for select_on, column in (("error", "val_selection_score"), ("loss", "val_loss")):
        run = train(frames[:8], frames[8:12], TINY, TrainConfig(**config, select_on=select_on), tmp_path / select_on)
        scores = [row[column] for row in run.history]
        assert run.best_epoch == int(np.argmin(scores))
        assert run.metrics[column] == pytest.approx(min(scores), rel=1e-6)


def test_nll_needs_an_ensemble_at_config_time(frames, tmp_path):
    nll = {"energy_loss": {"kind": "nll"}, "forces_loss": {"kind": "nll"}}
    preset = tmp_path / "one.yaml"
    preset.write_text(json.dumps({"model": {**TINY, "n_members": 1}, "training": nll}))
    with pytest.raises(ConfigError, match="NLL loss needs an ensemble spread.*n_members=1"):
        load_preset(preset)
    with pytest.raises(ConfigError, match="n_members=1"):
        train(frames[:2], frames[10:], {**TINY, "n_members": 1}, TrainConfig.from_dict(nll), tmp_path / "m")


def test_nan_gradient_steps_are_skipped_and_counted(frames, tmp_path):
    # two atoms on top of each other: the pair's unit vector is 0/0, its gradient NaN
    broken = frames[0].copy()
    broken.positions[1] = broken.positions[0]
    broken.calc = SinglePointCalculator(broken, energy=frames[0].get_potential_energy(), forces=frames[0].get_forces())
    config = TrainConfig(epochs=2, batch_size=1, progress=False)
    result = train([broken] + frames[1:4], frames[10:], TINY, config, tmp_path / "nan")
    assert result.metrics["skipped_steps"] == 2  # one step per epoch
    assert [row["skipped_steps"] for row in result.history] == [0, 1, 1]
    assert all(np.isfinite(row["val_loss"]) for row in result.history)
    _, params, _ = load_model(result.model_dir)
    assert all(np.all(np.isfinite(np.asarray(x))) for x in jax.tree_util.tree_leaves(params))


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


def test_shift_refit_needs_a_move_of_every_structure():
    from types import SimpleNamespace

    from lotf.training.trainer import refit_shift

    rng = np.random.default_rng(0)
    n = np.full(20, 96.0)
    items = [SimpleNamespace(species=np.array([0] * 32 + [1] * 64)) for _ in n]  # water: fixed composition
    params = {"shift": jnp.zeros((2, 1))}
    config = TrainConfig()
    reference = rng.normal(size=20)
    # a new zero: every structure 30 meV/atom lower, 1 meV/atom scatter -> refitted
    new_zero = {"re": reference, "pe": reference + 96 * (0.030 + 0.001 * rng.normal(size=20)), "na": n}
    moved, offset, refitted = refit_shift(params, new_zero, SimpleNamespace(items=items), config, previous_rmse=1.0)
    assert refitted and offset == pytest.approx(30, abs=2)
    # the model is 60 meV/atom off on the 4 new structures only (out of distribution) -> kept
    off = np.where(np.arange(20) < 4, 0.060, 0.0) + 0.001 * rng.normal(size=20)
    new_data = {"re": reference, "pe": reference + 96 * off, "na": n}
    kept, offset, refitted = refit_shift(params, new_data, SimpleNamespace(items=items), config, previous_rmse=1.0)
    assert not refitted and offset > 5.0 and kept is params


def test_labels_with_forces_above_max_label_force_are_left_out(frames, tmp_path):
    """A frame whose largest label force exceeds max_label_force trains as if it were absent:
    the same model as without it, and the count is in the metrics."""
    wild = relabel(frames[0], energy=frames[0].get_potential_energy() + 50.0,
                   forces=frames[0].get_forces() + 40.0)  # a 40 eV/Å clash
    config = dict(epochs=3, batch_size=2, progress=False, schedule="constant", loss_normalisation="per_atom")
    largest = max(np.abs(a.get_forces()).max() for a in frames[:12])
    limit = float(largest) + 1.0
    with_wild = train([*frames[1:8], wild], [*frames[8:12], wild], TINY,
                      TrainConfig(**config, max_label_force=limit), tmp_path / "screened")
    without = train(frames[1:8], frames[8:12], TINY, TrainConfig(**config), tmp_path / "clean")
    assert (with_wild.metrics["n_train_left_out"], with_wild.metrics["n_val_left_out"]) == (1, 1)
    assert with_wild.metrics["n_train"] == 7 and without.metrics["n_train_left_out"] == 0
    assert with_wild.metrics["val_forces_mae"] == pytest.approx(without.metrics["val_forces_mae"], rel=1e-6)
    kept = train([*frames[1:8], wild], frames[8:12], TINY, TrainConfig(**config), tmp_path / "kept")
    assert kept.metrics["n_train"] == 8  # 0 (the default) keeps every frame
    with pytest.raises(ConfigError, match="every training frame has a force above max_label_force=0.001"):
        train(frames[1:8], frames[8:12], TINY, TrainConfig(**config, max_label_force=0.001), tmp_path / "none")
    with pytest.raises(ConfigError, match="max_label_force"):
        TrainConfig(max_label_force=-1.0)
