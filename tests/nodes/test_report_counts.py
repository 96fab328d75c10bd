"""Issue 12, item 4: the report shows requested, screened, selected, labelled and failed points."""

import types

from ase.calculators.emt import EMT

from lotf.demo import emt_frames


def stub(name, **metrics):
    return types.SimpleNamespace(name=name, metrics=metrics)


def test_report_counts_every_selection_and_label_of_an_iteration(tmp_path, monkeypatch):
    from lotf.nodes.report import CampaignReport

    monkeypatch.chdir(tmp_path)
    models = [types.SimpleNamespace(name=f"m{k}", metrics={"n_train": n}, get_calculator=EMT)
              for k, n in enumerate((10, 12, 14, 14))]
    report = CampaignReport(
        iterations=["ML0", "ML11", "ML13", "ML16"], models=models,
        sampled_iterations=["ML13", "ML16", "ML16"],
        samplers=[stub("md", steps_before_stop=80), stub("md0", steps_before_stop=100),
                  stub("md1", steps_before_stop=40)],
        labelled_iterations=["ML11", "ML13", "ML13", "ML16"],
        labels=[stub("boxes", n_total=2, n_ok=2, n_failed=0), stub("scan", n_total=3, n_ok=2, n_failed=1),
                stub("npt", n_total=2, n_ok=2, n_failed=0), stub("new", n_total=0, n_ok=0, n_failed=0)],
        selected_iterations=["ML0", "ML13", "ML13", "ML16"],
        selections=[stub("ml0", n_pool=50, n_selected=2, n_requested=2),
                    stub("scan", n_pool=4, n_selected=3, n_requested=3, n_screened=1),
                    stub("maxdist", n_pool=1, n_selected=1, n_requested=2, n_screened=0),  # a short pool
                    stub("empty", n_pool=0, n_selected=0, n_requested=5)],  # MD stopped before its first frame
        test_data=emt_frames(2))
    report.run()
    table = report.table.set_index("iteration")
    assert table.loc["ML13", ["requested", "screened", "selected", "labelled", "failed"]].tolist() == [5, 1, 4, 4, 1]
    assert table.loc["ML16", ["requested", "selected", "labelled", "failed"]].tolist() == [5, 0, 0, 0]
    assert table.loc["ML11", ["requested", "selected", "labelled"]].tolist() == [2, 2, 2]  # no selection: all boxes
    assert table.loc["ML0", ["requested", "selected", "labelled"]].tolist() == [2, 2, 0]
    assert table.loc["ML16", "steps_before_stop"] == 40  # the earliest stop of its samplers
