"""Turning ase.Atoms into padded graphs (host side, numpy)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from ase import Atoms

from lotf.potential import neighbors
from lotf.potential.model import Graph, species_index


@dataclass
class StructureArrays:
    """One structure with its real (unpadded) pairs, ready to be collated into a batch."""

    positions: np.ndarray
    cell: np.ndarray
    pbc: np.ndarray
    numbers: np.ndarray
    species: np.ndarray
    neighbors: np.ndarray  # (n, k) local indices
    shifts: np.ndarray  # (n, k, 3)
    pair_mask: np.ndarray  # (n, k)

    @property
    def n_atoms(self) -> int:
        return len(self.numbers)

    @property
    def max_neighbors(self) -> int:
        return int(self.pair_mask.sum(axis=1).max(initial=0))


def structure_arrays(atoms: Atoms, species: tuple[int, ...], cutoff: float, where: str = "") -> StructureArrays:
    """Neighbour pairs within ``cutoff`` of one structure (no skin)."""
    numbers = atoms.get_atomic_numbers()
    if len(numbers) == 0:
        raise ValueError(f"structure{where} has no atoms")
    index = species_index(numbers, species, where)
    pbc = np.asarray(atoms.pbc, dtype=bool)
    cell = np.asarray(atoms.cell.array, dtype=float) if pbc.any() else np.zeros((3, 3))
    positions = np.asarray(atoms.positions, dtype=float)
    if not np.all(np.isfinite(positions)):
        raise ValueError(f"structure{where} has non-finite positions")
    spec, nbrs = neighbors.allocate(positions, cell, pbc, cutoff, capacity_factor=1.0)
    return StructureArrays(
        positions=positions, cell=cell, pbc=pbc, numbers=numbers.astype(np.int32), species=index,
        neighbors=nbrs.idx, shifts=nbrs.shifts, pair_mask=nbrs.mask,
    )


def round_up(n: int, multiple: int) -> int:
    return int(math.ceil(max(n, 1) / multiple) * multiple)


def collate(items: list[StructureArrays], n_atoms: int | None = None, n_neighbors: int | None = None,
            n_structures: int | None = None) -> Graph:
    """Concatenate structures into one padded :class:`Graph` (numpy arrays).

    Padding atoms (mask False) go to the last structure slot and have no neighbours. Sizes
    default to the exact totals.
    """
    total_atoms = sum(s.n_atoms for s in items)
    max_nb = max(s.max_neighbors for s in items)
    n_atoms = n_atoms or total_atoms
    n_neighbors = n_neighbors or max(max_nb, 1)
    n_structures = n_structures or len(items)
    if total_atoms > n_atoms or max_nb > n_neighbors or len(items) > n_structures:
        raise ValueError("batch does not fit its padding")

    positions = np.zeros((n_atoms, 3))
    cells = np.zeros((n_structures, 3, 3))
    species = np.zeros(n_atoms, np.int32)
    numbers = np.ones(n_atoms, np.int32)
    atom_mask = np.zeros(n_atoms, bool)
    structure = np.full(n_atoms, n_structures - 1, np.int32)
    nbr = np.broadcast_to(np.arange(n_atoms, dtype=np.int32)[:, None], (n_atoms, n_neighbors)).copy()
    shifts = np.zeros((n_atoms, n_neighbors, 3))
    pair_mask = np.zeros((n_atoms, n_neighbors), bool)

    a = 0
    for b, s in enumerate(items):
        na = s.n_atoms
        k = min(s.neighbors.shape[1], n_neighbors)
        positions[a:a + na] = s.positions
        cells[b] = s.cell
        species[a:a + na] = s.species
        numbers[a:a + na] = s.numbers
        atom_mask[a:a + na] = True
        structure[a:a + na] = b
        # rows are packed from slot 0, so slots beyond max_neighbors are padding
        nbr[a:a + na, :k] = np.where(s.pair_mask[:, :k], s.neighbors[:, :k] + a, nbr[a:a + na, :k])
        shifts[a:a + na, :k] = s.shifts[:, :k]
        pair_mask[a:a + na, :k] = s.pair_mask[:, :k]
        a += na
    return Graph(positions, cells, species, numbers, atom_mask, structure, nbr, shifts, pair_mask)
