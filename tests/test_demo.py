"""The demo's result table: mean and spread over seeds, missing values shown as '-'."""

from __future__ import annotations

import json

import pytest

from spcl.demo import ABLATIONS, METHODS, RUNS, _slug, format_table, merge_results, run_demo


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
    assert kinds == {"hybrid", "cluster", "cap", "o2cap"}


def test_a_table_measured_in_parts_merges_in_table_order(tmp_path) -> None:
    first, second = tmp_path / "a.json", tmp_path / "b.json"
    first.write_text(json.dumps({"results": {"SpCL (UDA)": [{"mAP": 0.6, "seconds": 60.0}],
                                             "source-only": [{"mAP": 0.4, "seconds": 30.0}]}}))
    second.write_text(json.dumps({"results": {"SpCL (UDA)": [{"mAP": 0.7, "seconds": 180.0}]}}))
    merged = merge_results([str(first), str(second)])
    assert list(merged) == ["source-only", "SpCL (UDA)"]
    assert [r["mAP"] for r in merged["SpCL (UDA)"]] == [0.6, 0.7]
    lines = format_table(merged).splitlines()
    assert lines[0].endswith("minutes a run |")
    assert lines[3] == "| SpCL (UDA) | 65.0 ± 7.1 | - | - | 2 | 2.0 |"
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(ValueError, match="not a results.json"):
        merge_results([str(tmp_path / "bad.json")])


def test_only_keeps_the_named_runs_and_refuses_unknown_ones(tmp_path) -> None:
    with pytest.raises(ValueError, match="no run of the table matches"):
        run_demo(data_root=str(tmp_path), output=str(tmp_path / "out"), methods=True, only=["no such method"])
