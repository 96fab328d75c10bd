"""Energies, forces, stress and ensemble statistics from energy functions by autodiff.

An *energy term* is anything with ``structure_energies(params, graph) -> (B, M)`` (or (B,)) in
float64: the GMNN, D3, a bias. Terms are summed; reverse passes with respect to positions and a
symmetric strain ε give forces and the virial. The strain multiplies positions *and* cells by
(I + ε); since pair vectors are R_j - R_i + S @ cell with integer S, every pair vector, periodic
images included, is strained consistently (the reference code strains r as (2I + ε) r and leaves
image offsets unstrained).

Member forces cost what the ensemble costs, not its square. A term with a ``member(params_k,
graph) -> (B,)`` method (a full ensemble, see :class:`lotf.potential.model.MemberwiseEnergy`) is
differentiated member by member with ``vmap`` over its stacked parameters: K members cost K
single-model reverse passes. Any other term takes one reverse pass per output column (a shallow
ensemble: its heads share the network), and a term without members (D3, ZBL) one pass whose
forces every member shares.

Uncertainties are ensemble standard deviations with 1/M (seed-2 eq. 6, seed-1 eq. 8): the same
convention as the NLL loss that calibrates them.
"""

from __future__ import annotations

from typing import Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp

from lotf.potential.model import Graph

EnergyFn = Callable[[object, Graph], jax.Array]


class WithShortList(NamedTuple):
    """The graph of a term that reads two neighbour lists (``EnergyTerm.short_cutoff``): its own
    and a shorter one over the same atoms (D3's coordination numbers need 5.2 A of its 20 A)."""

    graph: Graph
    short: Graph


def strained(graph: Graph, strain: jax.Array) -> Graph:
    """Apply a per-structure strain (B, 3, 3), symmetrised, to positions and cells."""
    eps = 0.5 * (strain + jnp.swapaxes(strain, -1, -2))
    deform = jnp.eye(3, dtype=eps.dtype) + eps
    positions = jnp.einsum("na,nab->nb", graph.positions, deform[graph.structure])
    cells = jnp.einsum("bij,bjk->bik", graph.cells, deform)
    return graph._replace(positions=positions, cells=cells)


def placed(graph: Graph | WithShortList, positions: jax.Array, strain: jax.Array) -> Graph | WithShortList:
    """The graph (both lists of a :class:`WithShortList`) at ``positions``, strained."""
    if isinstance(graph, WithShortList):
        return WithShortList(placed(graph.graph, positions, strain), placed(graph.short, positions, strain))
    return strained(graph._replace(positions=positions), strain)


def main_graph(graph: Graph | WithShortList) -> Graph:
    return graph.graph if isinstance(graph, WithShortList) else graph


def summed_energy_fn(terms: Sequence[EnergyFn]) -> Callable:
    """E(params_per_term, positions, strain, graphs_per_term) -> (B, M) summed over terms."""

    def energy(params, positions, strain, graphs):
        total = 0.0
        for term, p, g in zip(terms, params, graphs):
            e = term(p, placed(g, positions, strain))
            total = total + (e if e.ndim == 2 else e[:, None])
        return total

    return energy


def member_derivatives(terms: Sequence[EnergyFn], params, positions, strain, graphs, *, virial: bool = True):
    """Member energies and their derivatives for a sum of terms.

    Returns ``(E (B, M), dE/dpositions (M, N, 3), dE/dstrain (M, B, 3, 3))``; with ``virial``
    False the strain is not differentiated and its derivative is zero.
    """
    e_sum, d_pos, d_strain = 0.0, 0.0, 0.0
    for term, p, g in zip(terms, params, graphs):
        member = getattr(term, "member", None)
        if member is not None:
            e, dr, ds = _memberwise(member, p, positions, strain, g, virial)
        else:
            e, dr, ds = _per_column(term, p, positions, strain, g, virial)
        e_sum, d_pos, d_strain = e_sum + e, d_pos + dr, d_strain + ds  # (B, 1) terms broadcast
    return e_sum, d_pos, d_strain


def _memberwise(member, params, positions, strain, graph, virial):
    def one(p_k):
        def energy(r, s):
            e = member(p_k, placed(graph, r, s))  # (B,)
            return jnp.sum(e), e

        if virial:
            (_, e), (dr, ds) = jax.value_and_grad(energy, argnums=(0, 1), has_aux=True)(positions, strain)
        else:
            (_, e), dr = jax.value_and_grad(energy, has_aux=True)(positions, strain)
            ds = jnp.zeros_like(strain)
        return e, dr, ds

    e, dr, ds = jax.vmap(one)(params)  # (K, B), (K, N, 3), (K, B, 3, 3)
    return e.T, dr, ds


def _per_column(term, params, positions, strain, graph, virial):
    def energy(r, s):
        e = term(params, placed(graph, r, s))
        return e if e.ndim == 2 else e[:, None]

    if virial:
        e, vjp = jax.vjp(energy, positions, strain)
    else:
        e, vjp_r = jax.vjp(lambda r: energy(r, strain), positions)
        vjp = lambda ct: (vjp_r(ct)[0], jnp.zeros_like(strain))
    # one reverse pass per column, unrolled: vmapping the VJP (jacrev) was ~2x slower on CPU
    grads = [vjp(jnp.zeros_like(e).at[:, k].set(1.0)) for k in range(e.shape[1])]
    return e, jnp.stack([g[0] for g in grads]), jnp.stack([g[1] for g in grads])


def volumes(cells: jax.Array) -> jax.Array:
    return jnp.abs(jnp.linalg.det(cells))


def make_predict(terms: Sequence[EnergyFn], *, members: bool) -> Callable:
    """Build ``predict(params, graphs) -> dict`` (not jitted; jit the result).

    ``members`` False: one reverse pass of the member-mean energy (what MD needs every step);
    ``energy_ensemble`` is still there (it costs no reverse pass). ``members`` True: member forces
    too (see the module docstring for their cost) and the ensemble spread. Stress is from the
    mean energy; it is NaN for a zero-volume (non-periodic) cell.
    """
    energy = summed_energy_fn(terms)

    def predict(params, graphs: Sequence[Graph]):
        g0 = main_graph(graphs[0])
        positions = g0.positions
        strain = jnp.zeros_like(g0.cells)
        vol = volumes(g0.cells)
        if members:
            e_members, d_pos, d_strain = member_derivatives(terms, params, positions, strain, graphs)
            f_members = -d_pos  # (M, N, 3)
            e_mean = jnp.mean(e_members, axis=1)
            forces = jnp.mean(f_members, axis=0)
            virial = jnp.mean(d_strain, axis=0)
            out = {"energy": e_mean, "forces": forces, "energy_ensemble": e_members,
                   "forces_ensemble": jnp.moveaxis(f_members, 0, -1),
                   "energy_uncertainty": jnp.std(e_members, axis=1),
                   "forces_uncertainty": jnp.std(f_members, axis=0)}
        else:
            def mean_total(r, s):
                e = energy(params, r, s, graphs)
                return jnp.sum(jnp.mean(e, axis=1)), e

            (_, e_members), (d_pos, virial) = jax.value_and_grad(mean_total, argnums=(0, 1), has_aux=True)(
                positions, strain)
            out = {"energy": jnp.mean(e_members, axis=1), "forces": -d_pos, "energy_ensemble": e_members}
        out["virial"] = virial
        out["stress"] = virial / vol[:, None, None]
        return out

    return predict
