"""ZnTrack node: final models' MD side by side with the reference force field's own MD."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import zntrack


class ReferenceComparison(zntrack.Node):
    """Compare MLP runs with the reference run of the same system, temperature and size.

    ``runs``, ``rdfs`` and ``diffusions`` are parallel lists (one entry per model, named by
    ``names``); ``reference_*`` are the reference's own ``ReferenceMD``/``RDF``/``Diffusion``;
    ``reference_diffusion`` may be a list (independent runs): D_ref is then their mean, with the
    standard error of that mean from their spread.
    Per model: D/D_ref for ``group``, the largest |g(r) − g_ref(r)| of ``pair``, mean temperature
    against ``temperature``, and the picoseconds before a stop check fired (``stable_ps``).
    ``metrics`` also name the best model by D and RDF, and give the reference's ``rdf_noise_floor``
    (its two halves against each other at the same binning).
    """

    names: list = zntrack.params()
    runs: list = zntrack.deps()
    rdfs: list = zntrack.deps()
    diffusions: list = zntrack.deps()
    reference_run: object = zntrack.deps()
    reference_rdf: object = zntrack.deps()
    reference_diffusion: object = zntrack.deps()
    group: str = zntrack.params("com:H2O")
    pair: str = zntrack.params("O-O")
    temperature: float = zntrack.params(300.0)
    timestep: float = zntrack.params(0.5)

    table: pd.DataFrame = zntrack.plots(x="model", y=["D_ratio", "rdf_max_abs_dev"], x_label="model",
                                        title="MLP against the reference")
    figure: Path = zntrack.plots_path(zntrack.nwd / "rdf_comparison.png")
    metrics: dict = zntrack.metrics()

    def run(self) -> None:
        from lotf.analysis.validation import NOISE_FLOOR_MIN_FRAMES, compare_run, mean_of_runs, rdf_noise_floor
        from lotf.nodes.analysis import _frame_count, as_runs, resolve_source

        if not (len(self.names) == len(self.runs) == len(self.rdfs) == len(self.diffusions)):
            raise ValueError("ReferenceComparison: names, runs, rdfs and diffusions need one entry per model")
        ref_ds = [float(r.metrics[self.group]["D_A2_per_ns"]) for r in as_runs(self.reference_diffusion)]
        ref_d, ref_sem = mean_of_runs(ref_ds)
        ref_rdf = self.reference_rdf.rdf
        rows = []
        for name, run, rdf, diffusion in zip(self.names, self.runs, self.rdfs, self.diffusions):
            row = compare_run(run.metrics, diffusion.metrics, rdf.rdf, reference_D=ref_d, reference_rdf=ref_rdf,
                              group=self.group, pair=self.pair, target_temperature=self.temperature,
                              timestep_fs=self.timestep)
            rows.append({"model": name, **row})
        self.table = pd.DataFrame(rows)
        source = resolve_source(self.reference_run)
        # what rdf_max_abs_dev can resolve at this binning: the reference against itself (None for
        # a reference too short to halve)
        floor = rdf_noise_floor(source, self.pair, np.asarray(ref_rdf.index, float)) \
            if _frame_count(source) >= NOISE_FLOOR_MIN_FRAMES else None
        reference = {"D_A2_per_ns": ref_d, "T_mean_K": self.reference_run.metrics.get("temperature_mean_K"),
                     "rdf_noise_floor": floor}
        if len(ref_ds) > 1:
            reference.update(D_runs_A2_per_ns=ref_ds, D_sem_A2_per_ns=ref_sem)
        self.metrics = {"reference": reference, "models": {r["model"]: {k: v for k, v in r.items() if k != "model"}
                                                           for r in rows}}
        self._plot([rdf.rdf for rdf in self.rdfs], ref_rdf)

    def _plot(self, tables, reference) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        self.nwd.mkdir(parents=True, exist_ok=True)
        fig, ax = plt.subplots(figsize=(5, 3.5))
        ax.plot(reference.index, reference[self.pair], "k-", lw=2, label="reference")
        for name, table in zip(self.names, tables):
            ax.plot(table.index, table[self.pair], lw=1, label=name)
        ax.set_xlabel("r / Å")
        ax.set_ylabel(f"g(r) {self.pair}")
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(self.figure, dpi=120)
        plt.close(fig)


class ReferenceDensity(zntrack.Node):
    """NPT densities of MLP runs against the reference force field's own NPT density.

    ``densities`` are ``Density`` nodes of the MLP runs, ``names`` the model of each (a model with
    several independent runs is named once per run; its density is their mean), ``reference`` the
    reference's ``Density`` node or nodes (independent NPT runs at the same temperature and
    pressure). ``metrics``: the reference's mean density and, per model, its mean, standard error,
    the single runs and the relative error (:func:`lotf.analysis.validation.density_against_reference`).
    """

    names: list = zntrack.params()
    densities: list = zntrack.deps()
    reference: object = zntrack.deps()

    metrics: dict = zntrack.metrics()

    def run(self) -> None:
        from lotf.analysis.validation import density_against_reference, density_runs
        from lotf.nodes.analysis import as_runs

        if len(self.names) != len(self.densities):
            raise ValueError("ReferenceDensity: names and densities need one entry per run")
        ref_runs = [r.metrics for r in as_runs(self.reference)]
        runs: dict[str, list[dict]] = {}
        for name, d in zip(self.names, self.densities):
            runs.setdefault(name, []).append(d.metrics)
        self.metrics = {"reference": density_runs(ref_runs),
                        "models": {name: density_against_reference(r, ref_runs) for name, r in runs.items()}}
