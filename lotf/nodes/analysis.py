"""ZnTrack nodes for the observables of issue 6: thin wrappers over :mod:`lotf.analysis`.

``data`` may be any node that exposes a trajectory file (attributes ``traj_file``,
``trajectory_file``, ``trajectory``, ``frames_path`` -- a file or a folder of ``.h5`` files --
or ``file``) or a ``frames`` list of ``ase.Atoms`` (the IPSuite convention); a file is
preferred because it is streamed.  Every node writes its figures as PNG, its curves as CSV
and small summaries as metrics.  CSVs with a fixed layout are ``zntrack.plots`` fields, so
they appear in ``dvc plots`` (RDF total, density trace, energy parity); the others (MSD per
group, dihedral histograms, COM MSD) are plain outputs whose columns depend on the system --
the campaign's dvc.yaml can add ``plots`` entries for the columns it wants.
"""

from __future__ import annotations

import logging
import os
import typing as t
from pathlib import Path

import ase
import numpy as np
import pandas as pd
import zntrack

from lotf.analysis import density as density_lib
from lotf.analysis import diffusion as diffusion_lib
from lotf.analysis import dihedrals as dihedral_lib
from lotf.analysis import exploration as exploration_lib
from lotf.analysis import metrics as metrics_lib
from lotf.analysis import plots
from lotf.analysis.io import SourceLike, read_frame, read_info
from lotf.analysis.rdf import compute_rdf
from lotf.nodes.revision import from_other_revision, local_path

log = logging.getLogger(__name__)

_FILE_ATTRIBUTES = ("traj_file", "trajectory_file", "trajectory", "frames_path", "file")


def as_runs(value: t.Any) -> list:
    """A dependency given as one node or as a list of nodes (independent runs), as a list."""
    return list(value) if isinstance(value, (list, tuple)) else [value]


def resolve_source(data: t.Any, file_index: int = 0) -> SourceLike:
    """A trajectory file path or a list of ``ase.Atoms`` from a node, path or list."""
    if isinstance(data, (str, os.PathLike)):
        return Path(data)
    if isinstance(data, (list, tuple)) and data and all(isinstance(a, ase.Atoms) for a in data):
        return list(data)
    for attr in _FILE_ATTRIBUTES:
        try:
            value = getattr(data, attr, None)
        except Exception:  # noqa: BLE001  (a lazy node attribute that cannot load)
            value = None
        if not isinstance(value, (str, os.PathLike)):
            continue
        path = Path(value)
        if from_other_revision(data):  # loaded with from_rev: that revision's file, not the workspace's
            try:
                path = local_path(data, path)
            except FileNotFoundError:
                continue
        if path.is_dir():
            files = sorted(path.glob("*.h5"))
            if files:
                if not 0 <= file_index < len(files):
                    raise ValueError(
                        f"data.{attr}: file_index {file_index} out of range ({len(files)} files)"
                    )
                return files[file_index]
        elif path.is_file():
            return path
    if hasattr(data, "frames"):
        frames = list(data.frames)
        if not frames:
            raise ValueError(f"data: node {getattr(data, 'name', data)!r} has no frames")
        return frames
    raise TypeError(
        f"data: {type(data).__name__} has neither a trajectory file attribute "
        f"({', '.join(_FILE_ATTRIBUTES)}) nor `frames`"
    )


def _frame_count(source) -> int:
    """Frames of a trajectory; 0 for a file a run that stopped at once left without frames."""
    if isinstance(source, list):
        return len(source)
    try:
        return read_info(source).n_frames
    except ValueError as error:
        if "no 'particles' group" in str(error):
            return 0
        raise


def _stopped_run_placeholder(node, n_frames: int, figure: Path) -> None:
    """Outputs of an analysis node whose run left fewer than 2 frames (an MD run that broke at once)."""
    log.warning("%s: the trajectory has %d frame(s); nothing to analyse", node.name, n_frames)
    node.nwd.mkdir(parents=True, exist_ok=True)
    Path(figure).write_bytes(b"")


class RDF(zntrack.Node):
    """g(r) of every element pair and the all-atom total; ``pairs`` (e.g. ``["B-B", "B-N"]``)
    selects what the figure and the metrics show.  ``rdf.csv`` holds all pairs."""

    data: t.Any = zntrack.deps()
    r_max: float | None = zntrack.params(None)
    n_bins: int = zntrack.params(200)
    pairs: list[str] | None = zntrack.params(None)
    start: int = zntrack.params(0)
    stop: int | None = zntrack.params(None)
    stride: int = zntrack.params(1)

    rdf: pd.DataFrame = zntrack.plots(x="r", y="total", x_label="r / A", y_label="g(r)")
    figure: Path = zntrack.plots_path(zntrack.nwd / "rdf.png")
    metrics: dict = zntrack.metrics()

    def run(self) -> None:
        n_frames = _frame_count(resolve_source(self.data))
        if n_frames < 2:
            _stopped_run_placeholder(self, n_frames, self.figure)
            columns = {"-".join(sorted(p.split("-"))): [np.nan] for p in (self.pairs or [])}
            self.rdf = pd.DataFrame({"r": [np.nan], **columns}).set_index("r")
            self.metrics = {"n_frames": n_frames}
            return
        res = compute_rdf(
            resolve_source(self.data),
            self.r_max,
            self.n_bins,
            None,
            start=self.start,
            stop=self.stop,
            stride=self.stride,
            progress=True,
        )
        shown = [tuple(p.split("-")) for p in self.pairs] if self.pairs else list(res.g)
        shown = [tuple(sorted(p)) for p in shown]
        for p in shown:
            if p not in res.g:
                raise ValueError(
                    f"pairs: {'-'.join(p)} not in the trajectory (have {['-'.join(k) for k in res.g]})"
                )
        self.nwd.mkdir(parents=True, exist_ok=True)
        self.rdf = res.to_dataframe().set_index("r")
        plots.plot_rdf(res, self.figure, shown)
        self.metrics = {
            "n_frames": res.n_frames,
            "first_peak_A": {f"{a}-{b}": float(res.r[np.argmax(res.g[(a, b)])]) for a, b in shown},
        }


class Diffusion(zntrack.Node):
    """MSD and Einstein D (block error bars), optionally Yeh-Hummer corrected.

    ``groups``: ``"H"`` (atoms of an element), ``"com:BF4"`` (centres of mass of molecules
    with that Hill formula); default every element and every molecule formula.
    """

    data: t.Any = zntrack.deps()
    groups: list[str] | None = zntrack.params(None)
    max_lag_ps: float | None = zntrack.params(None)
    fit_window_ps: list[float] | None = zntrack.params(None)
    n_blocks: int = zntrack.params(5)
    timestep_fs: float | None = zntrack.params(None)
    temperature: float | None = zntrack.params(None)
    viscosity_mpas: float | None = zntrack.params(None)
    xi: float = zntrack.params(diffusion_lib.XI_CUBIC)
    start: int = zntrack.params(0)
    stop: int | None = zntrack.params(None)
    stride: int = zntrack.params(1)
    remove_drift: bool = zntrack.params(False)

    msd_file: Path = zntrack.plots_path(zntrack.nwd / "msd.csv")
    figure: Path = zntrack.plots_path(zntrack.nwd / "msd.png")
    metrics: dict = zntrack.metrics()

    def run(self) -> None:
        source = resolve_source(self.data)
        n_frames = _frame_count(source)
        if n_frames < 2 or not self._enough_frames(source, n_frames):
            _stopped_run_placeholder(self, n_frames, self.figure)
            pd.DataFrame({"lag_ps": []}).to_csv(self.msd_file, index=False)
            nan = {"D_A2_per_ns": np.nan, "D_sem_A2_per_ns": np.nan, "D_yeh_hummer_A2_per_ns": np.nan}
            self.metrics = {**{g: dict(nan) for g in (self.groups or [])}, "n_frames": n_frames,
                            "box_length_A": None, "temperature_K": self.temperature}
            return
        first = read_frame(source, self.start)
        groups = self.groups or default_groups(first)
        results = diffusion_lib.compute_msd(
            source,
            groups,
            max_lag_fs=None if self.max_lag_ps is None else 1000.0 * self.max_lag_ps,
            n_blocks=self.n_blocks,
            timestep_fs=self.timestep_fs,
            start=self.start,
            stop=self.stop,
            stride=self.stride,
            remove_drift=self.remove_drift,
            progress=True,
        )
        window = (
            None if self.fit_window_ps is None else tuple(1000.0 * np.asarray(self.fit_window_ps))
        )
        box_length = (
            float(abs(np.linalg.det(first.cell.array)) ** (1.0 / 3.0))
            if first.cell.rank == 3
            else None
        )
        metrics, fits, frames = {}, {}, []
        for label, res in results.items():
            est = diffusion_lib.einstein_diffusion(res, window)
            fits[label] = est
            m = est.as_dict()
            m["n_particles"] = res.n_particles
            if self.temperature and self.viscosity_mpas and box_length:
                m["D_yeh_hummer_A2_per_ns"] = diffusion_lib.yeh_hummer(
                    est.D, self.temperature, self.viscosity_mpas, box_length, self.xi
                )
            metrics[label] = m
            df = res.to_dataframe()[["lag_ps", "msd"]].rename(columns={"msd": label})
            frames.append(df.set_index("lag_ps"))
        metrics["box_length_A"] = box_length
        metrics["temperature_K"] = self.temperature
        self.nwd.mkdir(parents=True, exist_ok=True)
        pd.concat(frames, axis=1).reset_index().to_csv(self.msd_file, index=False)
        plots.plot_msd(results, self.figure, fits)
        self.metrics = metrics


    def _enough_frames(self, source, n_frames: int) -> bool:
        """False when ``max_lag_ps`` does not fit into a block: an MD run that stopped early (a
        broken molecule) and left a short trajectory is recorded with NaN, not an error."""
        dt = self.timestep_fs if self.timestep_fs is not None else (
            None if isinstance(source, list) else read_info(source).timestep_fs)
        if self.max_lag_ps is None or not dt:
            return True
        selected = len(range(self.start, n_frames if self.stop is None else min(self.stop, n_frames), self.stride))
        max_lag = int(round(1000.0 * self.max_lag_ps / (dt * self.stride)))
        return selected // self.n_blocks > max_lag


def default_groups(atoms: ase.Atoms) -> list[str]:
    """Every element plus the centre of mass of every polyatomic molecule formula."""
    symbols = atoms.get_chemical_symbols()
    groups = sorted(set(symbols))
    mols = diffusion_lib.find_molecules(atoms)
    formulas = sorted({diffusion_lib.molecule_formula(symbols, m) for m in mols if len(m) > 1})
    return groups + [f"com:{f}" for f in formulas]


class BoxSizeExtrapolation(zntrack.Node):
    """D(L) -> infinite box by a linear fit in 1/L over several :class:`Diffusion` nodes.

    Metrics per group use the keys of :class:`Diffusion` (``D_A2_per_ns`` is the extrapolated
    value, ``D_sem_A2_per_ns`` its standard error), so :class:`ArrheniusPlot` takes these nodes
    as it takes Diffusion nodes. ``temperature`` None: the Diffusion nodes' common temperature.
    """

    diffusions: list = zntrack.deps()
    groups: list[str] = zntrack.params()
    temperature: float | None = zntrack.params(None)

    figures: Path = zntrack.outs_path(zntrack.nwd / "figures")
    metrics: dict = zntrack.metrics()

    def run(self) -> None:
        if len(self.diffusions) < 2:
            raise ValueError(f"BoxSizeExtrapolation: needs at least 2 box sizes, got {len(self.diffusions)}")
        temperature = self.temperature
        if temperature is None:
            temps = {node.metrics.get("temperature_K") for node in self.diffusions}
            if len(temps) != 1 or None in temps:
                raise ValueError(f"BoxSizeExtrapolation: set 'temperature' (the runs have {sorted(map(str, temps))})")
            temperature = temps.pop()
        sizes = [node.metrics.get("box_length_A") for node in self.diffusions]
        self.figures.mkdir(parents=True, exist_ok=True)
        metrics: dict = {"temperature_K": temperature, "box_lengths_A": sizes}
        for group in self.groups:
            L, D, err = [], [], []
            for node, length in zip(self.diffusions, sizes):
                if group not in node.metrics:
                    raise ValueError(f"group '{group}' not in the metrics of {node.name}")
                value = node.metrics[group]["D_A2_per_ns"]
                if length is None or not np.isfinite(value):  # a run that stopped or broke: no D
                    continue
                L.append(length)
                D.append(value)
                err.append(node.metrics[group]["D_sem_A2_per_ns"])
            if len(L) < 2:
                log.warning("%s: %s: %d box size(s) with a diffusion coefficient; no extrapolation",
                            self.name, group, len(L))
                metrics[group] = {"D_A2_per_ns": float("nan"), "D_sem_A2_per_ns": float("nan"), "D_finite_A2_per_ns": D}
                continue
            use_err = all(np.isfinite(e) and e > 0 for e in err)
            fit = diffusion_lib.extrapolate_box_size(L, D, err if use_err else None, temperature)
            # a line through noisy or broken runs can cross zero: an infinite-box D <= 0 is not a
            # diffusion coefficient, so it is reported as NaN (the fitted intercept kept beside it)
            physical = bool(np.isfinite(fit.D_inf) and fit.D_inf > 0)
            if not physical:
                log.warning("%s: %s: extrapolated D = %.4g Å²/ns is not positive; reported as NaN",
                            self.name, group, fit.D_inf)
            metrics[group] = {
                "D_A2_per_ns": fit.D_inf if physical else float("nan"),
                "D_intercept_A2_per_ns": fit.D_inf,
                "D_sem_A2_per_ns": fit.D_inf_err,
                "slope_A3_per_ns": fit.slope,
                "viscosity_mPa_s": fit.viscosity_mpas,
                "D_finite_A2_per_ns": D,
            }
            name = group.replace(":", "_")
            plots.plot_box_size_extrapolation(L, D, err if use_err else None, fit,
                                              self.figures / f"extrapolation_{name}.png", group)
        self.metrics = metrics


class ArrheniusPlot(zntrack.Node):
    """Arrhenius fit and plot of D(T) from several :class:`Diffusion` (or
    :class:`BoxSizeExtrapolation`) nodes against experiment.

    ``experimental`` maps a group label to a ``species`` of the experimental table, e.g.
    ``{"B": "BF4-", "com:C8H15N2": "BMIM+"}``; ``table`` is that table, a DVC dependency given
    relative to the project (the default is seed 1's BMIM-BF4 table).
    """

    diffusions: list = zntrack.deps()
    groups: list[str] = zntrack.params()
    experimental: dict[str, str] | None = zntrack.params(None)
    table: str = zntrack.deps_path("data/experimental/bmim_bf4_self_diffusion.csv")
    use_yeh_hummer: bool = zntrack.params(False)

    data_file: Path = zntrack.plots_path(zntrack.nwd / "arrhenius.csv")
    figure: Path = zntrack.plots_path(zntrack.nwd / "arrhenius.png")
    metrics: dict = zntrack.metrics()

    def run(self) -> None:
        rows = []
        for node in self.diffusions:
            m = node.metrics
            T = m.get("temperature_K")
            if T is None:
                raise ValueError(f"{node.name}: Diffusion.temperature is not set")
            for g in self.groups:
                key = "D_yeh_hummer_A2_per_ns" if self.use_yeh_hummer else "D_A2_per_ns"
                rows.append(
                    {
                        "T_K": T,
                        "group": g,
                        "D_A2_per_ns": m[g][key],
                        "D_sem_A2_per_ns": m[g]["D_sem_A2_per_ns"],
                    }
                )
        df = pd.DataFrame(rows)
        simulated, fits, metrics = {}, {}, {}
        for g, sub in df.groupby("group"):
            sub = sub.sort_values("T_K")
            err = sub["D_sem_A2_per_ns"].to_numpy()
            simulated[g] = (sub["T_K"].to_numpy(), sub["D_A2_per_ns"].to_numpy(), err)
            # a run that broke (NaN) or an unphysical extrapolation (D <= 0) has no logarithm:
            # the fit uses the other temperatures, and the dropped ones are named in the metrics
            usable = np.isfinite(sub["D_A2_per_ns"].to_numpy()) & (sub["D_A2_per_ns"].to_numpy() > 0)
            if not usable.all():
                dropped = [float(t) for t in sub["T_K"].to_numpy()[~usable]]
                log.warning("%s: %s: no positive D at %s K; left out of the fit", self.name, g, dropped)
                metrics[g] = {"dropped_T_K": dropped}
                sub, err = sub[usable], err[usable]
            if len(sub) >= 2:
                ok = np.all(np.isfinite(err) & (err > 0))
                fit = diffusion_lib.arrhenius_fit(
                    sub["T_K"], sub["D_A2_per_ns"], err if ok else None
                )
                fits[g] = fit
                metrics[g] = {
                    **metrics.get(g, {}),
                    "Ea_kJ_mol": fit.activation_energy_kj_mol,
                    "Ea_err_kJ_mol": fit.activation_energy_err,
                }
        exp = {}
        if self.experimental:
            table = diffusion_lib.load_experimental_diffusion(self.table)
            for species in self.experimental.values():
                sub = table[table["species"] == species].sort_values("T_K")
                exp[species] = (sub["T_K"].to_numpy(), sub["D_A2_per_ns"].to_numpy())
        self.nwd.mkdir(parents=True, exist_ok=True)
        df.to_csv(self.data_file, index=False)
        plots.plot_arrhenius(simulated, self.figure, exp, fits)
        self.metrics = metrics


class Density(zntrack.Node):
    """Mean NPT density with a 95 % interval (blocking, or ``n_blocks`` blocks + Student t).

    ``experimental``: the experimental density table compared at ``temperature``, a DVC
    dependency given relative to the project (None: no comparison).
    """

    data: t.Any = zntrack.deps()
    start: int = zntrack.params(0)
    stop: int | None = zntrack.params(None)
    stride: int = zntrack.params(1)
    n_blocks: int | None = zntrack.params(None)
    temperature: float | None = zntrack.params(None)
    experimental: str | None = zntrack.deps_path("data/experimental/bmim_bf4_density.csv")
    timestep_fs: float | None = zntrack.params(None)

    density: pd.DataFrame = zntrack.plots(
        x="time_ps", y="density_g_cm3", x_label="t / ps", y_label="density / g cm-3"
    )
    figure: Path = zntrack.plots_path(zntrack.nwd / "density.png")
    metrics: dict = zntrack.metrics()

    def run(self) -> None:
        source = resolve_source(self.data)
        n_frames = _frame_count(source)
        if n_frames < 2:  # the run stopped at once (a broken molecule): no density to report
            _stopped_run_placeholder(self, n_frames, self.figure)
            self.density = pd.DataFrame({"frame": [], "time_ps": [], "density_g_cm3": []}).set_index("frame")
            self.metrics = {"density_g_cm3": np.nan, "temperature_K": self.temperature, "n_frames": n_frames}
            return
        series = density_lib.density_series(
            source, self.start, self.stop, self.stride, self.timestep_fs, progress=True
        )
        est = density_lib.density_estimate(series["density_g_cm3"], self.n_blocks)
        metrics = est.as_dict()
        metrics["temperature_K"] = self.temperature
        reference = None
        if self.experimental and self.temperature is not None:
            reference = density_lib.experimental_density(self.temperature, self.experimental)
            metrics["experimental_g_cm3"] = reference
            metrics["relative_error"] = (est.mean - reference) / reference
        self.nwd.mkdir(parents=True, exist_ok=True)
        self.density = series.set_index("frame")
        plots.plot_density_trace(series["time_ps"], series["density_g_cm3"], self.figure, reference)
        self.metrics = metrics


class DensityComparison(zntrack.Node):
    """Densities of several models and temperatures against experiment (seed 1 Fig. 7).

    ``densities`` are :class:`Density` nodes (with ``temperature`` set), ``labels`` the model
    label of each (e.g. "MLP", "MLP+D3(20 Å)"). Writes a table, density against T per model
    (Fig. 7b) and a bar chart of every model at the lowest temperature (Fig. 7a).
    """

    densities: list = zntrack.deps()
    labels: list[str] = zntrack.params()
    experimental: str | None = zntrack.deps_path("data/experimental/bmim_bf4_density.csv")

    table: Path = zntrack.plots_path(zntrack.nwd / "densities.csv")
    figures: Path = zntrack.outs_path(zntrack.nwd / "figures")
    metrics: dict = zntrack.metrics()

    def run(self) -> None:
        if len(self.labels) != len(self.densities):
            raise ValueError(f"labels: {len(self.labels)} labels for {len(self.densities)} density nodes")
        rows = []
        for label, node in zip(self.labels, self.densities):
            m = node.metrics
            if m.get("temperature_K") is None:
                raise ValueError(f"{node.name}: Density.temperature is not set")
            ci_key = next((k for k in m if k.startswith("ci") and k.endswith("_g_cm3")), None)
            rows.append({"model": label, "T_K": m["temperature_K"], "density_g_cm3": m["density_g_cm3"],
                         "ci_g_cm3": m[ci_key] if ci_key else np.nan,
                         "experimental_g_cm3": m.get("experimental_g_cm3", np.nan)})
        df = pd.DataFrame(rows).sort_values(["model", "T_K"])
        self.figures.mkdir(parents=True, exist_ok=True)
        df.to_csv(self.table, index=False)
        temperatures = sorted(df["T_K"].unique())
        per_model = {}
        for label, sub in df.groupby("model", sort=False):
            sub = sub.set_index("T_K").reindex(temperatures)
            per_model[label] = (sub["density_g_cm3"].to_numpy(), sub["ci_g_cm3"].to_numpy())
        experiment = None
        if self.experimental:
            table = density_lib.load_experimental_density(self.experimental)
            experiment = (table["T_K"].to_numpy(), table["density_g_cm3"].to_numpy())
        plots.plot_density(temperatures, per_model, self.figures / "density_vs_T.png", experiment)
        coldest = df[df["T_K"] == temperatures[0]]
        bars = dict(zip(coldest["model"], coldest["density_g_cm3"]))
        if self.experimental:
            bars["experiment"] = density_lib.experimental_density(temperatures[0], self.experimental)
        plots.plot_bars(bars, self.figures / f"density_{temperatures[0]:.0f}K.png", "ρ / g cm⁻³",
                        dict(zip(coldest["model"], coldest["ci_g_cm3"])))
        self.metrics = {
            label: {f"{row.T_K:.0f}K": {"density_g_cm3": row.density_g_cm3,
                                         "relative_error": (row.density_g_cm3 - row.experimental_g_cm3)
                                         / row.experimental_g_cm3 if np.isfinite(row.experimental_g_cm3) else None}
                    for row in sub.itertuples()}
            for label, sub in df.groupby("model", sort=False)
        }


class ObservableTrend(zntrack.Node):
    """One metric of several nodes along a sequence (e.g. D per active-learning iteration, seed 2 Fig. 5b).

    ``key`` is a path into each node's metrics, "/"-separated (e.g. "com:H2O/D_yeh_hummer_A2_per_ns");
    ``error_key`` likewise for the error bar. ``series`` names the curve of each node (e.g. "md",
    "erbs") and ``steps`` its position on the x axis (e.g. the iteration). ``reference`` draws a
    horizontal line (seed 2: the experimental 241 Å²/ns of water); ``reference_node`` takes it
    from that node's metric at ``key`` instead (a ground-truth run), or from the mean over a list of
    such nodes (independent runs).
    """

    nodes: list = zntrack.deps()
    reference_node: t.Any = zntrack.deps(None)
    key: str = zntrack.params()
    error_key: str | None = zntrack.params(None)
    series: list[str] = zntrack.params()
    steps: list[str] = zntrack.params()
    reference: float | None = zntrack.params(None)
    reference_label: str = zntrack.params("experiment")
    y_label: str = zntrack.params("")

    table: Path = zntrack.plots_path(zntrack.nwd / "trend.csv")
    figure: Path = zntrack.plots_path(zntrack.nwd / "trend.png")
    metrics: dict = zntrack.metrics()

    @staticmethod
    def _lookup(metrics: dict, key: str, node_name: str):
        value = metrics
        for part in key.split("/"):
            if not isinstance(value, dict) or part not in value:
                raise ValueError(f"{node_name}: metric '{key}' not found (no '{part}')")
            value = value[part]
        return float(value)

    def run(self) -> None:
        if not len(self.nodes) == len(self.series) == len(self.steps):
            raise ValueError(f"nodes, series and steps differ in length: {len(self.nodes)}, {len(self.series)}, "
                             f"{len(self.steps)}")
        rows = []
        for node, series, step in zip(self.nodes, self.series, self.steps):
            rows.append({"series": series, "step": step, "value": self._lookup(node.metrics, self.key, node.name),
                         "error": self._lookup(node.metrics, self.error_key, node.name) if self.error_key
                         else np.nan})
        df = pd.DataFrame(rows)
        reference = self.reference
        if self.reference_node is not None:
            values = [self._lookup(r.metrics, self.key, r.name) for r in as_runs(self.reference_node)]
            reference = float(np.mean(values))
        self.nwd.mkdir(parents=True, exist_ok=True)
        df.to_csv(self.table, index=False)
        plots.plot_trend(df, self.figure, self.y_label or self.key, reference, self.reference_label)
        metrics = {s: dict(zip(sub["step"], sub["value"])) for s, sub in df.groupby("series", sort=False)}
        if reference is not None:
            metrics["reference"] = reference
            for s, sub in df.groupby("series", sort=False):
                metrics[s]["last_relative_error"] = (sub["value"].iloc[-1] - reference) / reference
        self.metrics = metrics


class Dihedrals(zntrack.Node):
    """Butyl-chain dihedral distributions of BMIM+ over time windows (seed 1 Fig. 5).

    The chains are found from the bond graph of the first frame of ``topology`` when given (e.g.
    the packed start box, whose molecules are intact by construction; same atom order as
    ``data``), else of the trajectory's first frame.
    """

    data: t.Any = zntrack.deps()
    topology: t.Any = zntrack.deps(None)
    windows_ps: list[list[float]] | None = zntrack.params(None)
    molecule: int | None = zntrack.params(0)
    n_bins: int = zntrack.params(72)
    timestep_fs: float | None = zntrack.params(None)
    stride: int = zntrack.params(1)

    hist_file: Path = zntrack.plots_path(zntrack.nwd / "dihedrals.csv")
    figure: Path = zntrack.plots_path(zntrack.nwd / "dihedrals.png")
    metrics: dict = zntrack.metrics()

    def run(self) -> None:
        windows = (
            None
            if self.windows_ps is None
            else [(1000.0 * a, 1000.0 * b) for a, b in self.windows_ps]
        )
        source = resolve_source(self.data)
        n_frames = _frame_count(source)
        if n_frames < 2:
            _stopped_run_placeholder(self, n_frames, self.figure)
            pd.DataFrame({"angle_deg": []}).to_csv(self.hist_file, index=False)
            self.metrics = {"n_frames": n_frames}
            return
        quads = None
        if self.topology is not None:
            reference = read_frame(resolve_source(self.topology), 0)
            if len(reference) != read_info(source).n_atoms:
                raise ValueError(f"topology: {len(reference)} atoms, the trajectory has {read_info(source).n_atoms}")
            quads = dihedral_lib.butyl_dihedral_quads(reference)
        res = dihedral_lib.dihedral_distributions(
            source,
            quads=quads,
            windows_fs=windows,
            n_bins=self.n_bins,
            timestep_fs=self.timestep_fs,
            molecule=self.molecule,
            stride=self.stride,
            progress=True,
        )
        self.nwd.mkdir(parents=True, exist_ok=True)
        res.to_dataframe().to_csv(self.hist_file, index=False)
        plots.plot_dihedrals(res, self.figure)
        self.metrics = {k: v.tolist() for k, v in res.n_samples.items()}


class PredictionMetrics(zntrack.Node):
    """Energy/force/stress errors of ``model`` on the labelled ``data`` frames, with parity
    plots; optionally the translational/rotational/vibrational force split."""

    data: t.Any = zntrack.deps()
    model: t.Any = zntrack.deps()
    decompose_forces: bool = zntrack.params(False)

    energy: pd.DataFrame = zntrack.plots(
        x="e_ref_eV_atom",
        y="e_pred_eV_atom",
        template="scatter",
        x_label="reference eV/atom",
        y_label="predicted eV/atom",
    )
    figures: Path = zntrack.outs_path(zntrack.nwd / "figures")
    metrics: dict = zntrack.metrics()

    def run(self) -> None:
        source = resolve_source(self.data)
        reference = list(source) if isinstance(source, list) else _read_frames(source)
        labels = metrics_lib.collect_labels(reference, "data")
        props = ["energy", "forces"] + (["stress"] if labels.stress is not None else [])
        predicted = metrics_lib.predict(reference, self.model.get_calculator(), props)
        pred = metrics_lib.collect_labels(predicted, "predicted")
        metrics = metrics_lib.prediction_metrics(reference, predicted)
        self.figures.mkdir(parents=True, exist_ok=True)
        if labels.energy is not None:
            e_ref, e_pred = labels.energy / labels.n_atoms, pred.energy / labels.n_atoms
            plots.plot_parity(e_ref, e_pred, self.figures / "energy.png", "energy", "eV/atom")
            self.energy = pd.DataFrame({"e_ref_eV_atom": e_ref, "e_pred_eV_atom": e_pred})
        else:
            self.energy = pd.DataFrame({"e_ref_eV_atom": [], "e_pred_eV_atom": []})
        if labels.forces is not None:
            plots.plot_parity(
                labels.forces, pred.forces, self.figures / "forces.png", "force components", "eV/Å"
            )
            plots.plot_parity(
                np.linalg.norm(labels.forces, axis=1),
                np.linalg.norm(pred.forces, axis=1),
                self.figures / "forces_norm.png",
                "|F|",
                "eV/Å",
            )
        if labels.stress is not None:
            plots.plot_parity(
                labels.stress, pred.stress, self.figures / "stress.png", "stress", "eV/Å³"
            )
        if self.decompose_forces and labels.forces is not None:
            dec, parts = metrics_lib.decomposed_force_metrics(reference, predicted)
            metrics["forces_decomposed"] = dec
            for name, (a, b) in parts.items():
                plots.plot_parity(
                    a, b, self.figures / f"forces_{name}.png", f"{name} forces", "eV/Å"
                )
        self.metrics = metrics


def _read_frames(path: Path) -> list[ase.Atoms]:
    import znh5md

    return list(znh5md.IO(path)[:])


class ExplorationMetrics(zntrack.Node):
    """Seed-2 exploration metrics for one or several sampling runs.

    * maximum displacement MSD of the ``group`` centres of mass (default BF4-);
    * PCA of system-averaged descriptors in one common basis (``pca``): the descriptor of
      ``model.get_descriptor()`` when the model has one (a callable ``atoms -> (n_atoms, F)``),
      else the model-free Gaussian moments of ERBS with cutoff ``descriptor_r_max``;
    * (Phi, Psi) coverage on a ``bin_deg`` grid when ``phi_atoms``/``psi_atoms`` are given.
    """

    data: t.Any = zntrack.deps()
    model: t.Any = zntrack.deps(None)
    names: list[str] | None = zntrack.params(None)
    group: str = zntrack.params("com:BF4")
    timestep_fs: float | None = zntrack.params(None)
    stride: int = zntrack.params(1)
    descriptor_stride: int = zntrack.params(10)
    pca: bool = zntrack.params(True)
    descriptor_r_max: float = zntrack.params(6.0)
    phi_atoms: list[int] | None = zntrack.params(None)
    psi_atoms: list[int] | None = zntrack.params(None)
    bin_deg: float = zntrack.params(15.0)

    msd_file: Path = zntrack.plots_path(zntrack.nwd / "com_msd.csv")
    figures: Path = zntrack.outs_path(zntrack.nwd / "figures")
    metrics: dict = zntrack.metrics()

    def run(self) -> None:
        runs = as_runs(self.data)
        names = self.names or [getattr(r, "name", None) or f"run{k}" for k, r in enumerate(runs)]
        if len(names) != len(runs):
            raise ValueError(f"names: {len(names)} names for {len(runs)} runs")
        sources = [resolve_source(r) for r in runs]
        self.figures.mkdir(parents=True, exist_ok=True)
        metrics: dict = {}
        curves = []
        # a run that stopped before its first frame (seed 2 reports such UDD runs) is recorded
        # with NaN metrics and left out of the curves and the PCA
        counts = [_frame_count(src) for src in sources]
        for name, n in zip(names, counts):
            if n == 0:
                log.warning("%s: run %s left no frames; recorded with NaN metrics", self.name, name)
                metrics[name] = {"n_frames": 0, "max_com_msd_A2": float("nan"), "time_of_max_ps": float("nan")}
        names_all = names
        names = [n for n, c in zip(names, counts) if c > 0]
        sources = [s for s, c in zip(sources, counts) if c > 0]
        for name, src in zip(names, sources):
            d = exploration_lib.com_displacement_msd(src, self.group, self.timestep_fs, self.stride)
            metrics[name] = {
                "max_com_msd_A2": d.max_msd,
                "time_of_max_ps": d.time_of_max_fs / 1000.0,
            }
            metrics[name]["n_frames"] = counts[names_all.index(name)]
            curves.append(
                pd.DataFrame({"run": name, "time_ps": d.time_fs / 1000.0, "msd_A2": d.msd})
            )
        columns = {"run": [], "time_ps": [], "msd_A2": []}
        (pd.concat(curves) if curves else pd.DataFrame(columns)).to_csv(self.msd_file, index=False)
        plots.plot_bars(
            {n: metrics[n]["max_com_msd_A2"] for n in names_all},
            self.figures / "max_com_msd.png",
            "max COM MSD / Å²",
        )
        if self.pca and sum(counts) < 3:
            log.warning("%s: %d frames in all runs; no PCA", self.name, sum(counts))
        elif self.pca:
            if self.model is not None and hasattr(self.model, "get_descriptor"):
                fn = self.model.get_descriptor()
            else:  # the model-free ERBS descriptor: one basis for runs of different models
                fn = exploration_lib.gaussian_moment_descriptor(self.descriptor_r_max)
            sets = [
                exploration_lib.system_averaged_descriptors(s, fn, self.descriptor_stride)
                for s in sources
            ]
            pca = exploration_lib.pca_common_basis(sets, 2)
            plots.plot_pca(
                dict(zip(names, pca.projections)),
                self.figures / "pca.png",
                color_by_time=names[-1:],
            )
            for name, spread in zip(names, pca.spread()):
                metrics[name]["pca_variance"] = spread
            metrics["pca_explained_variance_ratio"] = pca.explained_variance_ratio.tolist()
        if self.phi_atoms is not None and self.psi_atoms is not None:
            quads = {"phi": np.array([self.phi_atoms]), "psi": np.array([self.psi_atoms])}
            for name, src in zip(names, sources):
                phi, psi = _angles(src, quads, self.stride)
                cov = dihedral_lib.ramachandran_coverage(phi, psi, self.bin_deg)
                metrics[name]["phi_psi_coverage"] = cov
                plots.plot_ramachandran(
                    phi, psi, self.figures / f"ramachandran_{name}.png", self.bin_deg, cov
                )
        self.metrics = metrics


def _angles(
    source: SourceLike, quads: dict[str, np.ndarray], stride: int
) -> tuple[np.ndarray, np.ndarray]:
    from lotf.analysis.io import iter_chunks

    info = read_info(source)
    pbc = info.pbc if info.has_cell else False
    phi, psi = [], []
    for chunk in iter_chunks(source, 5000, stride=stride):
        phi.append(
            dihedral_lib.dihedral_angles(chunk.positions, quads["phi"], chunk.cells, pbc)[:, 0]
        )
        psi.append(
            dihedral_lib.dihedral_angles(chunk.positions, quads["psi"], chunk.cells, pbc)[:, 0]
        )
    return np.concatenate(phi), np.concatenate(psi)
