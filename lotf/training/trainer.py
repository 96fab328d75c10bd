"""Training loop: Optax with per-group learning rates, padded fixed-shape batches, best model kept."""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import queue
import threading
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
from lotf.training.config import TrainConfig, check_compatible
from lotf.training.data import Dataset, emphasised_order, fingerprint, seen_before, species_of
from lotf.training.loss import loss_terms, prediction_metrics, selection_score

GROUPS = ("embedding", "network", "scale", "shift")
log = logging.getLogger(__name__)


def param_group(path) -> str:
    """Optimiser group of a parameter from its top-level name in the Flax tree."""
    top = str(getattr(path[0], "key", path[0]))
    return top if top in ("embedding", "scale", "shift") else "network"


def make_schedule(lr: float, config: TrainConfig, steps_per_epoch: int, warm: bool = False):
    """The learning-rate schedule of one parameter group; warm starts scale it and ramp it up."""
    total = config.epochs * steps_per_epoch
    if config.schedule == "constant":
        base = optax.constant_schedule(lr)
    elif config.schedule == "linear":
        base = optax.linear_schedule(lr, lr * config.end_fraction, max(total, 1))
    else:
        period = config.period * steps_per_epoch

        def base(step):
            cycle = jnp.floor(step / period)
            phase = (step - cycle * period) / period
            return lr * 0.5 * (jnp.cos(jnp.pi * phase) + 1.0) * config.decay_factor**cycle
    if not warm:
        return base
    ramp_steps = config.warmup_epochs * steps_per_epoch

    def warm_schedule(step):
        ramp = jnp.minimum((step + 1.0) / ramp_steps, 1.0) if ramp_steps else 1.0
        return config.warm_start_lr_factor * ramp * base(step)

    return warm_schedule


def make_optimizer(config: TrainConfig, steps_per_epoch: int, warm: bool = False) -> optax.GradientTransformation:
    rates = {"embedding": config.lr_embedding, "network": config.lr_network, "scale": config.lr_scale,
             "shift": config.lr_shift}
    transforms = {}
    for group, lr in rates.items():
        schedule = make_schedule(lr, config, steps_per_epoch, warm)
        if config.optimizer == "adamw":
            transforms[group] = optax.adamw(schedule, weight_decay=config.weight_decay)
        else:
            transforms[group] = optax.adam(schedule)
    chain = [optax.clip_by_global_norm(config.gradient_clip)] if config.gradient_clip > 0 else []
    labels = lambda params: jax.tree_util.tree_map_with_path(lambda p, _: param_group(p), params)
    return optax.chain(*chain, optax.multi_transform(transforms, labels))


def _all_finite(tree) -> jax.Array:
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree_util.tree_leaves(tree)]))


def prefetched(batches, depth: int = 2):
    """Iterate ``batches`` with the next ones built and sent to the device by a worker thread,
    so collating on the host overlaps with the jitted step."""
    out: queue.Queue = queue.Queue(maxsize=depth)
    done = object()

    def work():
        try:
            for item in batches:
                out.put(jax.device_put(item))
        except BaseException as error:  # noqa: BLE001 - re-raised in the consumer
            out.put(error)
        out.put(done)

    threading.Thread(target=work, daemon=True).start()
    while (item := out.get()) is not done:
        if isinstance(item, BaseException):
            raise item
        yield item


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


def without_large_forces(frames: list[Atoms], limit: float, what: str) -> tuple[list[Atoms], int]:
    """``frames`` without those whose largest reference force component exceeds ``limit`` eV/Å
    (0: all kept), and how many were left out; none left is a one-line error."""
    if not limit:
        return list(frames), 0
    kept = [a for a in frames if a.calc is None or "forces" not in a.calc.results
            or np.abs(a.calc.results["forces"]).max() <= limit]
    if frames and not kept:
        raise ConfigError(f"training: every {what} frame has a force above max_label_force={limit:g} eV/Å")
    if len(kept) < len(frames):
        log.warning("training: %d of %d %s frames left out (a force above %g eV/Å)",
                    len(frames) - len(kept), len(frames), what, limit)
    return kept, len(frames) - len(kept)


def train(train_frames: list[Atoms], val_frames: list[Atoms], model_config: dict[str, Any] | ModelConfig,
          config: TrainConfig, out_dir: str | Path, *, init_from: str | Path | None = None) -> TrainResult:
    """Train a GMNN (ensemble) and write the model directory ``out_dir``.

    The parameters with the lowest validation loss are kept; the starting parameters (epoch 0)
    are a candidate too. ``init_from`` warm-starts from an earlier model directory (same
    architecture and elements): its scale is kept, its shift too unless the labels' energy zero
    moved (:func:`refit_shift`), and the learning rates are scaled and ramped up
    (``warm_start_lr_factor``, ``warmup_epochs``); the structures it was not trained on get
    ``warm_start_new_fraction`` of each epoch's draws.
    """
    out_dir = Path(out_dir)
    train_frames, dropped_train = without_large_forces(train_frames, config.max_label_force, "training")
    val_frames, dropped_val = without_large_forces(val_frames, config.max_label_force, "validation")
    if init_from is not None and config.warm_start_epochs:
        config = dataclasses.replace(config, epochs=config.warm_start_epochs)
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
    check_compatible(mconf, config, "training")
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

    # member forces only where the loss uses them: NLL needs the spread, a full ensemble trains
    # each member on its own forces; a shallow ensemble with mse trains the mean force
    full = mconf.ensemble == "full"
    predict = make_predict([model.energy_term], members=config.forces_loss.kind == "nll" or full)
    optimizer = make_optimizer(config, steps_per_epoch, warm=init_params is not None)

    def batch_loss(p, graph, labels):
        out = predict([p], [graph])
        terms = loss_terms(out, graph, labels, config)
        return terms["total"], terms

    @jax.jit
    def train_step(p, state, graph, labels):
        (loss, terms), grads = jax.value_and_grad(batch_loss, has_aux=True)(p, graph, labels)
        updates, new_state = optimizer.update(grads, state, p)
        # a step with a non-finite gradient is skipped whole (parameters and Adam moments kept):
        # zeroing only the NaN entries would still apply the rest of a corrupted gradient
        ok = _all_finite(grads)
        keep = lambda new, old: jax.tree_util.tree_map(lambda a, b: jnp.where(ok, a, b), new, old)
        n = jnp.where(ok, jnp.sum(labels.structure_mask), 0)
        return (keep(optax.apply_updates(p, updates), p), keep(new_state, state),
                jnp.where(ok, terms["total"] * n, 0.0), n, ~ok)

    @jax.jit
    def eval_step(p, graph, labels):
        out = predict([p], [graph])
        return loss_terms(out, graph, labels, config), selection_score(out, graph, labels, config), out

    def predictions(p, dataset: Dataset, bsz: int, padding) -> tuple[float, float, dict[str, np.ndarray]]:
        """Loss, selection score and unpadded predictions/labels over a data set (member means)."""
        losses, scores, weights = [], [], []
        cols = {k: [] for k in ("pe", "re", "na", "pf", "rf", "ps", "rs")}
        for graph, labels in dataset.batches(bsz, padding):
            terms, score, out = eval_step(p, graph, labels)
            m = labels.structure_mask
            losses.append(float(terms["total"]) * m.sum())
            scores.append(float(score) * m.sum())
            weights.append(m.sum())
            am = np.asarray(graph.atom_mask)
            sm = m & labels.has_stress
            for key, value in (("pe", np.asarray(out["energy"])[m]), ("re", labels.energy[m]),
                               ("na", labels.n_atoms[m]), ("pf", np.asarray(out["forces"])[am]),
                               ("rf", labels.forces[am]), ("ps", np.asarray(out["stress"])[sm]),
                               ("rs", labels.stress[sm])):
                cols[key].append(value)
        total = np.sum(weights)
        return float(np.sum(losses) / total), float(np.sum(scores) / total), {k: np.concatenate(v) for k, v in cols.items()}

    def evaluate(p, dataset: Dataset, bsz: int, padding) -> tuple[float, dict[str, float]]:
        """Loss and metrics; metrics["selection_score"] is what picks the kept epoch."""
        loss, score, c = predictions(p, dataset, bsz, padding)
        metrics = prediction_metrics(c["pe"], c["re"], c["na"], c["pf"], c["rf"], c["ps"], c["rs"])
        return loss, {**metrics, "selection_score": score}

    pad_eval_train = train_set.padding(vbs)
    shift_offset, shift_refitted = 0.0, False
    if init_params is not None and config.refit_shift != "never":
        previous_rmse = _previous_metric(init_from, "train_energy_rmse")
        params, shift_offset, shift_refitted = refit_shift(params, predictions(params, train_set, vbs, pad_eval_train)[2],
                                                           train_set, config, previous_rmse)
        log.info("warm start: labels' energy zero moved by %.2f meV/atom; shift %s", shift_offset,
                 "refitted" if shift_refitted else "kept")

    opt_state = optimizer.init(params)
    rng = np.random.default_rng(config.seed)
    train_fingerprints = [fingerprint(a) for a in train_frames]
    new = _new_structures(init_from, train_fingerprints) if init_from is not None else None
    emphasise = new is not None and config.warm_start_new_fraction > 0 and 0 < new.sum() < len(new)
    if new is not None:
        log.info("warm start: %d of %d training structures are new%s", new.sum(), len(new),
                 f", drawn as {config.warm_start_new_fraction:.0%} of each epoch" if emphasise else "")
    history: list[dict[str, float]] = []
    out_dir.mkdir(parents=True, exist_ok=True)
    curve_path = out_dir / "learning_curve.csv"
    fields = ["epoch", "train_loss", "val_loss", "val_selection_score", "val_energy_mae", "val_forces_mae",
              "skipped_steps", "seconds"]
    skipped_total = 0
    with curve_path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()

        def record(epoch, train_loss, val_loss, metrics, skipped, seconds):
            row = {"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss,
                   "val_selection_score": metrics["selection_score"], "val_energy_mae": metrics["energy_mae"],
                   "val_forces_mae": metrics["forces_mae"],
                   "skipped_steps": skipped, "seconds": seconds}
            writer.writerow(row)
            fh.flush()
            history.append(row)

        # epoch 0: the starting parameters are a candidate, so a warm start never ends worse
        start = time.perf_counter()
        val_loss, metrics = evaluate(params, val_set, vbs, pad_val)
        record(0, evaluate(params, train_set, vbs, pad_eval_train)[0], val_loss, metrics, 0,
               time.perf_counter() - start)
        best = (metrics["selection_score"], jax.device_get(params), 0, metrics)
        bar = tqdm(range(1, config.epochs + 1), desc="training", disable=not config.progress)
        stale = 0
        for epoch in bar:
            start = time.perf_counter()
            total, count, skipped = 0.0, 0, 0
            # losses stay on the device until the epoch ends: no host sync per step
            order = emphasised_order(new, config.warm_start_new_fraction, rng) if emphasise else None
            for graph, labels in prefetched(train_set.batches(bs, pad_train, rng, order)):
                params, opt_state, loss_sum, n, bad = train_step(params, opt_state, graph, labels)
                total, count, skipped = total + loss_sum, count + n, skipped + bad
            total, count, skipped = float(total), float(count), int(skipped)
            if skipped:
                log.warning("epoch %d: %d training steps skipped (non-finite gradient)", epoch, skipped)
                skipped_total += skipped
            if not count:
                raise FloatingPointError(f"training diverged at epoch {epoch}: every step had a non-finite gradient")
            if not np.isfinite(total):
                raise FloatingPointError(f"training diverged at epoch {epoch} (loss is not finite)")
            val_loss, metrics = evaluate(params, val_set, vbs, pad_val)
            record(epoch, total / count, val_loss, metrics, skipped, time.perf_counter() - start)
            if metrics["selection_score"] < best[0]:
                best = (metrics["selection_score"], jax.device_get(params), epoch, metrics)
                stale = 0
            else:
                stale += 1
            bar.set_postfix(loss=f"{total / count:.3g}", val=f"{val_loss:.3g}",
                            E=f"{metrics['energy_mae']:.2f}meV", F=f"{metrics['forces_mae']:.0f}meV/A")
            if config.patience and stale >= config.patience:
                break

    _, best_params, best_epoch, _ = best
    _, train_metrics = evaluate(best_params, train_set, vbs, pad_eval_train)
    val_loss, val_metrics = evaluate(best_params, val_set, vbs, pad_val)
    metrics = {f"val_{k}": v for k, v in val_metrics.items()}
    metrics.update({f"train_{k}": v for k, v in train_metrics.items()})
    metrics.update(best_epoch=best_epoch, val_loss=val_loss, n_train=len(train_set), n_val=len(val_set),
                   skipped_steps=skipped_total, warm_start=init_params is not None,
                   shift_offset_mev_per_atom=shift_offset, shift_refitted=shift_refitted,
                   n_train_left_out=dropped_train, n_val_left_out=dropped_val,
                   n_train_new=int(new.sum()) if new is not None else len(train_set))
    save_model(out_dir, mconf, best_params, training=config.to_dict(), metrics=metrics)
    (out_dir / TRAINING_FRAMES_FILE).write_text(json.dumps(train_fingerprints))
    return TrainResult(out_dir, metrics, history, best_epoch)


TRAINING_FRAMES_FILE = "training_frames.json"  # fingerprints of the training structures


def _new_structures(model_dir, train_fingerprints: list[dict]) -> np.ndarray | None:
    """Which training structures the model in ``model_dir`` was not trained on (None: not recorded)."""
    path = Path(model_dir) / TRAINING_FRAMES_FILE
    if not path.is_file():
        log.info("warm start: %s has no %s; every structure is drawn alike", model_dir, TRAINING_FRAMES_FILE)
        return None
    return ~seen_before(train_fingerprints, json.loads(path.read_text()))


def _previous_metric(model_dir, key: str) -> float:
    path = Path(model_dir) / "metrics.json"
    return float(json.loads(path.read_text()).get(key, 0.0)) if path.is_file() else 0.0


def refit_shift(params, predicted: dict[str, np.ndarray], dataset: Dataset, config: TrainConfig,
                previous_rmse: float = 0.0):
    """Move the per-element shift by the ridge fit of the residuals E_ref − E_model on element
    counts, when the labels' energy zero moved.

    "auto" refits when that fit moves energies (RMS over structures) by more than
    ``config.refit_shift_threshold`` meV/atom, by more than 3x the energy RMSE the model reached
    on its own training data (``previous_rmse``: a model's own bias is not a new zero), and when
    it explains most of the residuals (their RMS at least halves): a new zero moves every
    structure alike, while a model that is off only on the new structures of an iteration is a
    model error for training to fix, not a reason to move the energies of all the others.
    Returns (params, the RMS move in meV/atom, whether the shift was refitted).
    """
    n_species = params["shift"].shape[-2]
    counts = statistics.element_counts([s.species for s in dataset.items], n_species)
    residual = predicted["re"] - predicted["pe"]
    delta = statistics.regression_shift(residual, counts, config.shift_regularisation)
    moved = (counts @ delta) / predicted["na"]
    offset = 1e3 * float(np.sqrt(np.mean(moved**2)))
    before = float(np.sqrt(np.mean((residual / predicted["na"]) ** 2)))
    after = float(np.sqrt(np.mean((residual / predicted["na"] - moved) ** 2)))
    systematic = after <= 0.5 * before
    if config.refit_shift == "auto" and (offset <= max(config.refit_shift_threshold, 3.0 * previous_rmse)
                                         or not systematic):
        return params, offset, False
    params = dict(params)
    params["shift"] = params["shift"] + jnp.asarray(delta)[:, None]  # broadcasts over (K, S, 1) too
    return params, offset, True
