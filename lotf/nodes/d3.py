"""ZnTrack node: add or remove the D3(BJ) dispersion of DFT labels (energy, forces, stress)."""

from __future__ import annotations

from pathlib import Path

import ase
import zntrack

from lotf.nodes.frames import read_h5md, write_h5md


class RecomputeD3(zntrack.Node):
    """Shift the DFT labels of ``data`` by the D3(BJ) dispersion of :class:`lotf.D3Calculator`.

    ``mode="add"`` turns DFT labels into DFT+D3 labels, ``"remove"`` takes D3 out of labels
    computed with it. Seed 1 compares DFT (D3 removed), DFT+D3(8 A) and DFT+D3(20 A): three of
    these nodes with ``cutoff`` 8 and 20. Lengths in A; CP2K's ``R_CUTOFF`` X is ``cutoff=2 X``
    (to remove CP2K's own D3 from the seed-1 labels: cutoff 15.87532, three_body True,
    short_range_correction True, cp2k_triangle_weights True).

    Attributes:
        data: structures with DFT labels (e.g. ``other_node.frames``); every frame needs an
            energy, forces and stress are shifted when present.
        mode: "add" or "remove".
        functional, cutoff, cn_cutoff, three_body, three_body_cutoff, convention,
            short_range_correction, cp2k_triangle_weights: as in :class:`lotf.D3Calculator`.
    """

    data: list[ase.Atoms] = zntrack.deps()
    mode: str = zntrack.params("add")
    functional: str = zntrack.params("b97-3c")
    cutoff: float = zntrack.params(20.0)
    cn_cutoff: float | None = zntrack.params(None)
    three_body: bool = zntrack.params(False)
    three_body_cutoff: float | None = zntrack.params(None)
    convention: str = zntrack.params("cp2k")
    short_range_correction: bool = zntrack.params(False)
    cp2k_triangle_weights: bool = zntrack.params(False)

    frames_path: Path = zntrack.outs_path(zntrack.nwd / "frames.h5")

    def get_calculator(self, **kwargs):
        """The D3 calculator with this node's settings (IPSuite's ``get_calculator`` protocol)."""
        from lotf.potential.d3_calculator import D3Calculator

        return D3Calculator(
            functional=self.functional, cutoff=self.cutoff, cn_cutoff=self.cn_cutoff, three_body=self.three_body,
            three_body_cutoff=self.three_body_cutoff, convention=self.convention,
            short_range_correction=self.short_range_correction, cp2k_triangle_weights=self.cp2k_triangle_weights,
            **kwargs,
        )

    def run(self) -> None:
        from lotf.potential.d3_calculator import recompute_labels

        frames = self.data.frames if hasattr(self.data, "frames") else self.data
        write_h5md(self.frames_path, recompute_labels(list(frames), self.get_calculator(), self.mode))

    @property
    def frames(self) -> list[ase.Atoms]:
        return read_h5md(self, self.frames_path)
