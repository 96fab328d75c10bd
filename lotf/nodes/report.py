"""Campaign report: one row per iteration (training-set size, test errors, sampling, labelling)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import zntrack

from lotf.nodes.frames import flatten


def test_errors(calc, frames) -> dict[str, float]:
    """Energy MAE (meV/atom) and force-component MAE (meV/Å) of a calculator on labelled frames."""
    de, df = [], []
    for atoms in frames:
        ref_e, ref_f = atoms.get_potential_energy(), atoms.get_forces()
        calc.calculate(atoms.copy(), ["energy", "forces"])
        de.append(abs(calc.results["energy"] - ref_e) / len(atoms))
        df.append(np.abs(calc.results["forces"] - ref_f).ravel())
    return {"test_energy_mae": 1e3 * float(np.mean(de)), "test_forces_mae": 1e3 * float(np.mean(np.concatenate(df)))}


class CampaignReport(zntrack.Node):
    """Collect per-iteration metrics of a campaign into one table (CSV for ``dvc plots``).

    ``iterations`` name the models (one per iteration); ``samplers`` and ``labels`` belong to the
    iterations named in ``sampled_iterations`` (the seed and bootstrap iterations have none).
    """

    iterations: list = zntrack.params()
    sampled_iterations: list = zntrack.params(default_factory=list)
    models: list = zntrack.deps()
    samplers: list = zntrack.deps(default_factory=list)
    labels: list = zntrack.deps(default_factory=list)
    test_data: list = zntrack.deps()

    table: pd.DataFrame = zntrack.plots(x="iteration", y=["test_energy_mae", "test_forces_mae"],
                                        x_label="iteration", title="error per iteration")
    report_dir: Path = zntrack.outs_path(zntrack.nwd / "report")

    def run(self) -> None:
        test = flatten(self.test_data)
        rows = []
        for k, name in enumerate(self.iterations):
            model = self.models[k]
            row = {"iteration": name, "n_train": int(model.metrics.get("n_train", 0))}
            row.update(test_errors(model.get_calculator(), test))
            j = self.sampled_iterations.index(name) if name in self.sampled_iterations else None
            metrics = (self.samplers[j].metrics or {}) if j is not None else {}
            row["steps_before_stop"] = metrics.get("steps_before_stop", np.nan)
            lmetrics = (self.labels[j].metrics or {}) if j is not None else {}
            row["cp2k_structures"] = lmetrics.get("n_total", 0)
            row["cp2k_failed"] = lmetrics.get("n_failed", 0)
            rows.append(row)
        self.table = pd.DataFrame(rows)
        out = Path(self.report_dir)
        out.mkdir(parents=True, exist_ok=True)
        self.table.to_csv(out / "iterations.csv", index=False)
        write_error_plot(self.table, out / "errors_per_iteration.png")


def write_error_plot(table: pd.DataFrame, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    for ax, key, unit in zip(axes, ("test_energy_mae", "test_forces_mae"), ("meV/atom", "meV/Å")):
        ax.plot(table["iteration"], table[key], marker="o")
        ax.set_ylabel(f"{key.replace('_', ' ')} ({unit})")
        ax.tick_params(axis="x", rotation=45)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
