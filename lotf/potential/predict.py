"""Energies, forces, stress and ensemble statistics from energy functions by autodiff.

An *energy term* is anything with ``structure_energies(params, graph) -> (B, M)`` (or (B,)) in
float64: the GMNN, D3, a bias. Terms are summed; one reverse pass with respect to positions and
a symmetric strain ε gives forces and the virial for the sum. The strain multiplies positions
*and* cells by (I + ε); since pair vectors are R_j - R_i + S @ cell with integer S, every pair
vector, periodic images included, is strained consistently (the reference code strains r as
(2I + ε) r and leaves image offsets unstrained).
"""

from __future__ import annotations

from typing import Callable, Sequence

import jax
import jax.numpy as jnp

from lotf.potential.model import Graph

EnergyFn = Callable[[object, Graph], jax.Array]


def strained(graph: Graph, strain: jax.Array) -> Graph:
    """Apply a per-structure strain (B, 3, 3), symmetrised, to positions and cells."""
    eps = 0.5 * (strain + jnp.swapaxes(strain, -1, -2))
    deform = jnp.eye(3, dtype=eps.dtype) + eps
    positions = jnp.einsum("na,nab->nb", graph.positions, deform[graph.structure])
    cells = jnp.einsum("bij,bjk->bik", graph.cells, deform)
    return graph._replace(positions=positions, cells=cells)


def summed_energy_fn(terms: Sequence[EnergyFn]) -> Callable:
    """E(params_per_term, positions, strain, graphs_per_term) -> (B, M) summed over terms."""

    def energy(params, positions, strain, graphs):
        total = 0.0
        for term, p, g in zip(terms, params, graphs):
            e = term(p, strained(g._replace(positions=positions), strain))
            total = total + (e if e.ndim == 2 else e[:, None])
        return total

    return energy


def volumes(cells: jax.Array) -> jax.Array:
    return jnp.abs(jnp.linalg.det(cells))


def make_predict(terms: Sequence[EnergyFn], *, members: bool, ddof: int = 0) -> Callable:
    """Build ``predict(params, graphs) -> dict`` (not jitted; jit the result).

    ``members`` False: one reverse pass of the member-mean energy (what MD needs every step).
    ``members`` True: a reverse pass per member (vmapped), giving member forces and the
    ensemble spread. Stress is from the mean energy; it is NaN for a zero-volume (non-periodic) cell.
    """
    energy = summed_energy_fn(terms)

    def predict(params, graphs: Sequence[Graph]):
        g0 = graphs[0]
        positions = g0.positions
        strain = jnp.zeros_like(g0.cells)
        vol = volumes(g0.cells)
        if members:
            e_members, vjp = jax.vjp(lambda r, s: energy(params, r, s, graphs), positions, strain)  # (B, M)
            m = e_members.shape[1]
            # one reverse pass per member, unrolled: vmapping the VJP (jacrev) was ~2x slower on CPU
            grads = [vjp(jnp.zeros_like(e_members).at[:, k].set(1.0)) for k in range(m)]
            d_pos = jnp.stack([g[0] for g in grads])  # (M, N, 3)
            d_strain = jnp.stack([g[1] for g in grads])  # (M, B, 3, 3)
            f_members = -d_pos
            e_mean = jnp.mean(e_members, axis=1)
            forces = jnp.mean(f_members, axis=0)
            virial = jnp.mean(d_strain, axis=0)
            out = {"energy": e_mean, "forces": forces, "energy_ensemble": e_members,
                   "forces_ensemble": jnp.moveaxis(f_members, 0, -1)}
            if m > 1:
                out["energy_uncertainty"] = jnp.std(e_members, axis=1, ddof=ddof)
                out["forces_uncertainty"] = jnp.std(f_members, axis=0, ddof=ddof)
            else:
                out["energy_uncertainty"] = jnp.zeros_like(e_mean)
                out["forces_uncertainty"] = jnp.zeros_like(forces)
        else:
            def mean_total(r, s):
                e = energy(params, r, s, graphs)
                return jnp.sum(jnp.mean(e, axis=1)), jnp.mean(e, axis=1)

            (_, e_mean), (d_pos, virial) = jax.value_and_grad(mean_total, argnums=(0, 1), has_aux=True)(positions, strain)
            out = {"energy": e_mean, "forces": -d_pos}
        out["virial"] = virial
        out["stress"] = virial / vol[:, None, None]
        return out

    return predict
