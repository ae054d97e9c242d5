"""Predictive coding: backprop in the fixed-prediction limit, modes, errors."""

import pytest
import torch

from localearn.errors import ConfigError, ShapeError
from localearn.network import Network
from localearn.rule import get_rule_class, make_rule, rule_names
from localearn.rules.pc import PredictiveCoding, make_decoder
from localearn.schedulers import Position, SchedulerConfig, Trainer

MLP = [
    {"type": "linear", "out": 16},
    {"type": "tanh"},
    {"type": "linear", "out": 12},
    {"type": "gelu"},
    {"type": "linear", "out": 5},
]
CONV = [
    {"type": "conv", "out": 4},
    {"type": "gelu"},
    {"type": "conv", "out": 4, "stride": 2},
    {"type": "tanh"},
    {"type": "flatten"},
    {"type": "linear", "out": 5},
]
NETS = {"mlp": (MLP, (7,)), "conv": (CONV, (1, 6, 6))}


def _net(kind="mlp", optimizer=None, split=(2, 4), **rule):
    torch.manual_seed(0)
    layers, shape = NETS[kind]
    spec = {
        "layers": layers,
        "split": list(split),
        "rule": {"name": "pc", **rule},
        "optimizer": optimizer or {"name": "sgd", "lr": 1.0},
    }
    return Network.from_config(spec, shape, 5)


def _batch(kind="mlp", n=10):
    g = torch.Generator().manual_seed(3)
    return torch.randn(n, *NETS[kind][1], generator=g), torch.randint(
        0, 5, (n,), generator=g
    )


def _step(kind, mode, **rule):
    """Weight change of one training step (SGD, lr 1) in the given scheduler mode."""
    net = _net(kind, **rule)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    x, y = _batch(kind)
    cfg = SchedulerConfig(mode=mode, epochs=1, batch_size=len(x), audit_steps=-1)
    Trainer(net, cfg, x, y).run()
    return torch.cat([(before[k] - v).flatten() for k, v in net.state_dict().items()])


def _rel(a, b):
    return float((a - b).norm() / b.norm())


# -- the fixed-prediction limit is backprop ----------------------------------


@pytest.mark.parametrize("kind", ["mlp", "conv"])
def test_fixed_prediction_updates_equal_backprop(kind, record_property):
    backprop = _step(kind, "reference")

    # fixed predictions: the errors reach backprop's in L - 1 steps of size 1,
    # and stay there (Millidge, Tschantz and Buckley 2020)
    exact = [
        _rel(
            _step(
                kind,
                "simultaneous",
                fixed_prediction=True,
                inference_lr=1.0,
                inference_steps=steps,
            ),
            backprop,
        )
        for steps in (2, 10)
    ]

    # the strict variant (predictions follow the states) only approximates it
    drift = {
        steps: _rel(_step(kind, "simultaneous", inference_steps=steps), backprop)
        for steps in (8, 50)
    }
    report = (
        f"{kind}: fixed prediction vs backprop, relative error {exact[0]:.2e} "
        f"(T=2), {exact[1]:.2e} (T=10); strict variant (inference_lr 0.1) drifts "
        f"{drift[8]:.3f} at T=8 and {drift[50]:.3f} at T=50"
    )
    print(report)
    record_property("pc_vs_backprop", report)
    assert max(exact) < 1e-4, report
    assert 0 < drift[8] < 1 and 0 < drift[50] < 1, report


def test_reference_loss_is_the_top_energy_at_the_feedforward_pass():
    net = _net()
    x, y = _batch()
    with torch.no_grad():
        outputs = net(x)
    top, below = net.blocks["block3"].rule, net.blocks["block2"].rule
    want = 0.5 * (torch.nn.functional.one_hot(y, 5) - outputs["block3"]).pow(2).sum(1)
    assert float(top.reference_loss(outputs["block3"], y)) == pytest.approx(
        float(want.mean()), rel=1e-6
    )
    assert float(below.reference_loss(outputs["block2"], y)) == 0.0


# -- inference ---------------------------------------------------------------


def test_energy_never_rises_during_inference_with_a_small_step():
    net = _net(inference_steps=60, inference_lr=0.05, inference_backoff=1.0)
    x, y = _batch(n=32)
    Trainer(net, SchedulerConfig(epochs=1, batch_size=32), x, y).run()
    curves = [net.blocks[n].rule.traces()["energy"] for n in net.order]
    totals = [sum(step) for step in zip(*curves, strict=True)]
    assert len(totals) == 61
    assert all(b <= a + 1e-7 for a, b in zip(totals, totals[1:], strict=False)), totals
    assert totals[-1] < 0.8 * totals[0]


def test_momentum_and_early_stopping_are_options_of_the_rule():
    net = _net(inference_steps=100, inference_momentum=0.5, inference_tolerance=1e-4)
    x, y = _batch(n=32)
    records = []
    Trainer(
        net, SchedulerConfig(epochs=1, batch_size=32), x, y, log_step=records.append
    ).run()
    diag = [r for r in records if r["event"] == "epoch"][0]["diagnostics"]["block1"]
    assert 1 <= diag["inference_steps"] < 100


# -- modes ---------------------------------------------------------------------


def test_supervised_pc_learns_digits_as_well_as_backprop(digits):
    accuracy = {}
    for mode in ("simultaneous", "reference"):
        torch.manual_seed(0)
        net = Network.from_config(
            {
                "layers": [
                    {"type": "linear", "out": 64},
                    {"type": "gelu"},
                    {"type": "linear", "out": 64},
                    {"type": "gelu"},
                    {"type": "linear", "out": 10},
                ],
                "split": [2, 4],
                "rule": {"name": "pc"},
                "optimizer": {"name": "adam", "lr": 3e-3},
            },
            (1, 8, 8),
            10,
        )
        cfg = SchedulerConfig(mode=mode, epochs=3, batch_size=64, audit_steps=0)
        Trainer(net, cfg, digits.x_train, digits.y_train).run()
        with torch.no_grad():
            pred = net(digits.x_test)["block3"].argmax(1)
        accuracy[mode] = float((pred == digits.y_test).float().mean())
    print(f"digits readout: {accuracy}")
    assert accuracy["simultaneous"] > 0.88, accuracy
    assert abs(accuracy["simultaneous"] - accuracy["reference"]) < 0.04, accuracy


def test_generative_mode_learns_to_predict_the_data(digits):
    torch.manual_seed(0)
    net = Network.from_config(
        {
            "layers": [
                {"type": "linear", "out": 32},
                {"type": "gelu"},
                {"type": "linear", "out": 16},
                {"type": "gelu"},
            ],
            "split": [2],
            "rule": {"name": "pc", "mode": "generative"},
            "optimizer": {"name": "adam", "lr": 3e-3},
        },
        (1, 8, 8),
        10,
    )
    rule = net.blocks["block1"].rule
    assert not rule.needs_labels_now()
    decoder = [p.clone() for p in rule.decoder.parameters()]
    body = [p.clone() for p in net.blocks["block1"].body.parameters()]
    records = []
    cfg = SchedulerConfig(epochs=3, batch_size=64, audit_steps=2)
    Trainer(net, cfg, digits.x_train, digits.y_train, log_step=records.append).run()
    epochs = [r["diagnostics"]["block1"] for r in records if r["event"] == "epoch"]
    assert epochs[-1]["energy_start"] < 0.5 * epochs[0]["energy_start"], epochs
    assert all(e["energy"] < e["energy_start"] for e in epochs)
    moved = [
        not torch.equal(a, b)
        for a, b in zip(decoder, rule.decoder.parameters(), strict=True)
    ]
    moved += [
        not torch.equal(a, b)
        for a, b in zip(body, net.blocks["block1"].body.parameters(), strict=True)
    ]
    assert all(moved)


def test_decoders_map_states_back_to_inputs():
    assert make_decoder((16,), (1, 8, 8), "gelu")(torch.zeros(3, 16)).shape == (
        3,
        1,
        8,
        8,
    )
    assert make_decoder((4, 3, 3), (1, 6, 6), "none")(
        torch.zeros(2, 4, 3, 3)
    ).shape == (2, 1, 6, 6)
    assert make_decoder((4, 5), (2, 10), "tanh")(torch.zeros(2, 4, 5)).shape == (
        2,
        2,
        10,
    )


def test_generative_mode_has_no_reference_loss():
    net = _net(mode="generative")
    x, y = _batch()
    with pytest.raises(
        NotImplementedError, match="mode 'generative' has no reference loss"
    ):
        Trainer(
            net, SchedulerConfig(mode="reference", epochs=1, batch_size=10), x, y
        ).run()


def test_a_block_trained_alone_relaxes_with_the_frozen_blocks_above():
    net = _net()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    x, y = _batch()
    cfg = SchedulerConfig(mode="sequential", epochs=1, batch_size=10, audit_steps=-1)
    trainer = Trainer(net, cfg, x, y)
    trainer._local_step(x, y, ["block1"], True, Position())
    changed = {k for k, v in net.state_dict().items() if not torch.equal(v, before[k])}
    assert changed == {"blocks.block1.body.0.weight", "blocks.block1.body.0.bias"}
    assert net.blocks["block1"].rule.traces()["energy"][-1] > 0
    assert net.blocks["block3"].rule.traces() == {}


def test_a_supervised_chain_must_reach_the_last_block():
    torch.manual_seed(0)
    net = Network.from_config(
        {
            "layers": MLP,
            "split": [2, 4],
            "rule": {"name": "pc"},
            "blocks": [{}, {}, {"rule": {"name": "test_supervised_head"}}],
        },
        (7,),
        5,
    )
    x, y = _batch()
    with pytest.raises(
        NotImplementedError,
        match=r"block 'block2': this block is the top of its inference chain but not "
        r"the network's last block",
    ):
        Trainer(net, SchedulerConfig(epochs=1, batch_size=10), x, y).run()


def test_the_supervised_top_must_output_one_value_per_class():
    torch.manual_seed(0)
    net = Network.from_config(
        {
            "layers": [
                {"type": "linear", "out": 8},
                {"type": "gelu"},
                {"type": "linear", "out": 6},
            ],
            "split": [2],
            "rule": {"name": "pc"},
        },
        (7,),
        5,
    )
    x, y = _batch()
    with pytest.raises(
        ShapeError,
        match=r"block 'block2': the last block's state is "
        r"clamped to one-hot labels of 5 classes, but the block outputs "
        r"per-sample shape \(6,\)",
    ):
        Trainer(net, SchedulerConfig(epochs=1, batch_size=10), x, y).run()


# -- the rule's contract -------------------------------------------------------


def test_pc_is_registered_through_its_entry_point():
    assert "pc" in rule_names()
    assert get_rule_class("pc") is PredictiveCoding
    assert PredictiveCoding.kind == "energy"


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (
            {"mode": "unsupervised"},
            r"mode must be one of \('supervised', 'generative'\), "
            r"got 'unsupervised'",
        ),
        ({"inference_steps": 0}, "inference_steps must be >= 1, got 0"),
        ({"inference_lr": 0.0}, "inference_lr must be > 0, got 0.0"),
        (
            {"inference_momentum": 1.0},
            r"inference_momentum must be in \[0, 1\), got 1.0",
        ),
        ({"inference_tolerance": -0.1}, "inference_tolerance must be >= 0, got -0.1"),
        ({"inference_backoff": 0.0}, r"inference_backoff must be in \(0, 1\], got 0.0"),
        ({"max_energy_ratio": 1.0}, "max_energy_ratio must be > 1, got 1.0"),
        ({"decoder_activation": "swish"}, "decoder_activation must be one of"),
        (
            {"fixed_prediction": True, "incremental": True},
            "fixed_prediction holds the predictions of the weights before inference",
        ),
        (
            {"fixed_prediction": True, "mode": "generative"},
            "it is not defined for mode 'generative'",
        ),
        ({"inference_step": 3}, "rule 'pc' has no hyperparameter 'inference_step'"),
    ],
)
def test_bad_hyperparameters_are_refused(options, message):
    with pytest.raises(ConfigError, match=message):
        make_rule("pc", options)


def test_diagnostics_and_traces_report_energies_per_block():
    net = _net(optimizer={"name": "adam", "lr": 1e-3}, inference_steps=5)
    x, y = _batch(n=40)
    records = []
    Trainer(
        net, SchedulerConfig(epochs=2, batch_size=20), x, y, log_step=records.append
    ).run()
    epochs = [r for r in records if r["event"] == "epoch"]
    for record in epochs:
        assert set(record["loss"]) == {"block1", "block2", "block3"}
        for name in net.order:
            diag = record["diagnostics"][name]
            assert isinstance(diag["energy"], float) and diag["energy"] >= 0
            assert diag["inference_steps"] == 5
    curve = net.blocks["block3"].rule.traces()["energy"]
    assert len(curve) == 6 and all(isinstance(v, float) for v in curve)
    # the top starts with all the error; inference spreads it downwards
    low = net.blocks["block1"].rule.traces()["energy"]
    assert low[0] == 0.0 and low[-1] > 0.0


@pytest.mark.parametrize("mode", ["supervised", "generative"])
def test_batch_size_one_and_checkpoint_round_trip(mode):
    net = _net(optimizer={"name": "adam", "lr": 1e-3}, mode=mode)
    x, y = _batch(n=3)
    Trainer(net, SchedulerConfig(epochs=1, batch_size=1, audit_steps=-1), x, y).run()
    state = net.state_dict()
    if mode == "generative":
        assert any(k.startswith("blocks.block1.rule.decoder") for k in state)
    twin = _net(optimizer={"name": "adam", "lr": 1e-3}, mode=mode)
    twin.load_state_dict(state)
    for a, b in zip(net.parameters(), twin.parameters(), strict=True):
        assert torch.equal(a, b)


def test_receptive_fields_of_a_block_reading_images():
    torch.manual_seed(0)
    net = Network.from_config(
        {
            "layers": [
                {"type": "linear", "out": 8},
                {"type": "gelu"},
                {"type": "linear", "out": 10},
            ],
            "split": [2],
            "rule": {"name": "pc"},
        },
        (1, 8, 8),
        10,
    )
    block = net.blocks["block1"]
    assert block.rule.receptive_fields(block.body).shape == (8, 1, 8, 8)
    assert net.blocks["block2"].rule.receptive_fields(net.blocks["block2"].body) is None
