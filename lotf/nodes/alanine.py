"""Alanine dipeptide coverage benchmark of seed 2 §3.1 (Fig. 2): runs, coverage, summary.

One run is Langevin MD of ACE-ALA-NME in vacuum on Amber99SB (:mod:`lotf.reference.amber`, the
JAX port of OpenMM's system inside our jitted MD loop), unbiased or with the ERBS bias; the
(Φ, Ψ) coverage is the fraction of visited 15° × 15° cells (:func:`ramachandran_coverage`), also
as a function of time.

Dissociation: a :class:`~lotf.dynamics.checks.BondGraphCheck` stops the run at the first bond that
breaks or forms (seed 2 reports dissociating runs for k = 2). Such a run is recorded
(``dissociated``: true, the step it happened, the coverage of the frames before it) and left out
of the best coverage; it never stops the group.

ERBS parameter conventions (``convention``), see the README section "ERBS benchmark":

* ``"code"`` (default): the numbers of seed 2's scan read as the erbs code that produced them
  takes them: ΔE as a multiple of k_B T (the node's ``barrier_factor``), σ as the kernel *variance*
  ``a`` (lotf's bandwidth, a standard deviation, is √a), descriptor r_min 1.5 Å (hard-coded there),
  r_max 6 Å, 4 basis functions.
* ``"code_d"``: as ``"code"``, and the bias uses the erbs code's kernel sum, which is the
  normalised density times the number of CV dimensions D (P and Z are built inconsistently there).
  V = (γ-1)/β log(D·P/Z + ε) + ΔE: 0 where nothing was deposited as in lotf, but (γ-1)/β·ln D
  higher in visited regions (the forces of log(P/Z + ε/D)).
* ``"text"``: as seed 2's text states them: ΔE in eV (whole system), σ a standard deviation.
* ``"reference"``: as ``"code"``, and every piece of the erbs code's bias arithmetic (HEAD 1684443):
  the kernel sum P = Σ_k h_k Σ_d exp(−|s − c_k|²/(2 v_kd)) (D-fold, merged kernels keep the summed
  height with their grown variances, not renormalised), Z = (1/N_ref) Σ_kl exp(−|s_k − s_l|²/(2a))
  over the *uncompressed* references at the initial variance a, and a random N(0, 1) projection
  while there are fewer references than k (``few_refs="random"``).
* ``"reference_bessel"``: as ``"reference"`` with the descriptor the erbs code had from 2024-11-17 to
  2025-01-22 (apax's Bessel basis, 4 functions, r_max 6 Å, no r_min), whose principal components
  are ~14x smaller for alanine dipeptide, so that σ = 0.05 … 0.5 is comparable to their spread.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import zntrack
from ase import units

CONVENTIONS = ("code", "code_d", "text", "reference", "reference_bessel")
BIN_DEG = 15.0


def _code_kernel_erbs():
    """ERBS with the erbs code's D-fold kernel sum, V = (γ-1)/β log(D·P/Z + ε) + ΔE (``convention="code_d"``):
    still 0 where nothing was deposited, (γ-1)/β·ln D higher than lotf's where P/Z ≫ ε."""
    import jax.numpy as jnp

    from lotf.dynamics.biases import ERBS, log_density

    class CodeKernelERBS(ERBS):
        def energy_from_cv(self, state, s, n_atoms):
            barrier = self.total_barrier(n_atoms)
            gamma = barrier / self.kT
            log_eps = -gamma / (gamma - 1.0)
            log_p = log_density(s, state.kernels) + jnp.log(float(self.n_components))  # the code's D-fold sum
            return (gamma - 1.0) * self.kT * jnp.logaddexp(log_p - state.log_z, log_eps) + barrier

    return CodeKernelERBS


def _reference_erbs():
    """ERBS with the erbs code's bias arithmetic (``convention="reference"``, module docstring)."""
    import jax
    import jax.numpy as jnp

    from lotf.dynamics.biases import ERBS

    class ReferenceERBS(ERBS):
        def energy_from_cv(self, state, s, n_atoms):
            barrier = self.total_barrier(n_atoms)
            gamma = barrier / self.kT
            kern = state.kernels
            valid = jnp.arange(kern.heights.shape[0]) < kern.count
            var = jnp.where(valid[:, None], kern.variances, 1.0)
            d2 = jnp.sum((s[None, :] - kern.centers) ** 2, axis=1)  # the code's scalar squared distance
            t = jnp.log(jnp.where(valid, kern.heights, 1.0))[:, None] - 0.5 * d2[:, None] / var  # (C, D)
            log_p = jax.scipy.special.logsumexp(jnp.where(valid[:, None], t, -jnp.inf))
            a = self.bandwidth**2  # the code's `a`, the kernel variance at deposition
            x = (state.refs - state.mean) @ state.components
            rvalid = jnp.arange(x.shape[0]) < state.n_refs
            dd = jnp.sum((x[:, None, :] - x[None, :, :]) ** 2, axis=-1)
            pair = rvalid[:, None] & rvalid[None, :]
            log_z = (jax.scipy.special.logsumexp(jnp.where(pair, -0.5 * dd / a, -jnp.inf))
                     - jnp.log(jnp.maximum(state.n_refs, 1).astype(x.dtype)))
            log_z = jax.lax.stop_gradient(log_z)
            return (gamma - 1.0) * self.kT * jnp.logaddexp(log_p - log_z, -gamma / (gamma - 1.0)) + barrier

    return ReferenceERBS


def erbs_bias(barrier: float, bandwidth: float, n_components: int, interval: int, convention: str = "code",
              temperature: float = 300.0):
    """lotf's :class:`~lotf.dynamics.biases.ERBS` for a seed-2 (ΔE, σ, k) in the given convention."""
    from lotf.dynamics.biases import ERBS, seed2_erbs_parameters

    if convention not in CONVENTIONS:
        raise ValueError(f"convention must be one of {', '.join(CONVENTIONS)}, got {convention!r}")
    cls = {"code_d": _code_kernel_erbs, "reference": _reference_erbs,
           "reference_bessel": _reference_erbs}.get(convention, lambda: ERBS)()
    extra = {}
    if convention.startswith("reference"):
        extra = dict(few_refs="random", radial_basis="bessel" if convention == "reference_bessel" else "gaussian")
    # every convention but "text" reads (ΔE, σ) as the erbs code does; ΔE for the whole molecule
    reading = "text" if convention == "text" else "code"
    return cls(**seed2_erbs_parameters(barrier, bandwidth, n_components, interval, reading, temperature), **extra)


def coverage_curve(phi: np.ndarray, psi: np.ndarray, times_fs: np.ndarray, every_fs: float = 1000.0,
                   bin_deg: float = BIN_DEG) -> list[tuple[float, float]]:
    """(time ps, coverage of the frames up to then) every ``every_fs``, plus the last frame."""
    from lotf.analysis.dihedrals import ramachandran_histogram

    n = int(round(360.0 / bin_deg))
    wrap = lambda a: (np.asarray(a) + 180.0) % 360.0 - 180.0  # noqa: E731
    i = np.clip(((wrap(phi) + 180.0) // bin_deg).astype(int), 0, n - 1)
    j = np.clip(((wrap(psi) + 180.0) // bin_deg).astype(int), 0, n - 1)
    seen = np.zeros((n, n), bool)
    out, next_t = [], every_fs
    for k, t in enumerate(times_fs):
        seen[i[k], j[k]] = True
        if t >= next_t - 1e-9 or k == len(times_fs) - 1:
            out.append((float(t) / 1000.0, float(seen.mean())))
            while next_t <= t + 1e-9:
                next_t += every_fs
    if len(phi):  # consistency with the histogram definition
        assert abs(out[-1][1] - float(np.count_nonzero(ramachandran_histogram(phi, psi, bin_deg)) / n**2)) < 1e-12
    return out


def run_alanine(method: str = "md", temperature: float = 300.0, steps: int = 160_000, timestep: float = 0.5,
                friction: float = 0.01, sampling_rate: int = 20, interval: int = 10_000, barrier: float = 20.0,
                bandwidth: float = 0.05, n_components: int = 4, convention: str = "code", seed: int = 0,
                structure=None, keep_positions: bool = True) -> dict:
    """One coverage run; returns metrics, the (Φ, Ψ) series and, if asked, the frames' positions.

    ``method`` "md" (no bias) or "erbs" (``barrier``, ``bandwidth``, ``n_components`` in
    ``convention``, thermostat temperature ``temperature``).
    """
    import jax

    jax.config.update("jax_enable_x64", True)
    from lotf.analysis.dihedrals import dihedral_angles, ramachandran_coverage
    from lotf.dynamics.checks import BondGraphCheck
    from lotf.dynamics.integrators import Langevin
    from lotf.dynamics.md import MDRun
    from lotf.dynamics.potential import ForceField, JaxBase
    from lotf.reference import amber

    if method not in ("md", "erbs"):
        raise ValueError(f"method must be 'md' or 'erbs', got {method!r}")
    for key, value in (("steps", steps), ("sampling_rate", sampling_rate), ("interval", interval)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"'{key}' must be a positive integer, got {value!r}")
    atoms = amber.load_structure() if structure is None else structure.copy()
    amber.check_atoms(atoms, "start structure")
    atoms.pbc = False
    atoms.cell = None
    system = amber.AmberSystem()
    bias = erbs_bias(barrier, bandwidth, n_components, interval, convention, temperature) if method == "erbs" else None
    ff = ForceField(JaxBase([system.energy_term(6.0)], tuple(sorted(set(atoms.numbers)))), bias)
    run = MDRun(atoms, ff, Langevin(timestep=timestep, friction=friction), int(steps), float(temperature),
                sampling_rate=int(sampling_rate), seed=int(seed), checks=[BondGraphCheck()], on_trigger="stop",
                progress=False, keep_frames=True)
    t0 = time.perf_counter()
    summary = run.run()
    wall = time.perf_counter() - t0
    pos = np.stack([f.positions for f in run.frames]) if run.frames else np.zeros((0, len(atoms), 3))
    times = np.array([f.info.get("time", (k + 1) * sampling_rate * timestep) for k, f in enumerate(run.frames)], float)
    phi = dihedral_angles(pos, np.array([amber.PHI]), pbc=False)[:, 0] if len(pos) else np.zeros(0)
    psi = dihedral_angles(pos, np.array([amber.PSI]), pbc=False)[:, 0] if len(pos) else np.zeros(0)
    dissociated = bool(summary.stopped and summary.stop_reason and "bond" in summary.stop_reason)
    bias = np.array([float(f.calc.results.get("energy_bias", 0.0)) if f.calc is not None else 0.0
                     for f in run.frames])
    kin_t = np.array([float(f.info["temperature"]) for f in run.frames if "temperature" in f.info])
    out = {
        "method": method, "temperature": float(temperature), "steps": int(steps), "timestep": float(timestep),
        "duration_ps": steps * timestep / 1000.0, "interval": int(interval), "convention": convention,
        "barrier": float(barrier) if method == "erbs" else None,
        "bandwidth": float(bandwidth) if method == "erbs" else None,
        "n_components": int(n_components) if method == "erbs" else None,
        "coverage": ramachandran_coverage(phi, psi, BIN_DEG) if len(phi) else 0.0,
        "dissociated": dissociated, "stopped": bool(summary.stopped), "stop_reason": summary.stop_reason,
        "steps_done": int(summary.steps_before_stop), "frames": int(len(phi)), "wall_s": wall,
        "ms_per_step": summary.ms_per_step,
        # how much the ERBS bias acts: its mean over the frames and the fraction of frames where it
        # exceeds k_B T (0 without kernels nearby: OPES-explore's V vanishes where P/Z << ε)
        "bias_mean_ev": float(bias.mean()) if len(bias) else 0.0,
        "bias_active_fraction": float(np.mean(bias > units.kB * temperature)) if len(bias) else 0.0,
        # kinetic temperature of the frames: a biased run heats up where the thermostat removes the
        # bias work slower than it is done (weak friction)
        "temperature_mean_k": float(np.mean(kin_t)) if len(kin_t) else None,
        "coverage_vs_time": coverage_curve(phi, psi, times) if len(phi) else [],
        "phi": phi, "psi": psi,
    }
    if keep_positions:
        out["positions"] = pos
        out["numbers"] = atoms.numbers.copy()
    return out


def public(result: dict) -> dict:
    """The JSON-serialisable metrics of a run (no per-frame arrays)."""
    return {k: v for k, v in result.items() if k not in ("phi", "psi", "positions", "numbers", "coverage_vs_time")}


class AlanineCoverage(zntrack.Node):
    """One alanine-dipeptide run of the coverage scan (see the module docstring).

    Outputs: ``metrics`` (coverage, dissociated, timings), ``dihedrals.csv`` (time, Φ, Ψ per frame),
    ``coverage.csv`` (coverage against time, every ps) and the frames (positions only; label them
    with :class:`AmberLabel` for training).
    """

    method: str = zntrack.params("erbs")
    temperature: float = zntrack.params(300.0)
    steps: int = zntrack.params(160_000)
    timestep: float = zntrack.params(0.5)
    friction: float = zntrack.params(0.01)
    sampling_rate: int = zntrack.params(20)
    interval: int = zntrack.params(10_000)
    barrier: float = zntrack.params(20.0)
    bandwidth: float = zntrack.params(0.05)
    n_components: int = zntrack.params(4)
    convention: str = zntrack.params("code")
    seed: int = zntrack.params(0)

    metrics: dict = zntrack.metrics()
    coverage_path: Path = zntrack.plots_path(zntrack.nwd / "coverage.csv")
    dihedrals_path: Path = zntrack.outs_path(zntrack.nwd / "dihedrals.csv")
    frames_path: Path = zntrack.outs_path(zntrack.nwd / "frames.h5")

    def run(self) -> None:
        from ase import Atoms

        from lotf.nodes.frames import write_h5md

        res = run_alanine(self.method, self.temperature, self.steps, self.timestep, self.friction, self.sampling_rate,
                          self.interval, self.barrier, self.bandwidth, self.n_components, self.convention, self.seed)
        self.metrics = public(res)
        Path(self.coverage_path).parent.mkdir(parents=True, exist_ok=True)
        np.savetxt(self.coverage_path, np.array(res["coverage_vs_time"]).reshape(-1, 2), delimiter=",",
                   header="time_ps,coverage", comments="")
        t = (np.arange(len(res["phi"])) + 1) * self.sampling_rate * self.timestep / 1000.0
        np.savetxt(self.dihedrals_path, np.column_stack([t, res["phi"], res["psi"]]).reshape(-1, 3), delimiter=",",
                   header="time_ps,phi,psi", comments="")
        write_h5md(self.frames_path, [Atoms(res["numbers"], positions=p) for p in res["positions"]])

    @property
    def frames(self):
        from lotf.nodes.frames import read_h5md

        return read_h5md(self, self.frames_path)


def summarise(runs: list[dict]) -> dict:
    """Best ERBS coverage (dissociated runs left out), the baselines and the dissociated runs."""
    md = {r["temperature"]: r["coverage"] for r in runs if r["method"] == "md"}
    erbs = [r for r in runs if r["method"] == "erbs"]
    intact = [r for r in erbs if not r["dissociated"]]
    best = max(intact, key=lambda r: r["coverage"], default=None)
    return {
        "coverage_md": {f"{t:g}": c for t, c in sorted(md.items())},
        "coverage_erbs_best": best["coverage"] if best else None,
        "erbs_best_params": ({k: best[k] for k in ("barrier", "bandwidth", "n_components", "convention")}
                             if best else None),
        "n_erbs": len(erbs), "n_dissociated": len(erbs) - len(intact),
        "dissociated": [{k: r[k] for k in ("barrier", "bandwidth", "n_components", "steps_done")}
                        for r in erbs if r["dissociated"]],
    }


def plot_coverage(runs: list[dict], curves: dict[str, list], path: Path) -> None:
    """Fig. 2: a-c) coverage against ΔE, σ and k (each ERBS run a point, dissociated as crosses,
    MD baselines as lines); d) coverage against time of the MD runs and the best ERBS run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(16, 3.6))
    erbs = [r for r in runs if r["method"] == "erbs"]
    md = [r for r in runs if r["method"] == "md"]
    for ax, key, label in zip(axes[:3], ("barrier", "bandwidth", "n_components"), ("ΔE", "σ", "k")):
        for r in erbs:
            ax.scatter(r[key], r["coverage"], marker="x" if r["dissociated"] else "o",
                       color="tab:red" if r["dissociated"] else "tab:blue", alpha=0.7)
        for r in md:
            ax.axhline(r["coverage"], ls="--", color="grey" if r["temperature"] < 500 else "black",
                       label=f"MD {r['temperature']:g} K")
        ax.set_xlabel(label)
        ax.set_ylabel("coverage")
    axes[0].legend(fontsize=7)
    for name, curve in curves.items():
        if curve:
            c = np.asarray(curve)
            axes[3].plot(c[:, 0], c[:, 1], label=name)
    axes[3].set_xlabel("time / ps")
    axes[3].set_ylabel("coverage")
    axes[3].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


class CoverageSummary(zntrack.Node):
    """Collects the runs of the scan: best coverage and parameters, baselines, dissociated runs, Fig. 2."""

    runs: list = zntrack.deps()

    metrics: dict = zntrack.metrics()
    table_path: Path = zntrack.outs_path(zntrack.nwd / "runs.json")
    figure: Path = zntrack.plots_path(zntrack.nwd / "coverage.png")

    def run(self) -> None:
        results, curves = [], {}
        for node in self.runs:
            m = dict(node.metrics)
            results.append(m)
            curve = np.loadtxt(node.coverage_path, delimiter=",", skiprows=1, ndmin=2)
            if m["method"] == "md":
                curves[f"MD {m['temperature']:g} K"] = curve.tolist()
        summary = summarise(results)
        best = summary["erbs_best_params"]
        if best:
            for node, m in zip(self.runs, results):
                if m["method"] == "erbs" and not m["dissociated"] and m["coverage"] == summary["coverage_erbs_best"]:
                    curves["ERBS best"] = np.loadtxt(node.coverage_path, delimiter=",", skiprows=1, ndmin=2).tolist()
                    break
        self.metrics = summary
        Path(self.table_path).parent.mkdir(parents=True, exist_ok=True)
        Path(self.table_path).write_text(json.dumps(results, indent=1))
        plot_coverage(results, curves, Path(self.figure))


# --------------------------------------------------------------------------- Fig. 3: cross-validation


def split_indices(n_frames: int, n_train: int, n_val: int, seed: int = 0, tail: float = 0.2):
    """Random training indices from the first (1 - tail) of a trajectory and validation indices
    from its last ``tail`` (seed 2: 200 validation samples from the last 20 %); fewer when the
    trajectory is short (a dissociated run)."""
    rng = np.random.default_rng(seed)
    cut = int(round(n_frames * (1.0 - tail)))
    train = np.sort(rng.choice(cut, size=min(n_train, cut), replace=False)) if cut > 0 else np.zeros(0, int)
    val = np.sort(cut + rng.choice(n_frames - cut, size=min(n_val, n_frames - cut), replace=False))
    return train, val


def amber_label(frames) -> list:
    """Frames with Amber99SB energy and forces (the JAX port, identical to OpenMM to 1e-6) attached."""
    import jax
    import jax.numpy as jnp
    from ase.calculators.singlepoint import SinglePointCalculator

    from lotf.reference import amber

    system = amber.AmberSystem()
    fn = jax.jit(jax.value_and_grad(system.energy_fn()))
    out = []
    for atoms in frames:
        amber.check_atoms(atoms, "frame to label")
        e, g = fn(jnp.asarray(atoms.positions))
        a = atoms.copy()
        a.pbc = False
        a.calc = SinglePointCalculator(a, energy=float(e), forces=-np.asarray(g))
        out.append(a)
    return out


class AlanineDataset(zntrack.Node):
    """Training and validation frames of one coverage run, labelled with Amber99SB (seed 2 §3.1:
    1800 random training samples, 200 validation samples from the last 20 %)."""

    source: AlanineCoverage = zntrack.deps()
    n_train: int = zntrack.params(1800)
    n_val: int = zntrack.params(200)
    seed: int = zntrack.params(0)

    metrics: dict = zntrack.metrics()
    train_path: Path = zntrack.outs_path(zntrack.nwd / "train.h5")
    val_path: Path = zntrack.outs_path(zntrack.nwd / "validation.h5")

    def run(self) -> None:
        from lotf.nodes.frames import write_h5md

        frames = self.source.frames if hasattr(self.source, "frames") else self.source
        train, val = split_indices(len(frames), self.n_train, self.n_val, self.seed)
        write_h5md(self.train_path, amber_label([frames[i] for i in train]))
        write_h5md(self.val_path, amber_label([frames[i] for i in val]))
        self.metrics = {"n_frames": len(frames), "n_train": int(len(train)), "n_val": int(len(val))}

    @property
    def frames(self):
        from lotf.nodes.frames import read_h5md

        return read_h5md(self, self.train_path)

    @property
    def validation_frames(self):
        from lotf.nodes.frames import read_h5md

        return read_h5md(self, self.val_path)


def force_mae(calc, frames) -> float:
    """Mean absolute force error (eV/Å) over all components of all frames (seed 2 eq. 20)."""
    errors = []
    for atoms in frames:
        ref = atoms.get_forces()
        a = atoms.copy()
        a.calc = calc
        errors.append(np.abs(a.get_forces() - ref).ravel())
    return float(np.mean(np.concatenate(errors))) if errors else float("nan")


def plot_cross_validation(matrix: dict, path: Path) -> None:
    """Grouped bars (Fig. 3): one group per training set, one bar per validation set."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(matrix)
    sets = list(next(iter(matrix.values()))) if matrix else []
    width = 0.8 / max(len(sets), 1)
    fig, ax = plt.subplots(figsize=(7, 3.6))
    for k, name in enumerate(sets):
        ax.bar(np.arange(len(models)) + (k - (len(sets) - 1) / 2) * width,
               [1000 * matrix[m][name] for m in models], width, label=name)
    ax.set_xticks(np.arange(len(models)), models)
    ax.set_xlabel("training data")
    ax.set_ylabel("force MAE / meV Å⁻¹")
    ax.set_yscale("log")
    ax.legend(title="validation", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


class CrossValidation(zntrack.Node):
    """Every model on every validation set (seed 2 Fig. 3): force MAE matrix and grouped bar plot.

    ``models[i]`` was trained on ``datasets[i]``; ``labels[i]`` names both (e.g. "MD 300K").
    """

    models: list = zntrack.deps()
    datasets: list = zntrack.deps()
    labels: list = zntrack.params()

    metrics: dict = zntrack.metrics()
    figure: Path = zntrack.plots_path(zntrack.nwd / "cross_validation.png")

    def run(self) -> None:
        if not (len(self.models) == len(self.datasets) == len(self.labels)):
            raise ValueError(f"CrossValidation: {len(self.models)} models, {len(self.datasets)} datasets and "
                             f"{len(self.labels)} labels must match")
        val = {name: list(d.validation_frames) for name, d in zip(self.labels, self.datasets)}
        matrix = {}
        for name, model in zip(self.labels, self.models):
            calc = model.get_calculator()
            matrix[name] = {v: force_mae(calc, frames) for v, frames in val.items()}
        self.metrics = {"force_mae": matrix}
        Path(self.figure).parent.mkdir(parents=True, exist_ok=True)
        plot_cross_validation(matrix, Path(self.figure))
