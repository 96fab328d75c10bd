"""The GMNN model: configuration, parameters and energy functions.

The model maps a *graph* (one or several structures concatenated, padded) to per-structure
energies for every ensemble member. Forces and stress are derivatives of that one function
(see :mod:`lotf.potential.predict`); nothing else computes them.

Ensembles:
* ``shallow``: one network whose last layer has ``n_members`` outputs (Kellner & Ceriotti).
* ``full``: ``n_members`` independently initialised networks, parameters stacked on axis 0 and
  evaluated with ``jax.vmap``.
Both expose the same (n_structures, n_members) energies, so everything downstream is shared.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from ase.data import chemical_symbols

from lotf.potential import descriptor as gm

COULOMB_EV_A = 14.399645478425668  # e^2 / (4 pi eps0) in eV * Angstrom
ZBL_COEFFICIENTS = (0.18175, 0.50986, 0.28022, 0.02817)
ZBL_EXPONENTS = (3.19980, 0.94229, 0.40290, 0.20162)


class ConfigError(ValueError):
    """A configuration problem, reported as one line naming the key."""


@dataclass
class ModelConfig:
    """GMNN hyperparameters. Defaults are the seed-1 (BMIM-BF4) values."""

    species: tuple[int, ...] = ()  # atomic numbers the model knows; filled from the training data
    basis: str = "gaussian"  # "gaussian" or "bessel"
    n_basis: int = 7
    r_min: float = 0.7
    r_max: float = 5.5
    n_radial: int = 5
    contractions: tuple[int, ...] = tuple(range(gm.N_CONTRACTIONS))
    hidden: tuple[int, ...] = (512, 512)
    activation: str = "swish"
    ensemble: str = "shallow"  # "shallow" or "full"
    n_members: int = 1
    zbl: bool = False  # physical ZBL repulsion (with the Coulomb constant), added to every member
    zbl_cutoff: float = 1.5
    dtype: str = "float32"  # descriptor and network; sums, scale and shift are always float64

    def __post_init__(self):
        self.species = tuple(int(z) for z in self.species)
        self.contractions = tuple(int(c) for c in self.contractions)
        self.hidden = tuple(int(h) for h in self.hidden)
        checks = [
            ("basis", self.basis in ("gaussian", "bessel"), "must be 'gaussian' or 'bessel'"),
            ("n_basis", self.n_basis >= 1, "must be >= 1"),
            ("n_radial", self.n_radial >= 1, "must be >= 1"),
            ("r_max", self.r_max > self.r_min >= 0, "must be larger than r_min >= 0"),
            ("contractions", len(self.contractions) > 0 and set(self.contractions) <= set(range(8))
             and len(set(self.contractions)) == len(self.contractions), "must be distinct values in 0..7"),
            ("ensemble", self.ensemble in ("shallow", "full"), "must be 'shallow' or 'full'"),
            ("n_members", self.n_members >= 1, "must be >= 1"),
            ("dtype", self.dtype in ("float32", "float64"), "must be 'float32' or 'float64'"),
            ("activation", self.activation in ACTIVATIONS, f"must be one of {sorted(ACTIVATIONS)}"),
        ]
        for key, ok, message in checks:
            if not ok:
                raise ConfigError(f"model config: '{key}' {message} (got {getattr(self, key)!r})")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        for key in data:
            if key not in known:
                raise ConfigError(f"model config: unknown key '{key}' (known: {', '.join(sorted(known))})")
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        for key, value in out.items():
            if isinstance(value, tuple):
                out[key] = list(value)
        return out

    @property
    def n_features(self) -> int:
        return gm.n_features(self.n_radial, self.contractions)

    @property
    def heads(self) -> int:
        """Outputs of one network: members for shallow ensembles, 1 for each model of a full one."""
        return self.n_members if self.ensemble == "shallow" else 1

    @property
    def jnp_dtype(self):
        return jnp.float32 if self.dtype == "float32" else jnp.float64


def _vp_swish(x):
    # swish rescaled to unit variance for unit-normal input (variance-preserving swish)
    return 1.6765324703310907 * jax.nn.swish(x)


ACTIVATIONS = {"swish": jax.nn.swish, "silu": jax.nn.silu, "vp_swish": _vp_swish, "tanh": jnp.tanh,
               "gelu": jax.nn.gelu, "relu": jax.nn.relu, "softplus": jax.nn.softplus}


class Graph(NamedTuple):
    """One or more structures concatenated into padded arrays.

    ``species`` indexes ``ModelConfig.species``; padded atoms have ``atom_mask`` False and belong
    to the last structure slot. Neighbours are stored per row atom (see neighbors.py); padded
    slots have ``pair_mask`` False.
    """

    positions: jax.Array  # (N, 3) float64
    cells: jax.Array  # (B, 3, 3)
    species: jax.Array  # (N,) int32
    numbers: jax.Array  # (N,) int32 atomic numbers (ZBL needs the charges)
    atom_mask: jax.Array  # (N,) bool
    structure: jax.Array  # (N,) int32 in [0, B)
    neighbors: jax.Array  # (N, K) int32 neighbour atoms of each row atom
    shifts: jax.Array  # (N, K, 3) integer image shifts
    pair_mask: jax.Array  # (N, K) bool


def _uniform_symmetric(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -1.0, 1.0)


class GMNN(nn.Module):
    """Atomic energies (N, heads) in float64 for one network."""

    config: ModelConfig

    @nn.compact
    def __call__(self, graph: Graph) -> jax.Array:
        cfg = self.config
        dtype = cfg.jnp_dtype
        n_species = max(len(cfg.species), 1)

        vec, dist = gm.pair_geometry(graph, dtype)
        unit = vec / dist[..., None]
        if cfg.basis == "gaussian":
            basis = gm.gaussian_basis(dist, cfg.n_basis, cfg.r_min, cfg.r_max)
        else:
            basis = gm.bessel_basis(dist, cfg.n_basis, cfg.r_max)
        basis = basis * (gm.cosine_cutoff(dist, cfg.r_max) * graph.pair_mask / math.sqrt(cfg.n_basis))[..., None]
        # element-pair contraction c[Z_centre, Z_neighbour, r, k], gathered per pair (a one-hot
        # formulation measured 2x slower in the force pass on CPU)
        coeffs = self.param("embedding", _uniform_symmetric,
                            (n_species, n_species, cfg.n_radial, cfg.n_basis), dtype)
        pair_coeffs = coeffs[graph.species[:, None], graph.species[graph.neighbors]]  # (N, K, R, B)
        radial = jnp.einsum("nkrb,nkb->nkr", pair_coeffs, basis)
        features = gm.contract(*gm.moments(radial, unit), cfg.contractions)

        act = ACTIVATIONS[cfg.activation]
        h = features
        for width in cfg.hidden:
            h = act(nn.Dense(width, dtype=dtype, param_dtype=dtype)(h))
        h = nn.Dense(cfg.heads, dtype=dtype, param_dtype=dtype, name="readout_out")(h)

        scale = self.param("scale", nn.initializers.ones, (n_species, 1), jnp.float64)
        shift = self.param("shift", nn.initializers.zeros, (n_species, 1), jnp.float64)
        energies = scale[graph.species] * h.astype(jnp.float64) + shift[graph.species]
        return energies * graph.atom_mask[:, None]


def zbl_atom_energies(graph: Graph, cutoff: float) -> jax.Array:
    """Physical ZBL screened nuclear repulsion per atom (half of every pair to each atom)."""
    _, dist = gm.pair_geometry(graph)
    zi = graph.numbers.astype(jnp.float64)[:, None]
    zj = graph.numbers[graph.neighbors].astype(jnp.float64)
    a = 0.46850 / (zi**0.23 + zj**0.23)
    r = jnp.maximum(dist, 1e-2)
    x = r / a
    phi = sum(c * jnp.exp(-d * x) for c, d in zip(ZBL_COEFFICIENTS, ZBL_EXPONENTS))
    within = graph.pair_mask & (dist < cutoff)
    pair = jnp.where(within, COULOMB_EV_A * zi * zj / r * phi * gm.cosine_cutoff(r, cutoff), 0.0)
    return 0.5 * jnp.sum(pair, axis=1)


class MemberwiseEnergy:
    """The energy term of a full ensemble: ``(params, graph) -> (B, K)``, plus ``member(params_k,
    graph) -> (B,)`` for one member's parameters, so that member forces cost K single-model
    reverse passes instead of K reverse passes through all K networks (see predict.py)."""

    def __init__(self, model: "Model"):
        self.model = model

    def __call__(self, params: dict, graph: Graph) -> jax.Array:
        return self.model.structure_energies(params, graph)

    def member(self, params_k: dict, graph: Graph) -> jax.Array:
        energies = self.model.network.apply({"params": params_k}, graph)[:, 0]
        if self.model.config.zbl:
            energies = energies + zbl_atom_energies(graph, self.model.config.zbl_cutoff)
        return jax.ops.segment_sum(energies, graph.structure, num_segments=graph.cells.shape[0])


class Model:
    """A GMNN (single network, shallow or full ensemble) bound to its configuration."""

    def __init__(self, config: ModelConfig):
        self.config = config
        self.network = GMNN(config)
        # what predict.py differentiates: full ensembles member by member, shallow ones per head
        self.energy_term = MemberwiseEnergy(self) if config.ensemble == "full" else self.structure_energies

    def init(self, key: jax.Array, graph: Graph) -> dict:
        if self.config.ensemble == "full":
            keys = jax.random.split(key, self.config.n_members)
            return jax.vmap(lambda k: self.network.init(k, graph)["params"])(keys)
        return self.network.init(key, graph)["params"]

    def atom_energies(self, params: dict, graph: Graph) -> jax.Array:
        """(N, n_members) float64 atomic energies."""
        if self.config.ensemble == "full":
            per_model = jax.vmap(lambda p: self.network.apply({"params": p}, graph))(params)  # (K, N, 1)
            energies = jnp.transpose(per_model[..., 0])
        else:
            energies = self.network.apply({"params": params}, graph)
        if self.config.zbl:
            energies = energies + zbl_atom_energies(graph, self.config.zbl_cutoff)[:, None]
        return energies

    def structure_energies(self, params: dict, graph: Graph) -> jax.Array:
        """(B, n_members) float64 energies per structure and member."""
        return jax.ops.segment_sum(self.atom_energies(params, graph), graph.structure,
                                   num_segments=graph.cells.shape[0])


def species_index(numbers: np.ndarray, species: tuple[int, ...], where: str = "") -> np.ndarray:
    """Map atomic numbers to model species indices; unknown elements fail naming the element."""
    lookup = np.full(max(max(species, default=0), int(np.max(numbers, initial=0))) + 1, -1, dtype=np.int32)
    lookup[list(species)] = np.arange(len(species), dtype=np.int32)
    index = lookup[np.asarray(numbers)]
    if np.any(index < 0):
        bad = sorted({chemical_symbols[z] for z in np.asarray(numbers)[index < 0]})
        known = ", ".join(chemical_symbols[z] for z in species)
        raise ValueError(f"unknown element {', '.join(bad)}{where}: the model knows {known}")
    return index
