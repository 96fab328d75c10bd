"""Labelled data sets: validation of frames, neighbour lists once, padded batches of fixed shape."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
from ase import Atoms
from tqdm import tqdm

from lotf.potential.graph import StructureArrays, collate, round_up, structure_arrays
from lotf.potential.model import Graph


class DataError(ValueError):
    """Bad training data, reported as one line naming the frame."""


class Labels(NamedTuple):
    energy: np.ndarray  # (B,)
    forces: np.ndarray  # (N, 3)
    stress: np.ndarray  # (B, 3, 3) eV/Å³, ASE sign
    has_stress: np.ndarray  # (B,) bool
    n_atoms: np.ndarray  # (B,) float, 0 for padded structures
    structure_mask: np.ndarray  # (B,) bool
    volume: np.ndarray  # (B,)


def frame_labels(atoms: Atoms, index: int, name: str = "data") -> tuple[float, np.ndarray, np.ndarray | None]:
    """Energy, forces and (optional) 3x3 stress of a frame; missing or NaN labels fail naming the frame."""
    calc = atoms.calc
    results = getattr(calc, "results", {}) if calc is not None else {}
    if "energy" not in results:
        raise DataError(f"{name} frame {index}: no energy label")
    if "forces" not in results:
        raise DataError(f"{name} frame {index}: no forces label")
    energy = float(results["energy"])
    forces = np.asarray(results["forces"], dtype=float)
    if forces.shape != (len(atoms), 3):
        raise DataError(f"{name} frame {index}: forces have shape {forces.shape}, expected ({len(atoms)}, 3)")
    if not np.isfinite(energy) or not np.all(np.isfinite(forces)):
        raise DataError(f"{name} frame {index}: NaN or infinite energy/forces label")
    stress = results.get("stress")
    if stress is not None and atoms.pbc.all():
        stress = np.asarray(stress, dtype=float)
        if stress.shape == (6,):
            xx, yy, zz, yz, xz, xy = stress
            stress = np.array([[xx, xy, xz], [xy, yy, yz], [xz, yz, zz]])
        if not np.all(np.isfinite(stress)):
            raise DataError(f"{name} frame {index}: NaN stress label")
    else:
        stress = None
    return energy, forces, stress


class Dataset:
    """Frames with labels and neighbour lists, batched into padded graphs of one fixed shape."""

    def __init__(self, frames: list[Atoms], species: tuple[int, ...], cutoff: float, name: str = "data",
                 progress: bool = True):
        if len(frames) == 0:
            raise DataError(f"{name}: empty data set")
        self.name = name
        self.frames = frames
        self.labels = [frame_labels(a, i, name) for i, a in enumerate(frames)]
        self.items: list[StructureArrays] = [
            structure_arrays(a, species, cutoff, where=f" ({name} frame {i})")
            for i, a in enumerate(tqdm(frames, desc=f"neighbours {name}", disable=not progress, leave=False))
        ]
        self.max_atoms = max(s.n_atoms for s in self.items)
        self.max_neighbors = max(s.max_neighbors for s in self.items)

    def __len__(self) -> int:
        return len(self.items)

    def padding(self, batch_size: int) -> tuple[int, int]:
        """(atoms, neighbours per atom) of a batch: the worst case, so every batch has one shape.

        Rounded up to buckets (at most 1/8 extra atoms, neighbours to 8) so that a data set that
        grows between iterations mostly keeps its shapes and the compiled step.
        """
        return bucket(self.max_atoms * batch_size), round_up(self.max_neighbors, 8)

    def batch(self, indices, batch_size: int, padding: tuple[int, int]) -> tuple[Graph, Labels]:
        items = [self.items[i] for i in indices]
        graph = collate(items, n_atoms=padding[0], n_neighbors=padding[1], n_structures=batch_size)
        energy = np.zeros(batch_size)
        forces = np.zeros((padding[0], 3))
        stress = np.zeros((batch_size, 3, 3))
        has_stress = np.zeros(batch_size, bool)
        n_atoms = np.zeros(batch_size)
        mask = np.zeros(batch_size, bool)
        volume = np.ones(batch_size)
        a = 0
        for b, i in enumerate(indices):
            e, f, s = self.labels[i]
            n = len(f)
            energy[b] = e
            forces[a:a + n] = f
            if s is not None:
                stress[b] = s
                has_stress[b] = True
                volume[b] = abs(np.linalg.det(self.items[i].cell))
            n_atoms[b] = n
            mask[b] = True
            a += n
        return graph, Labels(energy, forces, stress, has_stress, n_atoms, mask, volume)

    def batches(self, batch_size: int, padding: tuple[int, int], rng: np.random.Generator | None = None,
                order: np.ndarray | None = None):
        """Padded batches in ``order`` (default: shuffled with ``rng``, or in file order)."""
        if order is None:
            order = np.arange(len(self)) if rng is None else rng.permutation(len(self))
        for start in range(0, len(order), batch_size):
            yield self.batch(order[start:start + batch_size], batch_size, padding)


def emphasised_order(new: np.ndarray, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """One epoch of ``len(new)`` draws of which ``fraction`` are structures with ``new`` set.

    New structures are cycled (each in turn before any repeats), old ones drawn without
    replacement; a plain permutation when new ones already make up ``fraction`` or either kind
    is missing, so new data are never drawn less often than uniformly.
    """
    new = np.asarray(new, bool)
    n = len(new)
    new_idx, old_idx = np.flatnonzero(new), np.flatnonzero(~new)
    n_new = int(round(fraction * n))
    if len(new_idx) == 0 or len(old_idx) == 0 or len(new_idx) >= n_new:
        return rng.permutation(n)
    cycles = -(-n_new // len(new_idx))
    drawn_new = np.concatenate([rng.permutation(new_idx) for _ in range(cycles)])[:n_new]
    drawn_old = rng.choice(old_idx, size=n - n_new, replace=False)
    return rng.permutation(np.concatenate([drawn_new, drawn_old]))


def fingerprint(atoms: Atoms) -> dict:
    """What identifies a structure across file round trips: its elements (exactly) and moments of
    its positions and its volume (to a relative 1e-6, which text and float32 storage keep; two
    frames of a trajectory differ far more). Compared by :func:`seen_before`."""
    import hashlib

    pos = np.asarray(atoms.positions, float)
    moments = [*pos.sum(axis=0), *(pos**2).sum(axis=0), abs(atoms.cell.volume)]
    return {"elements": hashlib.sha1(np.asarray(atoms.numbers, np.int64).tobytes()).hexdigest(),
            "moments": [float(m) for m in moments]}


def seen_before(fingerprints: list[dict], earlier: list[dict]) -> np.ndarray:
    """For each fingerprint, whether one of ``earlier`` matches it."""
    by_elements: dict[str, list] = {}
    for f in earlier:
        by_elements.setdefault(f["elements"], []).append(f["moments"])
    tables = {k: np.asarray(v) for k, v in by_elements.items()}
    seen = np.zeros(len(fingerprints), bool)
    for i, f in enumerate(fingerprints):
        table = tables.get(f["elements"])
        if table is not None:
            m = np.asarray(f["moments"])
            seen[i] = bool(np.any(np.all(np.abs(table - m) <= 1e-6 * (1 + np.abs(m)), axis=1)))
    return seen


def bucket(n: int) -> int:
    """``n`` rounded up to a multiple of 2^(floor(log2 n) - 3), at least 8: 8 buckets per octave."""
    step = max(8, 2 ** (max(int(n), 1).bit_length() - 4))
    return round_up(n, step)


def species_of(frames: list[Atoms]) -> tuple[int, ...]:
    return tuple(sorted({int(z) for a in frames for z in a.get_atomic_numbers()}))
