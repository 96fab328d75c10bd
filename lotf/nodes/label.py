"""ZnTrack node: CP2K labels for the frames of any node that has ``frames``."""

from __future__ import annotations

import json
from pathlib import Path

import ase
import zntrack

from lotf.nodes.frames import read_h5md

from lotf.reference.labelling import label_frames, write_frames


class CP2KLabel(zntrack.Node):
    """CP2K single points for ``data`` (see :func:`lotf.reference.labelling.label_frames`).

    Finished single points live in the content-addressed store (``$LOTF_CP2K_STORE``, else
    ``~/.cache/lotf/cp2k``) outside the node's outputs, so a killed or re-run stage recomputes
    nothing that had finished. Failed structures are left out of ``frames``, counted in the
    metrics and listed with their reason in ``failures.json``.

    Attributes:
        data: structures to label (e.g. ``other_node.frames``).
        settings: CP2K settings YAML (a DVC params file: editing it re-runs the stage).
        n_ranks, n_threads: MPI ranks and OpenMP threads per CP2K run.
        cluster: Dask cluster config, e.g. ``{"kind": "slurm", "cores": 32, "memory": "64GB",
            "jobs": 8}`` (None: run in this process).
        retry_failed: run cached failures again.
    """

    data: list[ase.Atoms] = zntrack.deps()
    settings: str = zntrack.params_path()
    n_ranks: int = zntrack.params(1)
    n_threads: int = zntrack.params(1)
    cluster: dict | None = zntrack.params(None)
    retry_failed: bool = zntrack.params(False)

    frames_path: Path = zntrack.outs_path(zntrack.nwd / "frames.h5")
    failures_path: Path = zntrack.outs_path(zntrack.nwd / "failures.json")
    metrics: dict = zntrack.metrics()

    def run(self) -> None:
        labelled, report = label_frames(
            self.data, self.settings, n_ranks=self.n_ranks, n_threads=self.n_threads,
            cluster=self.cluster, retry_failed=self.retry_failed,
        )
        write_frames(self.frames_path, labelled)
        Path(self.failures_path).write_text(json.dumps(report.failures, indent=1))
        self.metrics = {k: report.metrics()[k] for k in ("n_total", "n_ok", "n_failed",
                                                         "n_cached", "n_computed")}

    @property
    def frames(self) -> list[ase.Atoms]:
        return read_h5md(self, self.frames_path)  # empty when every structure failed
