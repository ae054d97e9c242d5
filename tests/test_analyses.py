"""Analyses for comparing rules: CKA against the reference, memory, cost."""

import json

import numpy as np
import pytest
import torch

from localearn.analysis import cka_matrix, cka_table
from localearn.cli import main
from localearn.compare import run_comparison, summarize
from localearn.config import load_config
from localearn.data import load_dataset
from localearn.experiment import Experiment, build_network

TINY = [
    "name=tiny_analyses",
    "data.name=digits",
    "threads=1",
    "network.layers=[{type: linear, out: 16}, {type: relu}, {type: linear, out: 10}]",
    "network.split=[2]",
    "network.rule.name=test_supervised_head",
    "scheduler.epochs=1",
    "scheduler.batch_size=256",
    "evaluate.budgets=[all]",
    "evaluate.probe.max_iter=30",
]
# block2 holds two 2048-wide layers (4.2M parameters), so its gradients and
# Adam state alone take about 50 MiB; block1 is tiny
WIDE = [
    "data.name=digits",
    "threads=1",
    "network.layers=[{type: linear, out: 16}, {type: relu},"
    " {type: linear, out: 2048}, {type: relu}, {type: linear, out: 2048}]",
    "network.split=[2]",
    "network.rule.name=greedy_supervised",
    "scheduler.batch_size=64",
]


def _features(cfg, data, state):
    net = build_network(cfg, data)
    net.load_state_dict(state)
    return Experiment(cfg, ".").features(net, data.x_test)[0]


def test_cka_in_results_matches_a_recomputation_from_the_saved_networks(tmp_path):
    cfg = load_config(None, [*TINY, "evaluate.reference=true"])
    run = tmp_path / "run"
    results = Experiment.create(cfg, run).run()

    # recompute features from the checkpoints, then CKA from its definition
    data = load_dataset("digits")
    trained = torch.load(run / "checkpoint.pt", weights_only=False)["network"]
    reference = torch.load(run / "reference.pt", weights_only=False)["network"]
    init = torch.load(run / "init.pt", weights_only=True)
    f_ref = _features(cfg, data, reference)
    for model, state in (("trained", trained), ("random", init)):
        table = results["cka"][f"{model}_vs_reference"]
        rows, cols, expected = cka_matrix(_features(cfg, data, state), f_ref)
        assert table["rows"] == rows == ["block1", "block2"]
        assert table["cols"] == cols
        assert np.allclose(table["values"], expected.numpy(), atol=1e-6)
        assert all(0.0 <= v <= 1.0 + 1e-9 for row in table["values"] for v in row)

    on_disk = json.loads((run / "results.json").read_text())
    assert on_disk["cka"] == results["cka"]
    assert on_disk["epochs"] == {"trained": 1, "reference": 1}
    assert (
        "![linear CKA against the reference](cka.png)"
        in (run / "report.md").read_text()
    )
    assert (run / "cka.png").stat().st_size > 0


def test_cka_of_a_network_with_itself_has_a_unit_diagonal():
    g = torch.Generator().manual_seed(0)
    feats = {
        "block1": torch.randn(80, 12, generator=g),
        "block2": torch.randn(80, 4, generator=g),
    }
    table = cka_table(feats, feats)
    assert np.allclose(np.diag(table["values"]), 1.0)
    assert table["values"][0][1] == pytest.approx(table["values"][1][0])


def _fake_run(cka_values, train_s, total_s, epochs=4):
    table = {"rows": ["b1", "b2"], "cols": ["b1", "b2"], "values": cka_values}
    return {
        "probe": [{"block": "b1", "budget": "all", "model": "trained", "accuracy": 1}],
        "timing": {"train_s": train_s, "reference_s": 2 * train_s, "total_s": total_s},
        "epochs": {"trained": epochs, "reference": epochs},
        "cka": {"trained_vs_reference": table},
    }


def test_comparison_averages_cka_matrices_and_times_over_seeds():
    a = [[1.0, 0.2], [0.4, 0.6]]
    b = [[0.8, 0.4], [0.0, 1.0]]
    summary = summarize(
        {"v": {0: _fake_run(a, 8.0, 10.0), 1: _fake_run(b, 16.0, 20.0)}}, None
    )
    cka = summary["cka"]["v"]["trained_vs_reference"]
    assert cka["rows"] == cka["cols"] == ["b1", "b2"]
    assert cka["n"] == 2
    # hand mean and sample standard deviation of two values x, y: |x - y| / sqrt 2
    assert np.allclose(cka["mean"], [[0.9, 0.3], [0.2, 0.8]])
    assert np.allclose(cka["std"], np.abs(np.subtract(a, b)) / np.sqrt(2), atol=1e-12)

    cost = summary["cost"]["v"]
    assert cost["epoch_s"]["mean"] == pytest.approx((8 / 4 + 16 / 4) / 2)
    assert cost["epoch_s"]["std"] == pytest.approx(2 / np.sqrt(2))
    assert cost["reference_epoch_s"]["mean"] == pytest.approx(6.0)
    assert cost["total_s"]["mean"] == pytest.approx(15.0)


def test_memory_command_measures_every_schedule_and_block(tmp_path, capsys):
    out = tmp_path / "mem"
    config = tmp_path / "wide.yaml"
    config.write_text("name: wide\n")
    assert main(["memory", str(config), *WIDE, "--steps", "2", "--out", str(out)]) == 0
    assert "| reference | all |" in capsys.readouterr().out
    result = json.loads((out / "memory.json").read_text())
    assert "| schedule | block | peak MiB |" in (out / "memory.md").read_text()

    got = {(r["schedule"], r["block"]) for r in result["rows"]}
    assert got == {
        ("simultaneous", "all"),
        ("sequential", "block1"),
        ("sequential", "block2"),
        ("cached", "block1"),
        ("cached", "block2"),
        ("reference", "all"),
    }
    for r in result["rows"]:
        assert r["peak_mb"] > 0 and r["delta_mb"] >= 0 and r["seconds_per_step"] > 0
    rows = {(r["schedule"], r["block"]): r for r in result["rows"]}
    ref = rows["reference", "all"]
    assert ref["delta_ratio"] == pytest.approx(1.0)
    assert rows["cached", "block2"]["cache_mb"] > 0
    # the reference holds gradients and Adam state of the 4.2M wide parameters
    # (about 48 MiB) that training block1 alone never allocates
    assert ref["delta_mb"] > rows["sequential", "block1"]["delta_mb"] + 25

    params = {p["block"]: p for p in result["parameters"]}
    assert params["block2"]["parameters"] > 4_000_000
    assert params["block2"]["optimizer_mb"] == pytest.approx(
        2 * params["block2"]["param_mb"], rel=0.01
    )


def test_comparison_with_memory_writes_cost_memory_and_cka(tmp_path):
    cfg = load_config(
        None,
        [
            *TINY,
            "evaluate.reference=true",
            "evaluate.random_twin=false",
            "compare.seeds=[0, 1]",
            "compare.variants={local: {}, no_cka: {evaluate.cka: false}}",
            "compare.memory=true",
        ],
    )
    summary = run_comparison(cfg, tmp_path / "cmp")
    assert not summary["failures"]
    assert set(summary["cka"]) == {"local"}
    assert summary["cka"]["local"]["trained_vs_reference"]["n"] == 2
    assert {r["schedule"] for r in summary["memory"]["rows"]} == {
        "simultaneous",
        "sequential",
        "cached",
        "reference",
    }
    report = (tmp_path / "cmp" / "report.md").read_text()
    assert "## Memory per schedule" in report
    assert "| sequential | block2 |" in report
    assert "## Cost" in report
    assert "| variant | s / epoch | reference s / epoch |" in report
    assert summary["cost"]["local"]["epoch_s"]["n"] == 2
    assert "![linear CKA of local](cka_local.png)" in report
    assert (tmp_path / "cmp" / "cka_local.png").exists()
    assert (tmp_path / "cmp" / "memory.json").exists()
    on_disk = json.loads((tmp_path / "cmp" / "summary.json").read_text())
    assert on_disk["cost"]["no_cka"]["reference_epoch_s"]["n"] == 2
