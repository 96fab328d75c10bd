"""Issue 12, item 6: `lotf build` never silently replaces the committed paper graph."""

import subprocess
from pathlib import Path

import pytest

from tests.campaigns.test_build import REPO, fresh_project, lotf


def commit_graph(project: Path) -> bytes:
    """A committed stand-in for the paper graph (what matters is that git tracks dvc.yaml)."""
    for name in ("dvc.yaml", "params.yaml", "zntrack.json"):
        (project / name).write_text("stages: {}\n" if name == "dvc.yaml" else "{}\n")
    for args in (["config", "user.email", "ci@lotf"], ["config", "user.name", "ci"], ["add", "-A"],
                 ["commit", "-qm", "paper graph"]):
        subprocess.run(["git", *args], cwd=project, check=True, capture_output=True)
    return (project / "dvc.yaml").read_bytes()


def test_non_paper_build_over_a_committed_graph_is_refused_in_one_line(tmp_path):
    project = fresh_project(tmp_path / "p")
    before = commit_graph(project)
    for args in (("water", "--profile", "smoke"), ("water",), ("--profile", "smoke")):
        run = lotf("build", *args, cwd=project)
        assert run.returncode != 0, args
        assert "is committed (the paper graph)" in run.stderr and "--force" in run.stderr
        assert run.stderr.strip().count("\n") == 0 and "Traceback" not in run.stderr
        assert (project / "dvc.yaml").read_bytes() == before


def test_out_builds_elsewhere_and_force_replaces(tmp_path):
    project = fresh_project(tmp_path / "p")
    before = commit_graph(project)
    run = lotf("build", "water", "--profile", "smoke", "--out", str(tmp_path / "smoke"), cwd=project)
    assert run.returncode == 0, run.stderr
    assert (project / "dvc.yaml").read_bytes() == before
    built = (tmp_path / "smoke" / "dvc.yaml").read_text()
    assert "water_erbs_AL1_MDSampling:" in built and "bmim-bf4" not in built
    assert (tmp_path / "smoke" / ".dvc").is_dir() and (tmp_path / "smoke" / "models").is_dir()

    run = lotf("build", "water", "--profile", "smoke", "--force", cwd=project)
    assert run.returncode == 0, run.stderr
    assert "water_erbs_AL1_MDSampling:" in (project / "dvc.yaml").read_text()


def test_the_repository_root_is_guarded():
    """The real committed graph: a smoke build of the repository root is refused before any write."""
    from lotf.build import BuildRefused, check_target

    with pytest.raises(BuildRefused, match="use --out DIR"):
        check_target(REPO, ["water"], "smoke")
    check_target(REPO, None, "paper")  # the paper graph itself may be rebuilt
