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
    idx_i: np.ndarray
    idx_j: np.ndarray
    shifts: np.ndarray

    @property
    def n_atoms(self) -> int:
        return len(self.numbers)

    @property
    def n_pairs(self) -> int:
        return len(self.idx_i)


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
    _, nbrs = neighbors.allocate(positions, cell, pbc, cutoff)
    mask = np.asarray(nbrs.mask)
    return StructureArrays(
        positions=positions, cell=cell, pbc=pbc, numbers=numbers.astype(np.int32), species=index,
        idx_i=np.asarray(nbrs.idx_i)[mask], idx_j=np.asarray(nbrs.idx_j)[mask],
        shifts=np.asarray(nbrs.shifts)[mask],
    )


def round_up(n: int, multiple: int) -> int:
    return int(math.ceil(max(n, 1) / multiple) * multiple)


def collate(items: list[StructureArrays], n_atoms: int | None = None, n_pairs: int | None = None,
            n_structures: int | None = None) -> Graph:
    """Concatenate structures into one padded :class:`Graph` (numpy arrays).

    Padding atoms (mask False) go to the last structure slot; padded pairs point at the last
    atom. Sizes default to the exact totals (+1 atom so padded pairs never touch a real atom).
    """
    total_atoms = sum(s.n_atoms for s in items)
    total_pairs = sum(s.n_pairs for s in items)
    n_atoms = n_atoms or total_atoms + 1
    n_pairs = n_pairs or max(total_pairs, 1)
    n_structures = n_structures or len(items)
    if total_atoms > n_atoms or total_pairs > n_pairs or len(items) > n_structures:
        raise ValueError("batch does not fit its padding")

    positions = np.zeros((n_atoms, 3))
    cells = np.zeros((n_structures, 3, 3))
    species = np.zeros(n_atoms, np.int32)
    numbers = np.ones(n_atoms, np.int32)
    atom_mask = np.zeros(n_atoms, bool)
    structure = np.full(n_atoms, n_structures - 1, np.int32)
    idx_i = np.full(n_pairs, n_atoms - 1, np.int32)
    idx_j = np.full(n_pairs, n_atoms - 1, np.int32)
    shifts = np.zeros((n_pairs, 3))
    pair_mask = np.zeros(n_pairs, bool)

    a = p = 0
    for b, s in enumerate(items):
        na, npair = s.n_atoms, s.n_pairs
        positions[a:a + na] = s.positions
        cells[b] = s.cell
        species[a:a + na] = s.species
        numbers[a:a + na] = s.numbers
        atom_mask[a:a + na] = True
        structure[a:a + na] = b
        idx_i[p:p + npair] = s.idx_i + a
        idx_j[p:p + npair] = s.idx_j + a
        shifts[p:p + npair] = s.shifts
        pair_mask[p:p + npair] = True
        a += na
        p += npair
    return Graph(positions, cells, species, numbers, atom_mask, structure, idx_i, idx_j, shifts, pair_mask)
