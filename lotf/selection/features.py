"""Last-layer-gradient features of a GMNN for batch selection (seed 1: "last-layer gradients").

For ensemble member k and structure S, the member feature is the gradient of that member's
energy with respect to the output-layer parameters that feed it::

    g_k(S) = dE_k(S) / d(W_k, b_k)          (dimension H + 1, H = width of the last hidden layer)

(shallow ensembles: column k of the shared ``readout_out`` kernel and bias entry k; full
ensembles: the ``readout_out`` of model k). Since E is linear in (W_k, b_k),
g_k(S) = [sum_{i in S} s_{Z_i} z_i, sum_{i in S} s_{Z_i}] with z_i the last hidden activation.

The ensemble feature is the concatenation phi(S) = [g_1(S), ..., g_K(S)] / sqrt(K), whose linear
kernel phi(S).phi(S') = (1/K) sum_k g_k(S).g_k(S') is the average of the member kernels (apax sums
the member gradients instead, which adds cross terms between members).

Shallow ensembles share z_i between their heads, so g_1 = ... = g_K and the concatenation has
exactly the kernel (and distances) of g_1 alone: for them we return g_1, K times smaller.
Full ensembles return the concatenation, K (H + 1) features.

The gradients come from ``jax.jacrev`` of the batch's per-structure energies with respect to
``params["readout_out"]`` only, so nothing is differentiated through the hidden layers.
Structures are processed in padded batches of one shape: one compilation per model
configuration, unless a later structure needs more atoms or neighbours than any before it
(the padding only grows). Memory is one batch plus the (N, F) float64 result.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from ase import Atoms
from tqdm import tqdm

from lotf.potential.graph import StructureArrays, collate, round_up, structure_arrays
from lotf.potential.model import Graph, Model, ModelConfig

READOUT = "readout_out"


def member_gradients(model: Model, params: Any, graph: Graph) -> jax.Array:
    """(B, K, H + 1) gradients g_k of each structure's member energy w.r.t. its output layer."""
    cfg = model.config

    def energies(readout):
        return model.structure_energies({**params, READOUT: readout}, graph)  # (B, M)

    jac = jax.jacrev(energies)(params[READOUT])
    if cfg.ensemble == "full":
        # kernel (B, K, K, H, 1): member k's energy only depends on model k's readout
        kernel = jnp.diagonal(jac["kernel"][..., 0], axis1=1, axis2=2)  # (B, H, K)
        bias = jnp.diagonal(jac["bias"][..., 0], axis1=1, axis2=2)  # (B, K)
    else:
        # kernel (B, M, H, M): head m's energy only depends on kernel column m and bias m
        kernel = jnp.diagonal(jac["kernel"], axis1=1, axis2=3)  # (B, H, M)
        bias = jnp.diagonal(jac["bias"], axis1=1, axis2=2)  # (B, M)
    return jnp.concatenate([jnp.swapaxes(kernel, 1, 2), bias[..., None]], axis=-1).astype(jnp.float64)


def structure_features(model: Model, params: Any, graph: Graph) -> jax.Array:
    """(B, F) ensemble features of the structures of a batch (see the module docstring)."""
    g = member_gradients(model, params, graph)
    if model.config.ensemble == "shallow":
        return g[:, 0]
    k = g.shape[1]
    return g.reshape(g.shape[0], -1) / np.sqrt(k)


def n_features(model: Model) -> int:
    """Feature dimension: H + 1 (single network, shallow ensemble) or K (H + 1) (full ensemble)."""
    cfg = model.config
    width = cfg.hidden[-1] if cfg.hidden else cfg.n_features
    return (width + 1) * (cfg.n_members if cfg.ensemble == "full" else 1)


@functools.lru_cache(maxsize=8)
def _compiled_features(config_json: str):
    """One jitted feature function per model configuration, shared by all FeatureMaps."""
    model = Model(ModelConfig.from_dict(json.loads(config_json)))
    return jax.jit(lambda params, graph: structure_features(model, params, graph))


class FeatureMap:
    """Last-layer-gradient features of lists of structures, computed in fixed-shape batches.

    Args:
        model, params: a GMNN as returned by :func:`lotf.potential.io.load_model`.
        batch_size: structures per batch (memory grows linearly with it).
    """

    def __init__(self, model: Model, params: Any, batch_size: int = 16):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1 (got {batch_size})")
        if READOUT not in params:
            raise ValueError(f"model parameters have no '{READOUT}' layer: not a lotf GMNN")
        self.model = model
        self.params = params
        self.batch_size = int(batch_size)
        self.n_features = n_features(model)
        self._fn = _compiled_features(json.dumps(model.config.to_dict(), sort_keys=True))
        self._max_atoms = 0
        self._max_neighbors = 0

    def _padding(self, items: Sequence[StructureArrays]) -> tuple[int, int]:
        """Grow-only padding, so batches keep one shape (and one compilation) where possible."""
        self._max_atoms = max(self._max_atoms, *(s.n_atoms for s in items))
        self._max_neighbors = max(self._max_neighbors, *(s.max_neighbors for s in items))
        return round_up(self._max_atoms * self.batch_size, 8), round_up(self._max_neighbors, 8)

    def __call__(self, frames: Sequence[Atoms], progress: bool = True, desc: str = "features") -> np.ndarray:
        """(len(frames), n_features) float64 features; an unknown element fails naming the frame."""
        cfg = self.model.config
        out = np.empty((len(frames), self.n_features))
        pending = None  # (start, device array): keeps host work overlapping the device's
        bar = tqdm(total=len(frames), desc=desc, disable=not progress, leave=False, unit="structure")
        for start in range(0, len(frames), self.batch_size):
            chunk = frames[start:start + self.batch_size]
            items = [structure_arrays(a, cfg.species, cfg.r_max, where=f" ({desc} frame {start + j})")
                     for j, a in enumerate(chunk)]
            n_atoms, n_neighbors = self._padding(items)
            graph = collate(items, n_atoms=n_atoms, n_neighbors=n_neighbors, n_structures=self.batch_size)
            result = self._fn(self.params, graph)
            if pending is not None:
                self._store(out, *pending, bar)
            pending = (start, len(chunk), result)
        if pending is not None:
            self._store(out, *pending, bar)
        bar.close()
        if not np.all(np.isfinite(out)):
            bad = int(np.flatnonzero(~np.all(np.isfinite(out), axis=1))[0])
            raise ValueError(f"{desc} frame {bad}: non-finite last-layer-gradient features")
        return out

    @staticmethod
    def _store(out: np.ndarray, start: int, n: int, result: jax.Array, bar: tqdm) -> None:
        out[start:start + n] = np.asarray(result)[:n]
        bar.update(n)
