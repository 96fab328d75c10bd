"""The ``lotf`` command line: one-line errors naming the file, exit codes, help texts.

Most tests run the installed ``lotf`` entry point in a subprocess, as a user would.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import ase.io
import numpy as np
import pytest
import yaml
from ase.build import molecule
from typer.testing import CliRunner

from lotf import cli

ROOT = Path(__file__).resolve().parents[1]
XTB = ROOT / "data" / "cp2k" / "test-xtb.yaml"
LOTF = str(Path(sys.executable).parent / "lotf")


def lotf(*args, cwd: Path, store: Path | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env.pop("LOTF_DEBUG", None)
    if store is not None:
        env["LOTF_CP2K_STORE"] = str(store)
    return subprocess.run([LOTF, *map(str, args)], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def one_error_line(proc: subprocess.CompletedProcess) -> str:
    """The stderr of a failed command: exactly one line, starting with 'error: '."""
    assert proc.returncode != 0
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: ")
    return lines[0]


MALFORMED = {
    "truncated.xyz": ("3\nwater\nO 0 0 0\n", "Frame has 1 atoms, expected 3"),
    "not-numbers.xyz": ("2\nbad\nH 0 0 0\nH x y z\n", "could not convert string to float"),
    "prose.xyz": ("hello world\n", "Expected xyz header"),
    "not-hdf5.h5": ("x", "file signature not found"),
    "not-ulm.traj": ("abc", "not an ULM formatted file"),
}


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_label_of_a_malformed_file_is_one_line_naming_it(tmp_path, name):
    content, problem = MALFORMED[name]
    (tmp_path / name).write_text(content)
    line = one_error_line(lotf("label", XTB, name, "out.h5", cwd=tmp_path, store=tmp_path / "store"))
    assert line.startswith(f"error: {name}: cannot read structures: ") and problem in line
    assert not (tmp_path / "out.h5").exists()


def test_every_command_names_the_bad_file(tmp_path):
    water = molecule("H2O")
    ase.io.write(tmp_path / "water.xyz", water)  # no labels
    (tmp_path / "truncated.xyz").write_text(MALFORMED["truncated.xyz"][0])
    (tmp_path / "broken.yaml").write_text("model: {hidden: [16\n")
    (tmp_path / "not-a-model").mkdir()

    line = one_error_line(lotf("train", "broken.yaml", "--train", "water.xyz", "--val", "water.xyz", "--out", "m",
                               cwd=tmp_path))
    assert line.startswith("error: broken.yaml: invalid YAML: ") and "line 2" in line
    line = one_error_line(lotf("train", "smoke", "--train", "truncated.xyz", "--val", "water.xyz", "--out", "m",
                               cwd=tmp_path))
    assert line.startswith("error: truncated.xyz: cannot read structures: ")
    line = one_error_line(lotf("train", "smoke", "--train", "water.xyz", "--val", "water.xyz", "--out", "m",
                               cwd=tmp_path))
    assert line.startswith("error: water.xyz: train frame 0: ") and "no energy" in line
    line = one_error_line(lotf("predict", "not-a-model", "water.xyz", "out.xyz", cwd=tmp_path))
    assert line.startswith("error: not-a-model: ")
    line = one_error_line(lotf("predict", "not-a-model", "truncated.xyz", "out.xyz", cwd=tmp_path))
    assert line.startswith("error: not-a-model: ")  # the model is loaded first
    line = one_error_line(lotf("label", "broken.yaml", "water.xyz", "out.h5", cwd=tmp_path, store=tmp_path / "s"))
    assert line.startswith("error: broken.yaml: invalid YAML: ") and "line 2" in line
    line = one_error_line(lotf("label", XTB, "missing.xyz", "out.h5", cwd=tmp_path, store=tmp_path / "s"))
    assert "missing.xyz" in line and "does not exist" in line


def test_label_a_molecule_with_xtb_and_fail_when_every_structure_fails(tmp_path):
    ase.io.write(tmp_path / "molecules.xyz", [molecule("H2O"), molecule("NH3")])  # pbc False
    store = tmp_path / "store"
    # real CP2K with the xTB settings written for periodic boxes: molecules in vacuum are labelled
    ok = lotf("label", XTB, "molecules.xyz", "labelled.xyz", cwd=tmp_path, store=store)
    assert ok.returncode == 0, ok.stderr
    assert ok.stderr == ""  # no progress bar or warning when all went well and stderr is no terminal
    labelled = ase.io.read(tmp_path / "labelled.xyz", index=":")
    assert len(labelled) == 2 and all(np.abs(a.get_forces()).max() > 1e-2 for a in labelled)

    # the same molecules with settings whose SCF cannot converge: nothing labelled, non-zero exit
    tree = yaml.safe_load(XTB.read_text())
    scf = tree["force_eval"]["dft"]["scf"]
    del scf["ot"], scf["outer_scf"]
    scf.update(max_scf=1, eps_scf=1e-12, scf_guess="atomic")
    (tmp_path / "no-scf.yaml").write_text(yaml.safe_dump(tree))
    failed = lotf("label", "no-scf.yaml", "molecules.xyz", "none.xyz", cwd=tmp_path, store=store)
    line = one_error_line(failed)
    assert line == "error: molecules.xyz: all 2 structures failed (structure 0: SCF not converged)"
    assert "n_failed=2" in failed.stdout  # the report still goes to stdout


def test_unexpected_errors_are_one_line_too(monkeypatch, capsys, tmp_path):
    import lotf.reference.labelling as labelling

    def broken(*args, **kwargs):
        raise ZeroDivisionError("something deep down\nwith a second line")

    monkeypatch.setattr(labelling, "label_file", broken)
    monkeypatch.delenv("LOTF_DEBUG", raising=False)
    monkeypatch.setattr(sys, "argv", ["lotf", "label", "settings.yaml", "in.xyz", "out.h5"])
    with pytest.raises(SystemExit) as exit_:
        cli.main()
    assert exit_.value.code == 1
    assert capsys.readouterr().err == "error: ZeroDivisionError: something deep down\n"
    monkeypatch.setenv("LOTF_DEBUG", "1")  # the traceback on request
    with pytest.raises(ZeroDivisionError):
        cli.main()


def test_demo_help_describes_the_oracle_and_smoke_demos():
    result = CliRunner().invoke(cli.app, ["demo", "--help"])
    assert result.exit_code == 0
    text = " ".join(result.output.split())
    assert "Run a campaign end to end in a fresh git + DVC project" in text
    assert "oracle profile" in text and "SPC/Fw" in text and "--profile smoke" in text
    assert "predict" not in text.lower()  # the old train-and-predict demo is gone
    overview = " ".join(CliRunner().invoke(cli.app, ["--help"]).output.split())
    assert "Run a campaign end to end" in overview


def test_label_dry_run_prints_the_slurm_job_script_and_submits_nothing(tmp_path):
    """No SLURM needed: dask-jobqueue renders the script; sbatch is never called."""
    (tmp_path / "cluster.yaml").write_text(yaml.safe_dump({
        "kind": "slurm", "queue": "cpu", "account": "chem42", "cores": 32, "memory": "64GB",
        "walltime": "04:00:00", "jobs": 8, "job_script_prologue": ["module load cp2k/2024.1"]}))
    env_path = f"{tmp_path / 'bin'}:{os.environ['PATH']}"
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "sbatch").write_text("#!/bin/sh\ntouch submitted\nexit 1\n")
    (tmp_path / "bin" / "sbatch").chmod(0o755)
    env = dict(os.environ, PATH=env_path)
    proc = subprocess.run([LOTF, "label", "--cluster-config", "cluster.yaml", "--dry-run"], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    script = proc.stdout
    assert script.startswith("#!/usr/bin/env bash")
    for line in ("#SBATCH -p cpu", "#SBATCH -A chem42", "#SBATCH --cpus-per-task=32", "#SBATCH -t 04:00:00",
                 "module load cp2k/2024.1"):
        assert line in script.splitlines(), script
    worker = script.strip().splitlines()[-1]
    assert "distributed.cli.dask_worker" in worker and worker.endswith("--nthreads 1")  # one chunk at a time
    assert not (tmp_path / "submitted").exists() and proc.stderr == ""


@pytest.mark.parametrize("args, config, match", [
    (["--dry-run"], None, "--dry-run needs --cluster-config"),
    (["--cluster-config", "c.yaml", "--dry-run"], {"kind": "local", "n_workers": 2}, "kind 'local'"),
    (["--cluster-config", "c.yaml", "--dry-run"], {"kind": "pbs", "cores": 8}, "needs 'memory'"),
    (["--cluster-config", "c.yaml", "--dry-run"], "just text", "c.yaml: cluster config: needs a mapping"),
    (["--cluster-config", "c.yaml"], {"kind": "slurm", "cores": 1, "memory": "1GB"}, "needs SETTINGS IN OUT"),
])
def test_label_cluster_config_errors_are_one_line(tmp_path, args, config, match):
    if config is not None:
        (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    assert match in one_error_line(lotf("label", *args, cwd=tmp_path))


def test_label_dry_run_of_a_pbs_config(tmp_path):
    (tmp_path / "c.yaml").write_text(yaml.safe_dump({"kind": "pbs", "queue": "workq", "cores": 16,
                                                    "memory": "32GB", "walltime": "02:00:00"}))
    proc = lotf("label", "--cluster-config", "c.yaml", "--dry-run", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert "#PBS -q workq" in lines and "#PBS -l walltime=02:00:00" in lines
    assert any(line.startswith("#PBS -l select=1:ncpus=16:mem=") for line in lines), proc.stdout
    assert proc.stderr == ""


def test_bench_erbs_passes_friction_and_convention_and_rejects_bad_values(tmp_path):
    """`lotf bench erbs --friction/--convention` reach the benchmark (a 0.05 ps run per method);
    a bad value is one line."""
    import json

    runner = CliRunner()
    out = runner.invoke(cli.app, ["bench", "erbs", "--duration-ps", "0.05", "--max-erbs-runs", "0",
                                  "--friction", "0.001", "--convention", "reference"])
    assert out.exit_code == 0, out.output
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["friction_per_fs"] == 0.001 and result["convention"] == "reference"
    assert result["steps"] == 100 and result["n_erbs_runs"] == 2  # ERBS A and B always run
    # the step cost is the ERBS runs' wall time over their steps (not a mean of per-run ratios, which
    # a run that dissociated after 20 steps of compile time dominates)
    erbs = [r for r in result["runs"] if r["method"] == "erbs" and not r["dissociated"]]
    assert erbs and result["ms_per_step_erbs"] == pytest.approx(
        1e3 * sum(r["wall_s"] for r in erbs) / sum(r["steps_done"] for r in erbs))
    for args, message in ((["--friction", "0"], "friction must be > 0"),
                          (["--convention", "nonsense"], "convention must be one of")):
        bad = lotf("bench", "erbs", "--duration-ps", "0.05", *args, cwd=tmp_path)
        assert bad.returncode == 1 and message in one_error_line(bad), bad.stderr


def test_demo_refuses_zero_jobs_in_one_line_before_making_the_project(tmp_path):
    bad = lotf("demo", tmp_path / "demo", "--jobs", "0", cwd=tmp_path)
    assert "--jobs must be >= 1" in one_error_line(bad) and not (tmp_path / "demo").exists()


def test_demo_comparison_prints_every_model_and_the_reference_noise_floor(tmp_path, capsys):
    """The demo's final table: each model's D ratio, RDF deviation, T and stable time beside the
    reference, and the deviation the reference has against itself (absent in older projects)."""
    from lotf.demo import print_comparison

    path = tmp_path / "nodes" / "water" / "production" / "Comparison" / "metrics.json"
    path.parent.mkdir(parents=True)
    models = {"md-AL3": {"D_A2_per_ns": 200.0, "D_ratio": 1.1, "rdf_max_abs_dev": 0.154, "T_mean_K": 300.4,
                         "stable_ps": 50.0, "stop_reason": "none"}}
    path.write_text(json.dumps({"reference": {"D_A2_per_ns": 182.7, "T_mean_K": 302.7, "rdf_noise_floor": 0.0508},
                                "models": models}))
    print_comparison(path)
    out = capsys.readouterr().out
    assert "water: MD of every model" in out and "D_ref 183" in out and "md-AL3" in out and "0.154" in out
    assert "two halves against each other: 0.0508" in out
    path.write_text(json.dumps({"reference": {"D_A2_per_ns": 182.7, "T_mean_K": 302.7}, "models": models}))
    print_comparison(path)
    assert "two halves" not in capsys.readouterr().out


def test_bench_warmstart_reports_the_epochs_of_both_runs_and_the_new_structures():
    from lotf.bench import warmstart_benchmark

    out = warmstart_benchmark(epochs=10, n_train=20, seeds=(0,), new_fraction=0.5)
    (run,) = out["runs"]
    assert run["n_new"] == 4 and out["warm_start_new_fraction"] == 0.5
    assert 1 <= out["epochs_to_match_scratch"] == run["epochs_to_match_scratch"] <= 10
    # every warm start found the four added structures by their fingerprints
    assert run["warm"] and all(w["n_train_new"] == 4 for w in run["warm"])
    warm = out["epochs_to_match_warm"]
    assert out["ratio"] == (warm / out["epochs_to_match_scratch"] if warm is not None else None)
    if warm is not None:  # to the epoch: the budget below it was run and fell short
        ran = {w["epochs"]: w["val_loss"] <= run["target_val_loss"] for w in run["warm"]}
        assert ran[warm] and (warm == 1 or ran[warm - 1] is False)
        assert min(b for b, ok in ran.items() if ok) == warm


@pytest.mark.parametrize("args, message", [(["--new-fraction", "1.5"], "new fraction must be in [0, 1)"),
                                           (["--seeds", "0,x"], "--seeds: expected integers")])
def test_bench_warmstart_bad_options_are_one_line(tmp_path, args, message):
    bad = lotf("bench", "warmstart", *args, cwd=tmp_path)
    assert bad.returncode == 1 and message in one_error_line(bad), bad.stderr
