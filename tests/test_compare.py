"""Comparisons across variants and seeds."""

import json
import math

import pytest
from plugins import tiny_mlp

from localearn.compare import mean_ci, run_comparison, summarize
from localearn.config import load_config
from localearn.errors import ConfigError

TINY = [*tiny_mlp("tiny_compare"), "compare.seeds=[0, 1]"]


def test_mean_ci_matches_a_hand_computation():
    # values 0.5, 0.7, 0.9: mean 0.7, std 0.2, t(0.975, 2) = 4.302653
    out = mean_ci([0.5, 0.7, 0.9])
    half = 4.302653 * 0.2 / math.sqrt(3)
    assert out["mean"] == pytest.approx(0.7)
    assert out["std"] == pytest.approx(0.2)
    assert out["ci_high"] == pytest.approx(0.7 + half, rel=1e-5)


def test_paired_test_against_the_baseline():
    res = {
        "a": {
            s: {
                "probe": [
                    {"block": "b", "budget": "all", "model": "trained", "accuracy": acc}
                ],
                "timing": {"train_s": 1.0},
            }
            for s, acc in enumerate([0.80, 0.82, 0.85])
        },
        "base": {
            s: {
                "probe": [
                    {"block": "b", "budget": "all", "model": "trained", "accuracy": acc}
                ],
                "timing": {"train_s": 2.0},
            }
            for s, acc in enumerate([0.70, 0.73, 0.74])
        },
    }
    row = next(r for r in summarize(res, "base")["rows"] if r["variant"] == "a")
    diffs = [0.10, 0.09, 0.11]
    mean = sum(diffs) / 3
    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / 2)
    t = mean / (sd / math.sqrt(3))  # = 17.32; two-sided p with 2 dof
    assert row["diff_mean"] == pytest.approx(0.10)
    assert t == pytest.approx(17.3205, rel=1e-4)
    assert row["p_value"] == pytest.approx(0.003317, rel=1e-3)


def test_comparison_runs_reuses_and_survives_a_failed_variant(tmp_path, caplog):
    cfg = load_config(
        None,
        [
            *TINY,
            "compare.variants={local: {}, end_to_end: {scheduler.mode: reference}, "
            "broken: {network.rule.name: no_such_rule}}",
            "compare.baseline=end_to_end",
        ],
    )
    summary = run_comparison(cfg, tmp_path / "cmp")
    assert {f["variant"] for f in summary["failures"]} == {"broken"}
    assert "unknown rule 'no_such_rule'" in summary["failures"][0]["error"]
    rows = [
        r
        for r in summary["rows"]
        if r["variant"] == "local" and r["model"] == "trained"
    ]
    assert {r["block"] for r in rows} == {"block1", "block2", "readout"}
    assert all(r["n"] == 2 and "p_value" in r for r in rows)
    assert (tmp_path / "cmp" / "report.md").exists()
    assert (tmp_path / "cmp" / "depth.png").exists()
    on_disk = json.loads((tmp_path / "cmp" / "summary.json").read_text())
    assert on_disk["schema"] == "localearn.comparison/1"

    caplog.set_level("INFO")
    again = run_comparison(cfg, tmp_path / "cmp")
    assert caplog.text.count("reusing finished run") == 4
    assert again["rows"] == summary["rows"]


def test_unknown_compare_key_and_baseline_are_refused(tmp_path):
    cfg = load_config(None, [*TINY, "compare.seed=[1]"])
    with pytest.raises(ConfigError, match=r"unknown key\(s\) compare.seed"):
        run_comparison(cfg, tmp_path)
    cfg = load_config(None, [*TINY, "compare.baseline=nope"])
    with pytest.raises(ConfigError, match="compare.baseline 'nope' is not a variant"):
        run_comparison(cfg, tmp_path)


def test_each_trained_row_is_tested_against_its_own_reference():
    def run(trained, reference):
        return {
            "probe": [
                {"model": "trained", "block": "b", "budget": "10", "accuracy": trained},
                {
                    "model": "reference",
                    "block": "b",
                    "budget": "10",
                    "accuracy": reference,
                },
            ],
            "timing": {"train_s": 1.0},
        }

    # differences 0.02, 0.04, 0.03: mean 0.03, sd 0.01, t = 5.196 with 2 dof
    res = {"gim": {0: run(0.82, 0.80), 1: run(0.84, 0.80), 2: run(0.83, 0.80)}}
    row = next(r for r in summarize(res, None)["rows"] if r["model"] == "trained")
    assert row["reference_diff_mean"] == pytest.approx(0.03)
    from scipy import stats

    assert row["reference_p_value"] == pytest.approx(2 * stats.t.sf(5.196152, 2))
    ref_row = next(r for r in summarize(res, None)["rows"] if r["model"] == "reference")
    assert "reference_diff_mean" not in ref_row


def test_a_changed_variant_is_not_silently_answered_by_its_old_run(tmp_path):
    cfg = load_config(None, [*TINY, "compare.seeds=[0]"])
    run_comparison(cfg, tmp_path / "cmp")
    changed = load_config(None, [*TINY, "compare.seeds=[0]", "scheduler.epochs=2"])
    summary = run_comparison(changed, tmp_path / "cmp")
    assert len(summary["failures"]) == 1
    assert "holds a run of a different config" in summary["failures"][0]["error"]
    # the old run is kept, not overwritten
    assert (tmp_path / "cmp" / "default" / "seed0" / "results.json").exists()
