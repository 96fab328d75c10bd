"""Campaign report: one row per iteration (training-set size, test errors, sampling, labelling)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import zntrack

from lotf.nodes.frames import flatten


def test_errors(calc, frames) -> dict[str, float]:
    """Energy MAE (meV/atom), force-component MAE (meV/Å) and, where every frame is periodic with
    a reference stress, stress-component MAE (meV/Å³) of a calculator on labelled frames."""
    de, df, ds = [], [], []
    with_stress = bool(frames) and all(
        a.pbc.all() and a.calc is not None and "stress" in getattr(a.calc, "results", {}) for a in frames)
    for atoms in frames:
        ref_e, ref_f = atoms.get_potential_energy(), atoms.get_forces()
        calc.calculate(atoms.copy(), ["energy", "forces", "stress"] if with_stress else ["energy", "forces"])
        de.append(abs(calc.results["energy"] - ref_e) / len(atoms))
        df.append(np.abs(calc.results["forces"] - ref_f).ravel())
        if with_stress and "stress" in calc.results:
            ds.append(np.abs(np.asarray(calc.results["stress"]) - atoms.get_stress()).ravel())
    errors = {"test_energy_mae": 1e3 * float(np.mean(de)), "test_forces_mae": 1e3 * float(np.mean(np.concatenate(df)))}
    if ds:
        errors["test_stress_mae"] = 1e3 * float(np.mean(np.concatenate(ds)))
    return errors


def _number(value):
    """A JSON number, or None for a missing or NaN value."""
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if np.isfinite(value) else None


def campaign_summary(table: pd.DataFrame, n_test: int) -> dict:
    """The campaign in one small metrics file for ``dvc exp show``: dataset sizes, the last
    iteration's test errors, the points selected, labelled and failed over all iterations, and
    the steps each iteration's sampling ran before it stopped."""
    if table.empty:
        return {"n_iterations": 0, "n_test": n_test}
    last = table.iloc[-1]
    summary = {"n_iterations": len(table), "final_iteration": str(last["iteration"]),
               "n_train_final": int(last["n_train"]), "n_test": n_test}
    for key, name in (("test_energy_mae", "final_energy_mae_meV_atom"), ("test_forces_mae", "final_forces_mae_meV_A"),
                      ("test_stress_mae", "final_stress_mae_meV_A3")):
        summary[name] = _number(last[key]) if key in table else None
    for key in ("requested", "screened", "selected", "labelled", "failed"):
        if key in table:
            summary[f"total_{key}"] = int(pd.to_numeric(table[key], errors="coerce").fillna(0).sum())
    if "steps_before_stop" in table:
        summary["steps_before_stop"] = {str(row["iteration"]): _number(row["steps_before_stop"])
                                        for _, row in table.iterrows()
                                        if _number(row["steps_before_stop"]) is not None}
    return summary


class CampaignReport(zntrack.Node):
    """Collect per-iteration metrics of a campaign into one table (CSV for ``dvc plots``).

    ``iterations`` name the models (one per iteration); ``samplers`` belong to the iterations
    named in ``sampled_iterations``, ``labels`` (reference nodes) to ``labelled_iterations``
    (default: ``sampled_iterations``) and ``selections`` (selection nodes) to
    ``selected_iterations``; an iteration may have several of each, or none (seed, bootstrap).
    Per iteration the table shows the points ``requested`` by its selections, ``screened`` out
    before selection, ``selected``, ``labelled`` by the reference and ``failed`` there, so a
    short pool or failed single points never shrink a training set silently. Models of
    ``no_d3_iterations`` are tested on ``test_data_no_d3`` (the same structures without D3).
    """

    iterations: list = zntrack.params()
    sampled_iterations: list = zntrack.params(default_factory=list)
    labelled_iterations: list | None = zntrack.params(None)
    selected_iterations: list = zntrack.params(default_factory=list)
    no_d3_iterations: list = zntrack.params(default_factory=list)
    models: list = zntrack.deps()
    samplers: list = zntrack.deps(default_factory=list)
    labels: list = zntrack.deps(default_factory=list)
    selections: list = zntrack.deps(default_factory=list)
    test_data: list = zntrack.deps()
    test_data_no_d3: list | None = zntrack.deps(None)

    table: pd.DataFrame = zntrack.plots(x="iteration", y=["test_energy_mae", "test_forces_mae"],
                                        x_label="iteration", title="error per iteration")
    report_dir: Path = zntrack.outs_path(zntrack.nwd / "report")
    summary: dict = zntrack.metrics()  # summary.json: the campaign's one metrics file (campaign_summary)

    def run(self) -> None:
        test = flatten(self.test_data)
        test_no_d3 = flatten(self.test_data_no_d3) if self.test_data_no_d3 is not None else test
        labelled_in = self.labelled_iterations if self.labelled_iterations is not None else self.sampled_iterations

        def of(nodes, names, name):
            return [(node.metrics or {}) for node, owner in zip(nodes, names) if owner == name]

        rows = []
        for k, name in enumerate(self.iterations):
            model = self.models[k]
            row = {"iteration": name, "n_train": int(model.metrics.get("n_train", 0))}
            row.update(test_errors(model.get_calculator(), test_no_d3 if name in self.no_d3_iterations else test))
            runs = of(self.samplers, self.sampled_iterations, name)
            row["steps_before_stop"] = runs[0].get("steps_before_stop", np.nan) if runs else np.nan
            if len(runs) > 1:  # several samplers: the earliest stop
                row["steps_before_stop"] = min(m.get("steps_before_stop", np.nan) for m in runs)
            picks = of(self.selections, self.selected_iterations, name)
            row["requested"] = sum(int(m.get("n_requested", m.get("n_selected", 0))) for m in picks)
            row["screened"] = sum(int(m.get("n_screened", 0)) for m in picks)
            row["selected"] = sum(int(m.get("n_selected", 0)) for m in picks)
            labels = of(self.labels, labelled_in, name)
            row["labelled"] = sum(int(m.get("n_ok", m.get("n_total", 0) - m.get("n_failed", 0))) for m in labels)
            row["failed"] = sum(int(m.get("n_failed", 0)) for m in labels)
            if not picks:  # every structure labelled without a selection (e.g. packed conformer boxes)
                row["requested"] = row["selected"] = sum(int(m.get("n_total", 0)) for m in labels)
            rows.append(row)
        self.table = pd.DataFrame(rows)
        self.summary = campaign_summary(self.table, len(test))
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
