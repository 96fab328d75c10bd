"""lotf.repro: the stage graph of dvc.yaml, and independent stages run side by side by real DVC."""

import subprocess
import sys

import pytest
import yaml

from lotf.repro import descendants, repro, stage_graph


def test_stage_graph_links_outputs_files_in_output_directories_and_metrics(tmp_path):
    stages = {
        "a": {"cmd": "x", "outs": ["nodes/a/frames.h5", {"nodes/a/model": {"cache": True}}]},
        "b": {"cmd": "x", "deps": ["nodes/a/model/params.msgpack"], "metrics": [{"nodes/b/summary.json": {}}]},
        "c": {"cmd": "x", "deps": ["nodes/a/frames.h5", "nodes/b/summary.json", "data/input.csv"], "outs": ["c.txt"]},
        "d": {"cmd": "x", "deps": ["nodes/b"]},  # a directory holding b's output
        "e": {"cmd": "x", "deps": ["data/input.csv"]},
    }
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump({"stages": stages}))
    graph = stage_graph(tmp_path / "dvc.yaml")
    assert graph == {"a": set(), "b": {"a"}, "c": {"a", "b"}, "d": {"b"}, "e": set()}
    assert descendants(graph) == {"a": {"b", "c", "d"}, "b": {"c", "d"}, "c": set(), "d": set(), "e": set()}


STAMP = ("import sys, time; s = time.time(); time.sleep(float(sys.argv[2])); "
         "open(sys.argv[1], 'w').write(f'{s} {time.time()}')")


def _project(path, stages):
    path.mkdir()
    for args in (["git", "init", "-q"], ["dvc", "init", "-q"]):
        subprocess.run(args, cwd=path, check=True)
    (path / "stamp.py").write_text(STAMP)
    (path / "dvc.yaml").write_text(yaml.safe_dump({"stages": stages}))
    return path


def _stage(out, seconds=0.0, deps=()):
    return {"cmd": f"{sys.executable} stamp.py {out} {seconds}", "deps": ["stamp.py", *deps], "outs": [out]}


def test_independent_stages_run_side_by_side_and_a_second_run_runs_nothing(tmp_path, capsys):
    project = _project(tmp_path / "p", {
        "first": _stage("first.txt"),
        "left": _stage("left.txt", 3.0, ["first.txt"]),
        "right": _stage("right.txt", 3.0, ["first.txt"]),
        "last": _stage("last.txt", 0.0, ["left.txt", "right.txt"]),
    })
    repro(project, jobs=2)
    times = {n: [float(x) for x in (project / f"{n}.txt").read_text().split()]
             for n in ("first", "left", "right", "last")}
    assert times["first"][1] <= min(times["left"][0], times["right"][0])  # upstream first
    assert max(times["left"][0], times["right"][0]) < min(times["left"][1], times["right"][1])  # they overlapped
    assert times["last"][0] >= max(times["left"][1], times["right"][1])
    status = subprocess.run(["dvc", "status"], cwd=project, capture_output=True, text=True)
    assert "up to date" in status.stdout.lower()  # every stage's lock entry was written
    assert "[4/4] last" in capsys.readouterr().out
    repro(project, jobs=2)
    assert "0 stages to run" in capsys.readouterr().out


def test_a_failed_stage_stops_its_downstream_and_is_named(tmp_path):
    project = _project(tmp_path / "f", {
        "first": _stage("first.txt"),
        "broken": {"cmd": f"{sys.executable} -c \"raise SystemExit('no labels')\"", "deps": ["first.txt"],
                   "outs": ["broken.txt"]},
        "after": _stage("after.txt", 0.0, ["broken.txt"]),
    })
    with pytest.raises(RuntimeError, match="stage broken failed"):
        repro(project, jobs=2)
    assert (project / "first.txt").exists() and not (project / "after.txt").exists()
    assert "no labels" in (project / ".lotf" / "repro-logs" / "broken.log").read_text()
    with pytest.raises(ValueError, match="jobs"):
        repro(project, jobs=0)
