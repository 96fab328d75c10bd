"""Streaming reader: chunked reads equal a full read (znh5md files and lists of Atoms)."""

import ase
import h5py
import numpy as np
import pytest
import znh5md
from ase.calculators.singlepoint import SinglePointCalculator

from lotf.analysis.io import (
    iter_chunks,
    read_all,
    read_frame,
    read_info,
    write_h5md_like_znh5md,
)


def _frames(n=23, n_atoms=5, seed=0, npt=True):
    rng = np.random.default_rng(seed)
    frames = []
    for i in range(n):
        L = 6.0 + (0.1 * np.sin(i) if npt else 0.0)
        a = ase.Atoms(
            "H3OC", positions=rng.random((n_atoms, 3)) * L, cell=[L, L + 1, L + 2], pbc=True
        )
        a.calc = SinglePointCalculator(
            a, energy=float(i) * 0.5, forces=rng.normal(size=(n_atoms, 3))
        )
        frames.append(a)
    return frames


@pytest.fixture
def h5file(tmp_path):
    frames = _frames()
    path = tmp_path / "traj.h5"
    io = znh5md.IO(path, timestep=2.5)
    io.extend(frames)
    return path, frames


def test_info_from_znh5md_file(h5file):
    path, frames = h5file
    info = read_info(path)
    assert info.n_frames == len(frames)
    assert info.symbols == frames[0].get_chemical_symbols()
    np.testing.assert_allclose(info.masses, frames[0].get_masses())
    assert info.timestep_fs == pytest.approx(2.5)
    assert info.has_cell and info.has_energy and info.pbc.all()


@pytest.mark.parametrize(
    "chunk_size,start,stop,stride",
    [(4, 0, None, 1), (7, 3, 20, 2), (100, 0, None, 5), (1, 22, None, 1)],
)
def test_streaming_equals_full_read(h5file, chunk_size, start, stop, stride):
    path, frames = h5file
    sel = frames[start:stop:stride]
    chunks = list(iter_chunks(path, chunk_size, start, stop, stride, energies=True))
    assert all(len(c) <= chunk_size for c in chunks)
    pos = np.concatenate([c.positions for c in chunks])
    cells = np.concatenate([c.cells for c in chunks])
    energies = np.concatenate([c.energies for c in chunks])
    idx = np.concatenate([c.frames for c in chunks])
    np.testing.assert_array_equal(idx, np.arange(len(frames))[start:stop:stride])
    np.testing.assert_allclose(pos, [a.positions for a in sel])
    np.testing.assert_allclose(cells, [a.cell.array for a in sel])
    np.testing.assert_allclose(energies, [a.get_potential_energy() for a in sel])
    # the same from the list of Atoms
    full = read_all(sel, energies=True)
    np.testing.assert_allclose(full.positions, pos)
    np.testing.assert_allclose(full.energies, energies)


def test_read_frame_and_list_source(h5file):
    path, frames = h5file
    atoms = read_frame(path, 7)
    np.testing.assert_allclose(atoms.positions, frames[7].positions)
    np.testing.assert_allclose(atoms.cell.array, frames[7].cell.array)
    assert read_info(frames).n_frames == len(frames)


def test_bulk_writer_reads_back_with_znh5md(tmp_path):
    rng = np.random.default_rng(1)
    numbers = np.array([5, 9, 9, 9, 9, 1])
    blocks = [(rng.random((k, 6, 3)) * 8, np.tile(np.eye(3) * 8, (k, 1, 1))) for k in (3, 5, 2)]
    path = write_h5md_like_znh5md(tmp_path / "big.h5", numbers, 10, iter(blocks), timestep_fs=0.5)
    io = znh5md.IO(path)
    assert len(io) == 10
    np.testing.assert_allclose(io[4].positions, blocks[1][0][1])
    np.testing.assert_array_equal(io[0].numbers, numbers)
    full = read_all(path)
    np.testing.assert_allclose(full.positions, np.concatenate([b[0] for b in blocks]))
    with h5py.File(path) as f:
        assert f["particles/atoms/position/value"].chunks[1:] == (6, 3)


def test_bad_inputs(tmp_path, h5file):
    path, _ = h5file
    with pytest.raises(FileNotFoundError, match="missing.h5"):
        read_info(tmp_path / "missing.h5")
    with pytest.raises(ValueError, match="chunk_size"):
        next(iter_chunks(path, 0))
    with pytest.raises(ValueError, match="stride"):
        next(iter_chunks(path, 5, stride=0))
    with pytest.raises(ValueError, match="start"):
        next(iter_chunks(path, 5, start=100))
    with pytest.raises(ValueError, match="group 'nope'"):
        read_info(path, group="nope")
    with pytest.raises(ValueError, match="empty"):
        read_info([])


@pytest.mark.slow
def test_analysis_benchmark_runs_small(tmp_path):
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location(
        "bench_analysis", Path(__file__).parents[2] / "benchmarks" / "analysis.py"
    )
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = bench.analysis_benchmark(frames=2000, max_lag_ps=5.0, keep=tmp_path / "b.h5")
    assert out["n_atoms"] == 300 and out["rdf_pairs"] == 15
    assert out["peak_mem_mb"] < 2048
    assert abs(out["D_com_BF4_A2_per_ns"] - 50.0) < 5 * out["D_com_BF4_sem"] + 5.0
