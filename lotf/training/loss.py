"""Losses (seed-1 eq. 7; seed-2 NLL for ensembles) and metrics."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from lotf.training.config import LossTerm, TrainConfig

SIGMA_FLOOR = 1e-6


def _pointwise(kind: str, pred: jax.Array, ref: jax.Array, term: LossTerm, member_axis: int) -> jax.Array:
    """Loss per element, reduced over the ensemble-member axis.

    mse/huber: the mean over members of each member's loss (members train on the same data, as
    independent models would). nll: Gaussian negative log-likelihood of the member mean and
    spread, (x - y)^2 / (2 s^2) + log(s^2) / 2, with s^2 the 1/M variance (seed-2 eq. 6), the
    same s that predictions report as their uncertainty; ``term.beta`` > 0 gives it the gradient
    of beta-NLL (weighted by s^(2 beta), held constant) while its value stays the NLL.
    """
    if kind == "nll":
        mu = jnp.mean(pred, axis=member_axis)
        var = jnp.maximum(jnp.var(pred, axis=member_axis), SIGMA_FLOOR**2)
        nll = 0.5 * ((mu - ref) ** 2 / var + jnp.log(var))
        if not term.beta:
            return nll
        # value: the plain NLL (so validation losses and best epochs mean the same for every beta);
        # gradient: that of var^beta * NLL with var^beta held constant
        weighted = jax.lax.stop_gradient(var) ** term.beta * nll
        return jax.lax.stop_gradient(nll) + weighted - jax.lax.stop_gradient(weighted)
    diff = pred - jnp.expand_dims(ref, member_axis)
    if kind == "huber":
        a = jnp.abs(diff)
        loss = jnp.where(a < term.delta, 0.5 * diff**2, term.delta * (a - 0.5 * term.delta))
    else:
        loss = diff**2
    return jnp.mean(loss, axis=member_axis)


def loss_terms(out: dict, graph, labels, config: TrainConfig) -> dict[str, jax.Array]:
    """Energy, force and stress losses averaged over the real structures of a batch.

    ``config.loss_normalisation`` "eq7" (default) is seed-1 eq. 7 as written: (ΔE)² per
    structure, forces per component averaged within each structure (its 1/(3N)), and the squared
    Frobenius norm of the virial difference |V Δσ|² where stress labels exist. "per_atom" divides
    the energy and virial terms by N (and the virial by its 9 components). NLL and huber compare
    energies per atom. Terms are averaged over the real structures of the batch.

    Without ``forces_ensemble`` in ``out`` (a shallow ensemble trained with an mse force loss:
    its heads share the network, so only the mean force is trained), the mean force is used.
    """
    smask = labels.structure_mask.astype(jnp.float64)
    n = jnp.maximum(labels.n_atoms, 1.0)
    n_real = jnp.maximum(jnp.sum(smask), 1.0)
    per_atom = config.loss_normalisation == "per_atom"

    e_members = out["energy_ensemble"]  # (B, M)
    et = config.energy_loss
    if et.kind == "mse":
        e_loss = _pointwise("mse", e_members, labels.energy, et, 1)
        e_loss = e_loss / n if per_atom else e_loss
    else:
        e_loss = _pointwise(et.kind, e_members / n[:, None], labels.energy / n, et, 1)
    energy = jnp.sum(jnp.where(smask > 0, e_loss, 0.0)) / n_real

    f_members = out.get("forces_ensemble")  # (N, 3, M)
    if f_members is None:
        f_members = out["forces"][..., None]
    ft = config.forces_loss
    f_loss = jnp.sum(_pointwise(ft.kind, f_members, labels.forces, ft, 2), axis=1)  # (N,)
    atom_weight = graph.atom_mask / (3.0 * n[graph.structure])
    forces = jnp.sum(f_loss * atom_weight) / n_real

    st = config.stress_loss
    smask_s = smask * labels.has_stress
    # compare virials (V σ): no division by the volume, so padded or non-periodic slots stay finite
    vdiff = out["virial"] - labels.stress * labels.volume[:, None, None]
    if st.kind == "huber":
        a = jnp.abs(vdiff)
        s_el = jnp.where(a < st.delta, 0.5 * vdiff**2, st.delta * (a - 0.5 * st.delta))
    else:  # NLL has no stress spread here (stress from the mean energy): use mse
        s_el = vdiff**2
    s_sum = jnp.sum(s_el, axis=(1, 2))
    per_structure = jnp.where(smask_s > 0, s_sum / (9.0 * n) if per_atom else s_sum, 0.0)
    stress = jnp.sum(per_structure) / jnp.maximum(jnp.sum(smask_s), 1.0)
    return {"energy": energy, "forces": forces, "stress": stress,
            "total": et.weight * energy + ft.weight * forces + st.weight * stress}


def selection_config(config: TrainConfig) -> TrainConfig:
    """The loss that picks the kept epoch (``config.select_on``): for "error", every NLL term
    becomes the mse of the same weight, so only the ensemble mean's error counts."""
    if config.select_on == "loss":
        return config
    as_error = lambda t: dataclasses.replace(t, kind="mse", beta=0.0) if t.kind == "nll" else t
    return dataclasses.replace(config, energy_loss=as_error(config.energy_loss),
                               forces_loss=as_error(config.forces_loss), stress_loss=as_error(config.stress_loss))


def selection_score(out: dict, graph, labels, config: TrainConfig) -> jax.Array:
    """The batch's score for keeping an epoch: the training loss of the ensemble mean alone under
    :func:`selection_config` (``config.select_on`` "loss": the training loss itself)."""
    if config.select_on == "loss":
        return loss_terms(out, graph, labels, config)["total"]
    mean = {"energy_ensemble": out["energy"][:, None], "forces": out["forces"], "virial": out["virial"]}
    return loss_terms(mean, graph, labels, selection_config(config))["total"]


def prediction_metrics(pred_e, ref_e, n_atoms, pred_f, ref_f, pred_s=None, ref_s=None) -> dict[str, float]:
    """Metrics on real (unpadded) data: energies per structure, forces stacked per atom.

    energy_{mae,rmse} in meV/atom; forces_{mae,rmse} per component in meV/Å; forces_norm_mae
    = mean over atoms of | |F_pred| - |F_ref| | in meV/Å (the published campaign's |F| metric);
    forces_vector_mae = mean |F_pred - F_ref|; stress_mae in eV/Å³ (when stress labels exist).
    """
    pred_e, ref_e, n_atoms = (np.asarray(x, float) for x in (pred_e, ref_e, n_atoms))
    de = (pred_e - ref_e) / n_atoms
    df = np.asarray(pred_f) - np.asarray(ref_f)
    out = {
        "energy_mae": 1e3 * float(np.mean(np.abs(de))),
        "energy_rmse": 1e3 * float(np.sqrt(np.mean(de**2))),
        "forces_mae": 1e3 * float(np.mean(np.abs(df))),
        "forces_rmse": 1e3 * float(np.sqrt(np.mean(df**2))),
        "forces_norm_mae": 1e3 * float(np.mean(np.abs(np.linalg.norm(pred_f, axis=1) - np.linalg.norm(ref_f, axis=1)))),
        "forces_vector_mae": 1e3 * float(np.mean(np.linalg.norm(df, axis=1))),
    }
    if pred_s is not None and ref_s is not None and len(ref_s):
        out["stress_mae"] = float(np.mean(np.abs(np.asarray(pred_s) - np.asarray(ref_s))))
    return out
