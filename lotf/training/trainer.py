"""Training loop: Optax with per-group learning rates, padded fixed-shape batches, best model kept."""

from __future__ import annotations

import csv
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from ase import Atoms
from tqdm import tqdm

from lotf.potential.io import load_model, save_model
from lotf.potential.model import ConfigError, Model, ModelConfig
from lotf.potential.predict import make_predict
from lotf.training import statistics
from lotf.training.config import TrainConfig
from lotf.training.data import Dataset, species_of
from lotf.training.loss import loss_terms, prediction_metrics

GROUPS = ("embedding", "network", "scale", "shift")


def param_group(path) -> str:
    """Optimiser group of a parameter from its top-level name in the Flax tree."""
    top = str(getattr(path[0], "key", path[0]))
    return top if top in ("embedding", "scale", "shift") else "network"


def make_schedule(lr: float, config: TrainConfig, steps_per_epoch: int):
    total = config.epochs * steps_per_epoch
    if config.schedule == "constant":
        return optax.constant_schedule(lr)
    if config.schedule == "linear":
        return optax.linear_schedule(lr, lr * config.end_fraction, max(total, 1))
    period = config.period * steps_per_epoch

    def cyclic_cosine(step):
        cycle = jnp.floor(step / period)
        phase = (step - cycle * period) / period
        return lr * 0.5 * (jnp.cos(jnp.pi * phase) + 1.0) * config.decay_factor**cycle

    return cyclic_cosine


def make_optimizer(config: TrainConfig, steps_per_epoch: int) -> optax.GradientTransformation:
    rates = {"embedding": config.lr_embedding, "network": config.lr_network, "scale": config.lr_scale,
             "shift": config.lr_shift}
    transforms = {}
    for group, lr in rates.items():
        schedule = make_schedule(lr, config, steps_per_epoch)
        if config.optimizer == "adamw":
            transforms[group] = optax.adamw(schedule, weight_decay=config.weight_decay)
        else:
            transforms[group] = optax.adam(schedule)
    chain = [optax.clip_by_global_norm(config.gradient_clip)] if config.gradient_clip > 0 else []
    labels = lambda params: jax.tree_util.tree_map_with_path(lambda p, _: param_group(p), params)
    return optax.chain(*chain, optax.multi_transform(transforms, labels), optax.zero_nans())


def initial_statistics(model: Model, params, dataset: Dataset, regularisation: float):
    """Set shift by ridge regression on element counts and scale from per-element force RMS."""
    n_species = len(model.config.species)
    species = [s.species for s in dataset.items]
    energies = np.array([e for e, _, _ in dataset.labels])
    shift = statistics.regression_shift(energies, statistics.element_counts(species, n_species), regularisation)
    scale = statistics.force_rms_scale([f for _, f, _ in dataset.labels], species, n_species)
    shape = params["shift"].shape  # (S, 1) or (K, S, 1) for full ensembles
    params = dict(params)
    params["shift"] = jnp.broadcast_to(jnp.asarray(shift)[:, None], shape).astype(jnp.float64)
    params["scale"] = jnp.broadcast_to(jnp.asarray(scale)[:, None], shape).astype(jnp.float64)
    return params


@dataclass
class TrainResult:
    model_dir: Path
    metrics: dict[str, float]
    history: list[dict[str, float]]
    best_epoch: int


def _check_warm_start(config: ModelConfig, previous: ModelConfig) -> None:
    a, b = config.to_dict(), previous.to_dict()
    for key in a:
        if a[key] != b[key]:
            raise ConfigError(f"warm start: model config '{key}' differs from the initial model ({b[key]!r} vs {a[key]!r})")


def train(train_frames: list[Atoms], val_frames: list[Atoms], model_config: dict[str, Any] | ModelConfig,
          config: TrainConfig, out_dir: str | Path, *, init_from: str | Path | None = None) -> TrainResult:
    """Train a GMNN (ensemble) and write the model directory ``out_dir``.

    The parameters with the lowest validation loss are kept. ``init_from`` warm-starts from an
    earlier model directory (same architecture and elements), keeping its scale and shift.
    """
    out_dir = Path(out_dir)
    if isinstance(model_config, ModelConfig):
        model_config = model_config.to_dict()
    model_config = dict(model_config)
    species = tuple(sorted(set(species_of(train_frames)) | set(species_of(val_frames))))
    init_params = None
    if init_from is not None:
        previous, init_params, _ = load_model(init_from)
        missing = set(species) - set(previous.config.species)
        if missing:
            from ase.data import chemical_symbols

            raise ConfigError(f"warm start: elements {', '.join(chemical_symbols[z] for z in sorted(missing))} "
                              f"are not in the initial model")
        species = previous.config.species
    model_config["species"] = species
    mconf = ModelConfig.from_dict(model_config)
    if init_from is not None:
        _check_warm_start(mconf, previous.config)
    model = Model(mconf)

    train_set = Dataset(train_frames, species, mconf.r_max, "train", config.progress)
    val_set = Dataset(val_frames, species, mconf.r_max, "validation", config.progress)
    bs = min(config.batch_size, len(train_set))
    pad_train = train_set.padding(bs)
    vbs = min(max(bs, 4), len(val_set))
    pad_val = val_set.padding(vbs)
    steps_per_epoch = -(-len(train_set) // bs)

    key = jax.random.PRNGKey(config.seed)
    example, _ = train_set.batch([0], bs, pad_train)
    if init_params is None:
        params = model.init(key, jax.tree_util.tree_map(jnp.asarray, example))
        params = initial_statistics(model, params, train_set, config.shift_regularisation)
    else:
        params = init_params

    optimizer = make_optimizer(config, steps_per_epoch)
    opt_state = optimizer.init(params)
    predict = make_predict([model.structure_energies], members=True, ddof=mconf.uncertainty_ddof)

    def batch_loss(p, graph, labels):
        out = predict([p], [graph])
        terms = loss_terms(out, graph, labels, config)
        return terms["total"], terms

    @jax.jit
    def train_step(p, state, graph, labels):
        (loss, terms), grads = jax.value_and_grad(batch_loss, has_aux=True)(p, graph, labels)
        updates, state = optimizer.update(grads, state, p)
        return optax.apply_updates(p, updates), state, terms

    @jax.jit
    def eval_step(p, graph, labels):
        out = predict([p], [graph])
        return loss_terms(out, graph, labels, config), out

    def evaluate(p, dataset: Dataset, bsz: int, padding) -> tuple[float, dict[str, float]]:
        losses, weights = [], []
        pe, re, na, pf, rf, ps, rs = [], [], [], [], [], [], []
        for graph, labels in dataset.batches(bsz, padding):
            terms, out = eval_step(p, graph, labels)
            m = labels.structure_mask
            losses.append(float(terms["total"]) * m.sum())
            weights.append(m.sum())
            pe.append(np.asarray(out["energy"])[m])
            re.append(labels.energy[m])
            na.append(labels.n_atoms[m])
            am = np.asarray(graph.atom_mask)
            pf.append(np.asarray(out["forces"])[am])
            rf.append(labels.forces[am])
            sm = m & labels.has_stress
            ps.append(np.asarray(out["stress"])[sm])
            rs.append(labels.stress[sm])
        metrics = prediction_metrics(np.concatenate(pe), np.concatenate(re), np.concatenate(na),
                                     np.concatenate(pf), np.concatenate(rf), np.concatenate(ps), np.concatenate(rs))
        return float(np.sum(losses) / np.sum(weights)), metrics

    rng = np.random.default_rng(config.seed)
    history: list[dict[str, float]] = []
    best = (np.inf, params, 0, {})
    out_dir.mkdir(parents=True, exist_ok=True)
    curve_path = out_dir / "learning_curve.csv"
    fields = ["epoch", "train_loss", "val_loss", "val_energy_mae", "val_forces_mae", "seconds"]
    with curve_path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        bar = tqdm(range(1, config.epochs + 1), desc="training", disable=not config.progress)
        stale = 0
        for epoch in bar:
            start = time.perf_counter()
            total, count = 0.0, 0
            for graph, labels in train_set.batches(bs, pad_train, rng):
                params, opt_state, terms = train_step(params, opt_state, graph, labels)
                total += float(terms["total"]) * labels.structure_mask.sum()
                count += labels.structure_mask.sum()
            if not np.isfinite(total):
                raise FloatingPointError(f"training diverged at epoch {epoch} (loss is not finite)")
            val_loss, metrics = evaluate(params, val_set, vbs, pad_val)
            row = {"epoch": epoch, "train_loss": total / count, "val_loss": val_loss,
                   "val_energy_mae": metrics["energy_mae"], "val_forces_mae": metrics["forces_mae"],
                   "seconds": time.perf_counter() - start}
            writer.writerow(row)
            fh.flush()
            history.append(row)
            if val_loss < best[0]:
                best = (val_loss, jax.device_get(params), epoch, metrics)
                stale = 0
            else:
                stale += 1
            bar.set_postfix(loss=f"{row['train_loss']:.3g}", val=f"{val_loss:.3g}",
                            E=f"{metrics['energy_mae']:.2f}meV", F=f"{metrics['forces_mae']:.0f}meV/A")
            if config.patience and stale >= config.patience:
                break

    _, best_params, best_epoch, _ = best
    _, train_metrics = evaluate(best_params, train_set, vbs, train_set.padding(vbs))
    val_loss, val_metrics = evaluate(best_params, val_set, vbs, pad_val)
    metrics = {f"val_{k}": v for k, v in val_metrics.items()}
    metrics.update({f"train_{k}": v for k, v in train_metrics.items()})
    metrics.update(best_epoch=best_epoch, val_loss=val_loss, n_train=len(train_set), n_val=len(val_set))
    save_model(out_dir, mconf, best_params, training=config.to_dict(), metrics=metrics)
    return TrainResult(out_dir, metrics, history, best_epoch)
