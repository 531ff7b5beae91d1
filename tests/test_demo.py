"""The demo's result table: mean and spread over seeds, missing values shown as '-'."""

from __future__ import annotations

from spcl.demo import ABLATIONS, METHODS, RUNS, _slug, format_table


def test_table_mean_and_spread() -> None:
    table = format_table({
        "source-only": [{"mAP": 0.40, "rank1": 0.50, "rank5": 0.7}, {"mAP": 0.44, "rank1": 0.54, "rank5": 0.8}],
        "SpCL (UDA)": [{"mAP": 0.6, "rank1": 0.7, "rank5": 0.9}],
        "oracle (target labels)": [{}],
    })
    lines = table.splitlines()
    assert lines[2] == "| source-only | 42.0 ± 2.8 | 52.0 ± 2.8 | 75.0 ± 7.1 | 2 |"
    assert lines[3] == "| SpCL (UDA) | 60.0 | 70.0 | 90.0 | 1 |"
    assert lines[4] == "| oracle (target labels) | - | - | - | 1 |"


def test_runs_cover_the_papers_ablations() -> None:
    modes = {mode for mode, _ in {**RUNS, **ABLATIONS}.values()}
    assert modes == {"uda", "usl", "source-only", "oracle"}
    switches = {key for _, overrides in ABLATIONS.values() for key in overrides}
    assert switches == {"pseudo.discard_outliers", "pseudo.self_paced", "model.dsbn"}


def test_method_runs_have_folders_of_their_own() -> None:
    names = [*RUNS, *ABLATIONS, *METHODS]
    assert len({_slug(name) for name in names}) == len(names)
    assert _slug("SpCL (UDA)") == "spcl" and _slug("Cluster Contrast (USL)") == "cluster-contrast-usl"
    kinds = {overrides.get("memory.kind", "hybrid") for _, overrides in METHODS.values()}
    assert kinds == {"hybrid", "cluster"}
