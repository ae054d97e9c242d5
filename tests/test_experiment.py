"""Experiments end to end: outputs, resume, and errors on bad input."""

import json

import pytest
import torch

from localearn.cli import main
from localearn.config import load_config
from localearn.errors import ConfigError, DivergenceError, ShapeError, UnknownNameError
from localearn.experiment import Experiment

BASE = [
    "name=tiny",
    "data.name=digits",
    "scheduler.epochs=2",
    "scheduler.batch_size=128",
    "evaluate.budgets=[5, all]",
    "evaluate.probe.max_iter=50",
]
GIM = [
    "network.patches.size=4",
    "network.patches.stride=2",
    "network.layers=[{type: conv, out: 8}, {type: relu},"
    " {type: conv, out: 8}, {type: relu}]",
    "network.split=[2]",
    "network.rule.name=infonce",
    "network.rule.steps=1",
    "network.rule.negatives=8",
]
TINY = BASE + GIM


def _run(tmp_path, *extra, name="run", base=TINY):
    cfg = load_config(None, [*base, *extra])
    return Experiment.create(cfg, tmp_path / name).run()


def test_a_run_writes_config_metrics_checkpoint_results_and_report(tmp_path):
    results = _run(tmp_path, "evaluate.reference=true")
    run = tmp_path / "run"
    for name in (
        "config.yaml",
        "metrics.jsonl",
        "init.pt",
        "checkpoint.pt",
        "reference.pt",
        "results.json",
        "report.md",
        "loss.png",
        "accuracy.png",
    ):
        assert (run / name).exists(), name
    on_disk = json.loads((run / "results.json").read_text())
    assert on_disk["schema"] == "localearn.results/1"
    models = {(r["model"], r["block"], r["budget"]) for r in on_disk["probe"]}
    assert len(models) == 3 * 2 * 2
    assert all(0.0 <= r["accuracy"] <= 1.0 for r in results["probe"])
    assert "| block1 | 5 |" in (run / "report.md").read_text()
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert {r["model"] for r in lines} == {"trained", "reference"}


def test_probe_beats_chance_on_real_digits(tmp_path):
    results = _run(tmp_path)
    best = max(r["accuracy"] for r in results["probe"] if r["budget"] == "all")
    assert best > 0.8


@pytest.mark.parametrize("stop_at", [1, 4])
def test_an_interrupted_run_resumes_to_the_same_results(tmp_path, monkeypatch, stop_at):
    extra = ["evaluate.reference=true"]
    straight = _run(tmp_path, *extra, name="straight")

    calls = {"n": 0}
    original = Experiment._checkpoint

    def interrupting(self, net, pos, path):
        original(self, net, pos, path)
        calls["n"] += 1
        if calls["n"] == stop_at:
            raise KeyboardInterrupt

    monkeypatch.setattr(Experiment, "_checkpoint", interrupting)
    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path, *extra, name="broken")
    monkeypatch.setattr(Experiment, "_checkpoint", original)
    resumed = Experiment.resume(tmp_path / "broken").run()

    def acc(res):
        return [
            (r["model"], r["block"], r["budget"], r["accuracy"]) for r in res["probe"]
        ]

    assert acc(resumed) == acc(straight)
    a = torch.load(tmp_path / "straight" / "checkpoint.pt", weights_only=False)
    b = torch.load(tmp_path / "broken" / "checkpoint.pt", weights_only=False)
    for key, value in a["network"].items():
        assert torch.equal(value, b["network"][key]), key
    lines_a = (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()
    lines_b = (tmp_path / "broken" / "metrics.jsonl").read_text().splitlines()
    assert len(lines_a) == len(lines_b)


def test_a_nan_loss_stops_with_block_and_step_and_keeps_the_last_checkpoint(tmp_path):
    cfg = load_config(
        None,
        [
            *BASE,
            *GIM[:4],
            "network.rule.name=test_explode",
            "network.rule.nan_after=10",
            "scheduler.batch_size=200",
        ],
    )
    exp = Experiment.create(cfg, tmp_path / "nan")
    with pytest.raises(
        DivergenceError,
        match=r"block 'block1' \(rule 'test_explode'\) "
        r"produced a non-finite loss .* epoch 1, step 10",
    ):
        exp.run()
    ckpt = torch.load(tmp_path / "nan" / "checkpoint.pt", weights_only=False)
    assert ckpt["position"]["epoch"] == 1
    assert all(
        torch.isfinite(v).all()
        for v in ckpt["network"].values()
        if v.is_floating_point()
    )


def test_unknown_config_key_is_named(tmp_path):
    with pytest.raises(
        ConfigError,
        match=r"unknown config key 'schedulr' \(did you mean "
        r"'scheduler'\?\)",
    ):
        load_config(None, [*TINY, "schedulr.epochs=1"])
    with pytest.raises(ConfigError, match=r"unknown config key 'scheduler.epoch'"):
        load_config(None, [*TINY, "scheduler.epoch=1"])


def test_unknown_network_key_is_named(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown key\(s\) network.layer;"):
        _run(tmp_path, "network.layer=[]")


def test_unknown_rule_lists_valid_rules(tmp_path):
    with pytest.raises(UnknownNameError, match=r"unknown rule 'infonse'; valid rules:"):
        _run(tmp_path, "network.rule.name=infonse")


def test_unknown_data_set_lists_valid_names(tmp_path):
    with pytest.raises(
        UnknownNameError, match=r"unknown data set 'mnsit'; valid names:"
    ):
        _run(tmp_path, "data.name=mnsit")


def test_unknown_block_input_lists_known_blocks(tmp_path):
    blocks = (
        "network.blocks=[{name: a, layers: [{type: conv, out: 4}]}, "
        "{name: b, inputs: [z], layers: [{type: conv, out: 4}]}]"
    )
    with pytest.raises(
        UnknownNameError, match=r"block 'b' reads from unknown block 'z'"
    ):
        _run(
            tmp_path,
            blocks,
            "network.rule.name=infonce",
            "network.rule.steps=1",
            "network.patches.size=4",
            "network.patches.stride=2",
            base=BASE,
        )


def test_blocks_that_do_not_fit_name_both_blocks_and_shapes(tmp_path):
    blocks = (
        "network.blocks=[{name: a, layers: [{type: conv, out: 4}]}, "
        "{name: b, inputs: [a], layers: [{type: conv, out: 4, stride: 2}]}, "
        "{name: c, inputs: [a, b], layers: [{type: conv, out: 4}]}]"
    )
    with pytest.raises(
        ShapeError,
        match=r"block 'c' concatenates 'a' of shape \(4, 4, 4\) "
        r"and 'b' of shape \(4, 1, 1\)",
    ):
        _run(
            tmp_path,
            blocks,
            "network.rule.name=infonce",
            "network.rule.steps=1",
            "network.patches.size=4",
            "network.patches.stride=2",
            base=BASE,
        )


def test_a_layer_that_cannot_take_the_block_below_names_both(tmp_path):
    layers = (
        "network.layers=[{type: linear, out: 8}, {type: relu}, {type: conv, out: 4}]"
    )
    with pytest.raises(
        ShapeError,
        match=r"block 'block2' cannot take the output of "
        r"'block1' \(per-sample shape \(8,\)\)",
    ):
        _run(
            tmp_path,
            layers,
            "network.split=[2]",
            "network.rule.name=test_hebb",
            base=BASE,
        )


def test_an_existing_run_directory_is_not_overwritten(tmp_path):
    _run(tmp_path, "scheduler.epochs=0")
    with pytest.raises(ConfigError, match="already holds a run; resume it with"):
        _run(tmp_path, "scheduler.epochs=0")


def test_missing_config_file_says_where_the_experiments_are(tmp_path):
    with pytest.raises(ConfigError, match="config file 'nope.yaml' not found"):
        load_config("nope.yaml")


def test_cli_run_rules_and_errors(tmp_path, capsys):
    out = tmp_path / "cli"
    code = main(
        [
            "run",
            "-q",
            "--out",
            str(out / "x"),
            "experiments/gim_mnist.yaml",
            "scheduler.epochs=0",
            "data.options.n_train=100",
            "evaluate.budgets=[all]",
            "evaluate.random_twin=false",
            "evaluate.reference=false",
        ]
    )
    assert code == 0
    assert "| block3 | all |" in capsys.readouterr().out
    assert main(["rules"]) == 0
    listed = capsys.readouterr().out
    assert "infonce (objective)" in listed and "negatives: int = 16" in listed
    assert (
        main(
            [
                "run",
                "--out",
                str(tmp_path / "y"),
                "experiments/gim_mnist.yaml",
                "network.rule.name=nope",
            ]
        )
        == 2
    )
    assert "unknown rule 'nope'" in capsys.readouterr().err
    assert main(["summarize", str(out / "x")]) == 0
    assert "| block1 | all | trained |" in capsys.readouterr().out


def test_a_bad_config_fails_before_its_run_directory_exists(tmp_path):
    for bad, message in [
        ("network.rule.name=infonse", "unknown rule 'infonse'"),
        ("data.name=digit", "unknown data set 'digit'"),
        ("scheduler.mode=sequentail", "unknown scheduler mode 'sequentail'"),
        ("evaluate.pool=0", "evaluate.pool must be >= 1"),
        ("evaluate.budgets=[5000]", "label budget of 5000 per class"),
    ]:
        cfg = load_config(None, [*TINY, bad])
        with pytest.raises((ConfigError, UnknownNameError), match=message):
            Experiment.create(cfg, tmp_path / "bad")
        assert not (tmp_path / "bad").exists(), bad


def test_schedules_the_rules_cannot_follow_fail_before_the_run_directory(tmp_path):
    mlp = [
        "network.layers=[{type: linear, out: 16, bias: false}, {type: relu},"
        " {type: linear, out: 16, bias: false}]",
        "network.split=[2]",
    ]
    cases = [
        # Forward-Forward draws fresh negatives: cached inputs cannot serve it
        (["network.rule.name=ff", "scheduler.mode=cached"], ConfigError, "cached"),
        # a Hebbian rule has no objective to differentiate end to end
        (
            ["network.rule.name=oja", "evaluate.reference=true"],
            NotImplementedError,
            "reference mode differentiates",
        ),
    ]
    for extra, error, message in cases:
        cfg = load_config(None, [*BASE, *mlp, *extra])
        with pytest.raises(error, match=message):
            Experiment.create(cfg, tmp_path / "bad")
        assert not (tmp_path / "bad").exists(), extra


def test_wrongly_typed_values_are_named():
    with pytest.raises(ConfigError, match=r"config key 'seed' must be an int .* 'abc'"):
        load_config(None, [*TINY, "seed=abc"])
    with pytest.raises(ConfigError, match=r"'scheduler.epochs' must be an int"):
        load_config(None, [*TINY, "scheduler.epochs=two"])


def test_summarize_refuses_runs_of_different_experiments(tmp_path, capsys):
    _run(tmp_path, "scheduler.epochs=0", "name=one", name="one")
    _run(tmp_path, "scheduler.epochs=0", "name=two", name="two")
    assert main(["summarize", str(tmp_path / "one"), str(tmp_path / "two")]) == 2
    assert "different experiments (one, two)" in capsys.readouterr().err


def test_options_may_follow_the_config_and_overrides(tmp_path):
    out = tmp_path / "late"
    argv = [
        "run",
        "experiments/gim_mnist.yaml",
        "-q",
        "scheduler.epochs=0",
        "data.options.n_train=100",
        "evaluate.budgets=[all]",
        "evaluate.random_twin=false",
        "evaluate.reference=false",
        "--out",
        str(out),
    ]
    assert main(argv) == 0
    assert (out / "results.json").exists()


def test_resuming_a_finished_run_keeps_its_results_and_timing(tmp_path, capsys):
    first = _run(tmp_path, "scheduler.epochs=1", "evaluate.budgets=[all]")
    path = tmp_path / "run" / "results.json"
    before = path.read_text()
    again = Experiment.resume(tmp_path / "run").run()
    assert again == first and path.read_text() == before
    # no interruption markers are left once a model has finished
    assert not list((tmp_path / "run").glob("*.start"))
    # summarize refuses runs whose configs differ beyond the seed
    _run(tmp_path, "scheduler.epochs=2", "evaluate.budgets=[all]", name="other")
    code = main(["summarize", str(tmp_path / "run"), str(tmp_path / "other")])
    assert code == 2
    assert "differ in more than their seed" in capsys.readouterr().err


def test_datasets_command_says_what_each_data_set_is(capsys):
    assert main(["datasets"]) == 0
    out = capsys.readouterr().out
    assert "mnist_subset  embedded" in out and "your files" in out
