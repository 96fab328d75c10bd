"""The ``lotf`` command. Errors are one line on stderr and a non-zero exit.

Every command names the file a problem belongs to (``error: in.xyz: cannot read structures: ...``);
no traceback is shown unless ``LOTF_DEBUG`` is set.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Optional

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Learning-on-the-fly of machine-learned interatomic potentials.")
bench_app = typer.Typer(no_args_is_help=True, pretty_exceptions_enable=False,
                        help="Benchmarks; each prints one JSON object.")
app.add_typer(bench_app, name="bench")


class CommandError(Exception):
    """A failed command; the message is the complete line shown to the user."""


def _one_line(exc: BaseException) -> str:
    """The first line of an exception's message (KeyError: the missing key)."""
    problem, mark = getattr(exc, "problem", None), getattr(exc, "problem_mark", None)
    if isinstance(exc, KeyError) and len(exc.args) == 1:
        text = f"missing key {exc.args[0]!r}"
    elif problem and mark is not None:  # a YAML syntax error: what and where, not the parser's context
        text = f"invalid YAML: {problem} (line {mark.line + 1}, column {mark.column + 1})"
    else:
        text = str(exc).strip()
    first = text.splitlines()[0].strip() if text else ""
    return first or type(exc).__name__


@contextmanager
def _naming(path: str | Path, what: str = ""):
    """Errors raised inside name ``path`` (unless their message already does)."""
    try:
        yield
    except CommandError:
        raise
    except Exception as exc:  # noqa: BLE001 - turned into one line naming the file
        message = _one_line(exc)
        if str(path) not in message:
            message = f"{path}: {what}{message}"
        raise CommandError(message) from exc


def read_frames(path: str | Path) -> list:
    """Any ASE-readable file, or H5MD (.h5/.h5md) through znh5md."""
    from lotf.reference.labelling import read_frames as _read

    return _read(path)


def write_frames(path: str | Path, frames: list) -> None:
    """H5MD for .h5/.h5md, else by suffix through ase.io; written atomically."""
    from lotf.reference.labelling import write_frames as _write

    _write(path, frames)


@app.command()
def train(
    config: Path = typer.Argument(..., help="preset YAML with 'model:' and 'training:' sections, or a name in models/"),
    train_file: Path = typer.Option(..., "--train", help="labelled training structures (any ASE-readable file)"),
    val_file: Path = typer.Option(..., "--val", help="labelled validation structures"),
    out: Path = typer.Option(..., "--out", help="model directory to write"),
    init_from: Optional[Path] = typer.Option(None, "--init-from", help="warm start from this model directory"),
    epochs: Optional[int] = typer.Option(None, help="override training.epochs"),
):
    """Train a GMNN (ensemble) and write a model directory."""
    from lotf.training.config import load_preset
    from lotf.training.trainer import train as run_training

    overrides = {"training": {"epochs": epochs}} if epochs else None
    with _naming(config):
        model_cfg, train_cfg = load_preset(str(config), overrides)
    train_frames, val_frames = read_frames(train_file), read_frames(val_file)
    try:
        result = run_training(train_frames, val_frames, model_cfg, train_cfg, out, init_from=init_from)
    except Exception as exc:  # noqa: BLE001 - data errors name the set ("train frame 3: ..."): name the file
        message = _one_line(exc)
        for name, path in (("train", train_file), ("validation", val_file)):
            if message.startswith(f"{name} ") or message.startswith(f"{name}:"):
                raise CommandError(f"{path}: {message}") from exc
        raise
    typer.echo(json.dumps({k: v for k, v in result.metrics.items() if k.startswith("val_")}, indent=1))


@app.command()
def predict(model_dir: Path, inp: Path, out: Path):
    """Predict energies, forces (and stress, uncertainties) for every structure of INP into OUT."""
    from ase.calculators.singlepoint import SinglePointCalculator

    import lotf

    with _naming(model_dir, "cannot load the model: "):
        calc = lotf.load_calculator(model_dir)
    frames = read_frames(inp)
    results = []
    for i, atoms in enumerate(frames):
        atoms = atoms.copy()
        with _naming(inp, f"structure {i}: "):
            calc.calculate(atoms, properties=["energy", "forces"])
        res = dict(calc.results)
        keep = {k: res[k] for k in ("energy", "forces", "stress") if k in res}
        atoms.calc = SinglePointCalculator(atoms, **keep)
        for key in ("energy_uncertainty", "energy_ensemble"):
            if key in res:
                atoms.info[key] = res[key]
        if "forces_uncertainty" in res:
            atoms.arrays["forces_uncertainty"] = res["forces_uncertainty"]
        results.append(atoms)
    write_frames(out, results)
    typer.echo(f"wrote {len(results)} structures to {out}")


def _cluster_config(path: Path) -> dict:
    """The Dask cluster config of ``--cluster-config`` (YAML or JSON mapping)."""
    import yaml

    with _naming(path, "cluster config: "):
        config = yaml.safe_load(Path(path).read_text())
        if not isinstance(config, dict):
            raise ValueError(f"needs a mapping (kind: local, slurm, pbs or address), got {config!r}")
    return config


def _print_job_script(path: Path) -> None:
    """``lotf label --cluster-config FILE --dry-run``: the job script, nothing submitted."""
    from lotf.reference.labelling import make_cluster

    config = _cluster_config(path)
    kind = str(config.get("kind", "local")).lower()
    if kind not in ("slurm", "pbs"):
        raise CommandError(f"{path}: --dry-run shows the job script of a slurm or pbs cluster, "
                           f"this config is kind '{kind}'")
    with _naming(path, "cluster config: "):
        cluster, _ = make_cluster(config, scale=False)
    try:
        typer.echo(cluster.job_script().rstrip("\n"))
    finally:
        cluster.close()


@app.command()
def label(settings: Optional[Path] = typer.Argument(None, help="CP2K settings YAML"),
          inp: Optional[Path] = typer.Argument(None, help="structures to label"),
          out: Optional[Path] = typer.Argument(None, help="labelled structures (written)"),
          n_ranks: int = typer.Option(1, help="MPI ranks per CP2K run"),
          n_threads: int = typer.Option(1, help="OpenMP threads per rank"),
          cluster_config: Optional[Path] = typer.Option(
              None, "--cluster-config", help="YAML/JSON Dask cluster config, e.g. kind: slurm, queue, "
              "cores, memory, jobs, account, walltime, job_script_prologue (default: run here)"),
          dry_run: bool = typer.Option(False, "--dry-run", help="print the job script that "
                                       "--cluster-config would submit, and submit nothing")):
    """Label every structure of INP with CP2K single points (resumable) into OUT.

    Fails (non-zero exit) when no structure could be labelled; when some fail, one warning line.
    With --cluster-config the structures run on that Dask cluster (SLURM/PBS jobs through
    dask-jobqueue); --dry-run prints its job script instead.
    """
    from lotf.reference.labelling import label_file
    from lotf.reference.labelling import log as label_log

    if dry_run:
        if cluster_config is None:
            raise CommandError("--dry-run needs --cluster-config FILE (a slurm or pbs cluster)")
        _print_job_script(cluster_config)
        return
    if settings is None or inp is None or out is None:
        raise CommandError("label needs SETTINGS IN OUT (or --cluster-config FILE --dry-run)")
    cluster = _cluster_config(cluster_config) if cluster_config is not None else None
    level = label_log.level
    label_log.setLevel(logging.ERROR)  # the failure count is reported below, in one line
    try:
        report = label_file(settings, inp, out, n_ranks=n_ranks, n_threads=n_threads,
                            cluster=cluster, progress=sys.stderr.isatty())
    except ValueError as exc:
        message = _one_line(exc)
        if message.startswith("frame "):  # a structure of INP (mixed pbc, ...): name the file
            raise CommandError(f"{inp}: {message}") from exc
        raise
    finally:
        label_log.setLevel(level)
    typer.echo(str(report))
    if report.n_failed:
        first = report.failures[0]
        what = (f"all {report.n_total} structures failed" if report.n_ok == 0
                else f"{report.n_failed} of {report.n_total} structures failed")
        line = f"{inp}: {what} (structure {first['index']}: {first['reason']})"
        if report.n_ok == 0:
            raise CommandError(line)
        typer.echo(f"warning: {line}", err=True)


@bench_app.command("potential")
def bench_potential(quick: bool = typer.Option(False, help="fewer sizes and repeats")):
    """GMNN energy+forces call time vs system size, FLOP floor, compile time, memory, training rate."""
    from lotf.bench import potential_benchmark

    typer.echo(json.dumps(potential_benchmark(quick=quick)))


@bench_app.command("warmstart")
def bench_warmstart(epochs: int = typer.Option(100, help="epochs of the from-scratch runs"),
                    new_fraction: float = typer.Option(0.8, help="share of each warm epoch's draws given to the "
                                                      "new structures (warm_start_new_fraction; 0: uniform)"),
                    seeds: str = typer.Option("0,1,2", help="data (and training) seeds, comma-separated; "
                                                             "the epochs are summed over them")):
    """Continual learning: epochs a warm start and a fresh start need after 20 % new structures."""
    from lotf.bench import warmstart_benchmark

    try:
        seed_list = tuple(int(x) for x in seeds.split(","))
    except ValueError:
        raise ValueError(f"--seeds: expected integers separated by commas, got {seeds!r}") from None
    typer.echo(json.dumps(warmstart_benchmark(epochs=epochs, new_fraction=new_fraction, seeds=seed_list)))


@bench_app.command("validation")
def bench_validation(directory: Optional[Path] = typer.Option(None, help="where to build the project (default: a temp dir)"),
                     bmim: bool = typer.Option(False, "--bmim", help="also the BMIM-BF4 oracle campaign (density, "
                                                                     "stable ps; 80 min on 2 shared cores)")):
    """The water oracle campaign against its force-field ground truth (D, RDF, T, test errors)."""
    typer.echo(json.dumps(_load_benchmark("validation").validation_benchmark(str(directory) if directory else None,
                                                                              bmim=bmim)))


@app.command()
def build(campaigns: list[str] = typer.Argument(None, help="campaigns to build: names in campaigns/ or stages/, "
                                                          "or campaign files (default: every built-in campaign)"),
          config: Optional[list[Path]] = typer.Option(None, "--config", help="a campaign file (YAML); repeatable"),
          profile: str = typer.Option("paper", help="a profile of the campaigns: paper (the seeds' settings), "
                                                    "smoke (tiny, for CI/demo), oracle (force-field ground truth), "
                                                    "validation (water: the oracle with longer runs), "
                                                    "fig3 (alanine: seed 2 Fig. 3 only)"),
          out: Optional[Path] = typer.Option(None, "--out", help="build in this separate git + DVC project "
                                                                 "(stages/, models/, data/, campaigns/ are copied there)"),
          force: bool = typer.Option(False, "--force", help="replace a committed graph with a non-paper build")):
    """Write dvc.yaml, params.yaml and zntrack.json for campaign files and the campaigns in stages/.

    The committed graph is the paper profile of every campaign; any other build where dvc.yaml is
    committed is refused unless --force: use --out DIR to build it elsewhere.
    """
    from lotf.build import build as build_campaigns
    from lotf.build import build_into, check_target

    selected = [*(campaigns or []), *map(str, config or [])] or None
    if out is not None:
        names = build_into(out, selected, profile)
        typer.echo(f"built {', '.join(names)} ({profile}) in {out}")
        return
    check_target(".", selected, profile, force)
    names = build_campaigns(selected, profile)
    typer.echo(f"built {', '.join(names)} ({profile})")


@app.command()
def init(directory: Path = typer.Argument(..., help="the new project (created; must be empty)"),
         config: Path = typer.Option(..., "--config", help="the campaign file (YAML)"),
         profile: str = typer.Option("smoke", help="the profile to build")):
    """Create a git + DVC project around a campaign file and build it (then: cd DIR && dvc repro).

    Copies the campaign file into DIR/campaigns/, the templates (stages/), the model presets
    (models/) and every file the campaign file names (CP2K settings, topologies, tables).
    """
    from lotf.build import init as init_project

    path = init_project(directory, config, profile)
    typer.echo(f"created {directory} with {path.relative_to(Path(directory).resolve())} ({profile} built); "
               f"run: cd {directory} && dvc repro")


def _load_benchmark(name: str):
    """Benchmarks live in the repository's benchmarks/ folder (scripts that print JSON)."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    if not path.is_file():
        raise FileNotFoundError(f"benchmark script not found: {path}")
    spec = importlib.util.spec_from_file_location(f"lotf_benchmark_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@bench_app.command("analysis")
def bench_analysis():
    """RDF and MSD throughput and peak memory on a 10^5-frame, 300-atom H5MD trajectory."""
    typer.echo(json.dumps(_load_benchmark("analysis").analysis_benchmark()))


@bench_app.command("sampling")
def bench_sampling():
    """MD, UDD and ERBS step cost on the 300-atom BMIM-BF4 box with the seed-1 model."""
    typer.echo(json.dumps(_load_benchmark("sampling").sampling_benchmark()))


@bench_app.command("selection")
def bench_selection():
    """MaxDist selection time and memory on a 100,000-structure feature pool."""
    typer.echo(json.dumps(_load_benchmark("selection").selection_benchmark()))


@bench_app.command("d3")
def bench_d3():
    """GMNN alone vs fused GMNN+D3(7.94 Å) and GMNN+D3(20 Å) on the 300-atom BMIM-BF4 box."""
    typer.echo(json.dumps(_load_benchmark("d3").d3_benchmark()))


@bench_app.command("cp2k")
def bench_cp2k():
    """CP2K time per structure through the labelling pipeline vs the bare cp2k.psmp run."""
    typer.echo(json.dumps(_load_benchmark("cp2k").cp2k_benchmark()))


@bench_app.command("erbs")
def bench_erbs(duration_ps: float = typer.Option(80.0, help="ps per run (seed 2: 80); shorter runs scale the kernel interval"),
               budget_s: float = typer.Option(3600.0, help="stop adding scan points after this many seconds"),
               convention: str = typer.Option("code", help="code (erbs code: ΔE in k_B T, σ a variance), code_d, "
                                              "text, reference or reference_bessel (README \"ERBS benchmark\")"),
               max_erbs_runs: Optional[int] = typer.Option(None, help="at most this many ERBS runs (A and B always)"),
               friction: float = typer.Option(0.01, help="Langevin friction in 1/fs (seed 2 states none; "
                                              "the coverage depends on it)"),
               bmim_project: Optional[Path] = typer.Option(None, help="a finished BMIM-BF4 oracle project "
                                                           "(lotf bench validation --bmim): its exploration runs "
                                                           "give msd_ratio_erbs_vs_md and msd_ratio_udd_vs_md")):
    """Alanine dipeptide (Φ, Ψ) coverage of MD 300/1200 K and ERBS (seed 2 §3.1, Fig. 2)."""
    # a bad value (ValueError) becomes one "error: ..." line in main()
    out = _load_benchmark("erbs").erbs_benchmark(duration_ps, budget_s, convention, max_erbs_runs, friction=friction,
                                                 bmim_project=bmim_project)
    typer.echo(json.dumps(out))


DEMO_HELP = (
    "Run a campaign end to end in a fresh git + DVC project in DIRECTORY.\n\n"
    "Copies stages/, models/ and data/ there, builds the profile and runs its stages with 'dvc repro', two at a "
    "time (--jobs), then prints a table per campaign and the observables and writes reports with plots. A "
    "second run reuses DVC's cache. "
    "The default, the water campaign's oracle profile, labels with the SPC/Fw force field (OpenMM, plus one "
    "CP2K xTB stage) and ends with the final models' MD against the force field's own MD: D, O-O RDF and "
    "temperature. '--profile smoke' runs the smoke campaigns (real GROMACS, CP2K and JAX; tiny models whose "
    "numbers show that the pipeline runs, not physics)."
)


@app.command(help=DEMO_HELP, short_help="Run a campaign end to end in a git + DVC project (default: water oracle).")
def demo(directory: Path = typer.Argument(Path("lotf-demo"), help="working directory for the demo"),
         profile: str = typer.Option("oracle", help="oracle (water against its force-field truth) or smoke"),
         campaign: Optional[list[str]] = typer.Option(None, help="campaigns to run (default: water for oracle, "
                                                                 "all for smoke)"),
         jobs: int = typer.Option(2, help="stages run side by side (1: plain dvc repro)")):
    """See DEMO_HELP (lotf.demo.run_demo)."""
    from lotf.demo import run_demo

    if jobs < 1:  # before the project is made
        raise ValueError(f"--jobs must be >= 1, got {jobs}")
    run_demo(directory, campaign or None, profile, jobs)


_EXPECTED = (CommandError, ValueError, OSError, RuntimeError, KeyError)


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        typer.echo("error: interrupted", err=True)
        sys.exit(130)
    except Exception as exc:  # noqa: BLE001 - one line on stderr instead of a traceback
        if os.environ.get("LOTF_DEBUG"):
            raise
        message = _one_line(exc)
        if not isinstance(exc, _EXPECTED):
            message = f"{type(exc).__name__}: {message}"
        typer.echo(f"error: {message}", err=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
