"""Forward-Forward: goodness, losses, negatives in the scheduler, training."""

import math

import pytest
import torch
from torch.nn import functional as F

from localearn import rule as rule_module
from localearn.errors import ConfigError, ShapeError
from localearn.layers import Patchify, build_layer
from localearn.network import Network
from localearn.rule import BlockContext, ObjectiveRule, make_rule
from localearn.rules.ff import (
    ForwardForwardConfig,
    goodness,
    split_halves,
    symba_loss,
    threshold_loss,
)
from localearn.schedulers import Position, SchedulerConfig, Trainer


def _rule(options=None, grid=(), out_shape=(2,)):
    rule = make_rule("ff", options or {})
    rule.setup(BlockContext("b", out_shape, out_shape, grid=grid), torch.nn.Identity())
    return rule


# -- goodness and losses ------------------------------------------------------


def test_goodness_is_the_mean_squared_activity_of_each_sample():
    y = torch.tensor([[1.0, -3.0], [2.0, 0.0], [0.5, 0.5]])
    assert goodness(y).tolist() == [5.0, 2.0, 0.25]
    conv = torch.zeros(1, 2, 2, 2)
    conv[0, 1, 0, 0] = 4.0  # one activity of 16 among 8
    assert goodness(conv).tolist() == [2.0]


def test_threshold_loss_by_hand():
    # positives: goodness 5 and 2; negatives: 1 and 3; theta = 2
    y = torch.tensor([[1.0, -3.0], [2.0, 0.0], [1.0, 1.0], [1.0, -(5.0**0.5)]])
    rule = _rule({"threshold": 2.0})
    sp = lambda v: math.log1p(math.exp(v))  # noqa: E731
    expected = (sp(-3.0) + sp(0.0) + sp(-1.0) + sp(1.0)) / 4
    assert rule.loss(None, y).item() == pytest.approx(expected, rel=1e-6)


def test_symba_loss_by_hand():
    # pairs (g_pos, g_neg) = (5, 1) and (2, 3); alpha = 0.5
    y = torch.tensor([[1.0, -3.0], [2.0, 0.0], [1.0, 1.0], [1.0, -(5.0**0.5)]])
    rule = _rule({"loss": "symba", "alpha": 0.5})
    sp = lambda v: math.log1p(math.exp(v))  # noqa: E731
    expected = (sp(-0.5 * 4.0) + sp(-0.5 * -1.0)) / 2
    assert rule.loss(None, y).item() == pytest.approx(expected, rel=1e-6)
    assert symba_loss(torch.tensor([5.0]), torch.tensor([1.0]), 0.5).item() == (
        pytest.approx(sp(-2.0))
    )


def test_threshold_loss_gradient_matches_the_hand_formula():
    # d/dy_j of softplus(-(g - theta)) with g = mean(y^2) over D features is
    # -sigmoid(-(g - theta)) * 2 y_j / D; of softplus(g - theta) it is
    # sigmoid(g - theta) * 2 y_j / D; the loss averages over 2B samples.
    torch.manual_seed(3)
    y = torch.randn(6, 5, dtype=torch.float64, requires_grad=True)
    theta = 1.5
    rule = _rule({"threshold": theta}, out_shape=(5,))
    rule.loss(None, y).backward()
    with torch.no_grad():
        g = y.pow(2).mean(1, keepdim=True)
        sign = torch.tensor([-1.0] * 3 + [1.0] * 3, dtype=torch.float64)[:, None]
        expected = torch.sigmoid(sign * (g - theta)) * sign * 2 * y / 5 / 6
    assert torch.allclose(y.grad, expected)


def test_threshold_loss_agrees_with_an_independent_expression():
    g_pos, g_neg = torch.rand(7) * 4, torch.rand(7) * 4
    theta = 2.0
    # Hinton's probability that a sample is positive, p = sigmoid(g - theta)
    nll = (
        -(
            torch.log(torch.sigmoid(g_pos - theta)).sum()
            + torch.log(1 - torch.sigmoid(g_neg - theta)).sum()
        )
        / 14
    )
    assert threshold_loss(g_pos, g_neg, theta).item() == pytest.approx(nll.item())


def test_odd_batches_are_refused_with_the_reason():
    with pytest.raises(ShapeError, match="odd batch of 3 samples"):
        split_halves(torch.zeros(3), "b1")


def test_diagnostics_report_goodness_and_accuracy_then_reset():
    rule = _rule({"threshold": 2.0})
    y = torch.tensor([[1.0, -3.0], [2.0, 0.0], [1.0, 1.0], [1.0, -(5.0**0.5)]])
    rule.loss(None, y)
    diag = rule.diagnostics()
    # goodness pos 5, 2 -> 3.5; neg 1, 3 -> 2; right: 5 > 2, 1 < 2 -> 2 of 4
    assert diag == pytest.approx(
        {"goodness_pos": 3.5, "goodness_neg": 2.0, "accuracy": 0.5}
    )
    assert rule.diagnostics() == {}
    symba = _rule({"loss": "symba"})
    symba.loss(None, y)
    assert symba.diagnostics()["accuracy"] == 0.5  # 5 > 1, 2 < 3


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"loss": "energy"}, "loss must be one of threshold, symba, got 'energy'"),
        ({"threshold": 0.0}, "threshold must be > 0, got 0.0"),
        ({"alpha": -1.0}, "alpha must be > 0, got -1.0"),
        ({"negative": "noise"}, "negative must be one of hybrid, shuffle"),
    ],
)
def test_bad_hyperparameters_name_the_value(bad, message):
    with pytest.raises(ConfigError, match=f"rule 'ff': {message}"):
        make_rule("ff", bad)


def test_defaults_are_the_papers():
    c = ForwardForwardConfig()
    assert (c.loss, c.threshold, c.alpha, c.negative) == (
        "threshold",
        2.0,
        4.0,
        "hybrid",
    )


# -- patch grids --------------------------------------------------------------


def test_patch_grids_split_by_sample():
    # two samples of 1x6x6 cut into a 2x2 grid of 4x4 patches (stride 2)
    x = torch.zeros(2, 1, 6, 6)
    x[0] = 1.0  # the positive sample is all ones, the negative all zeros
    patches = Patchify(4, 2)(x)
    assert patches.shape == (8, 1, 4, 4)
    g = goodness(patches, (2, 2))
    assert g.tolist() == [1.0, 0.0]
    rule = _rule({"threshold": 0.5}, grid=(2, 2), out_shape=(1, 4, 4))
    rule.loss(None, patches)
    assert rule.diagnostics() == pytest.approx(
        {"goodness_pos": 1.0, "goodness_neg": 0.0, "accuracy": 1.0}
    )


def test_patch_grid_goodness_averages_every_activity_of_a_sample():
    torch.manual_seed(0)
    x = torch.randn(3, 2, 9, 9)
    y = Patchify(5, 2)(x)  # (3 * 9, 2, 5, 5), sample-major
    g = goodness(y, (3, 3))
    expected = y.reshape(3, -1).pow(2).mean(1)
    assert torch.allclose(g, expected)
    vec = y.flatten(1)  # a linear block's output on each patch
    assert torch.allclose(goodness(vec, (3, 3)), expected)


# -- l2norm layer --------------------------------------------------------------


def test_l2norm_divides_each_vector_by_its_length():
    layer = build_layer({"type": "l2norm"}, (2,))
    out = layer(torch.tensor([[3.0, 4.0], [0.0, 0.0]]))
    assert torch.allclose(out, torch.tensor([[0.6, 0.8], [0.0, 0.0]]), atol=1e-6)
    conv = build_layer({"type": "l2norm", "eps": 1e-9}, (3, 4, 4))
    out = conv(torch.randn(2, 3, 4, 4))
    assert torch.allclose(out.norm(dim=1), torch.ones(2, 4, 4))
    assert not list(conv.parameters())
    with pytest.raises(ConfigError, match="layer 'l2norm' needs eps > 0, got 0"):
        build_layer({"type": "l2norm", "eps": 0}, (2,))


# -- the scheduler appends negatives ------------------------------------------


class _Recorder(ObjectiveRule):
    """Records the batches it is trained on."""

    name = "test_ff_recorder"
    Config = ForwardForwardConfig  # any dataclass; the fields are unused
    needs_labels = True
    seen: list = []

    def loss(self, x, y, labels=None):
        type(self).seen.append((x.detach().clone(), labels.clone()))
        return y.pow(2).mean()


@pytest.fixture
def recorder(monkeypatch):
    monkeypatch.setitem(rule_module._REGISTRY, _Recorder.name, _Recorder)
    monkeypatch.setattr(_Recorder, "seen", [])
    return _Recorder


def _two_blocks(first, second, in_shape=(1, 4, 4)):
    torch.manual_seed(0)
    layers = [
        {"type": "flatten"},
        {"type": "linear", "out": 6},
        {"type": "relu"},
        {"type": "linear", "out": 4},
    ]
    return Network.from_config(
        {
            "layers": layers,
            "split": [3],
            "blocks": [{"rule": {"name": first}}, {"rule": {"name": second}}],
            "optimizer": {"name": "sgd", "lr": 0.01},
        },
        in_shape,
        3,
    )


def _data(n=10):
    g = torch.Generator().manual_seed(0)
    return torch.rand(n, 1, 4, 4, generator=g), torch.randint(0, 3, (n,), generator=g)


@pytest.mark.parametrize("mode", ["simultaneous", "sequential", "reference"])
def test_batch_is_doubled_only_when_a_rule_asks(recorder, mode):
    x, y = _data()
    cfg = SchedulerConfig(mode=mode, epochs=1, batch_size=4, reference_loss="all")

    # no rule needs negatives: the recorder sees the plain minibatches
    Trainer(_two_blocks("test_ff_recorder", "test_ff_recorder"), cfg, x, y).run()
    assert sorted(len(lab) for _, lab in recorder.seen) == [2, 2, 4, 4, 4, 4]

    # the first block is Forward-Forward: the second sees [x; negatives]
    recorder.seen.clear()
    Trainer(_two_blocks("ff", "test_ff_recorder"), cfg, x, y).run()
    assert sorted(len(lab) for _, lab in recorder.seen) == [4, 8, 8]
    for inp, labels in recorder.seen:
        half = len(labels) // 2
        assert torch.equal(labels[:half], labels[half:])
        assert len(inp) == len(labels)


def test_negatives_are_built_from_raw_inputs_and_reproducible():
    x, y = _data(6)
    net = _two_blocks("ff", "ff")
    trainer = Trainer(net, SchedulerConfig(epochs=1, batch_size=6), x, y, seed=5)
    pos = Position(stage=0, epoch=2, step=7)
    both, labels = trainer.with_negatives(x, y, pos)
    assert both.shape == (12, 1, 4, 4)
    assert torch.equal(both[:6], x) and torch.equal(labels, torch.cat([y, y]))
    assert not torch.equal(both[6:], x)
    again, _ = trainer.with_negatives(x, y, Position(stage=0, epoch=2, step=7))
    assert torch.equal(again, both)
    other, _ = trainer.with_negatives(x, y, Position(stage=0, epoch=2, step=8))
    assert not torch.equal(other, both)


def test_a_resumed_run_ends_where_an_uninterrupted_one_does():
    x, y = _data(12)
    cfg = SchedulerConfig(epochs=2, batch_size=4)
    full = _two_blocks("ff", "ff")
    Trainer(full, cfg, x, y, seed=1).run()
    half = _two_blocks("ff", "ff")
    saved = {}

    def stop(pos):
        saved["state"] = {k: v.clone() for k, v in half.state_dict().items()}
        saved["opt"] = {n: b.optimizer.state_dict() for n, b in half.blocks.items()}
        saved["pos"] = Position(pos.stage, pos.epoch, pos.step)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        Trainer(half, cfg, x, y, seed=1, on_epoch=stop).run()
    resumed = _two_blocks("ff", "ff")
    resumed.load_state_dict(saved["state"])
    for n, state in saved["opt"].items():
        resumed.blocks[n].optimizer.load_state_dict(state)
    Trainer(resumed, cfg, x, y, seed=1).run(saved["pos"])
    for (k, a), b in zip(
        full.state_dict().items(), resumed.state_dict().values(), strict=True
    ):
        assert torch.allclose(a, b), k


def test_cached_mode_is_refused():
    x, y = _data()
    net = _two_blocks("ff", "ff")
    with pytest.raises(
        ConfigError,
        match=r"scheduler.mode=cached cannot train block 'block1' \(rule 'ff'\), "
        r"'block2' \(rule 'ff'\): the rule draws fresh negative data every step.*"
        r"use scheduler.mode=sequential",
    ):
        Trainer(net, SchedulerConfig(mode="cached"), x, y)


def test_blocks_that_disagree_on_negatives_are_refused():
    torch.manual_seed(0)
    net = Network.from_config(
        {
            "layers": [{"type": "flatten"}, {"type": "linear", "out": 4}],
            "split": [1],
            "blocks": [
                {"rule": {"name": "ff", "negative": "hybrid"}},
                {"rule": {"name": "ff", "negative": "shuffle"}},
            ],
        },
        (1, 4, 4),
        3,
    )
    with pytest.raises(
        ConfigError,
        match="block 'block1' uses 'hybrid', block 'block2' uses 'shuffle'",
    ):
        Trainer(net, SchedulerConfig(), *_data())


def test_reference_mode_differentiates_the_last_ff_loss_through_every_block():
    x, y = _data(8)
    net = _two_blocks("ff", "ff")
    before = {k: v.clone() for k, v in net.state_dict().items()}
    cfg = SchedulerConfig(mode="reference", epochs=1, batch_size=8)
    Trainer(net, cfg, x, y).run()
    for k, v in net.state_dict().items():
        assert not torch.equal(v, before[k]), f"{k} did not move"


# -- learning -----------------------------------------------------------------


def test_ff_network_learns_to_separate_digits_from_shuffled_ones(digits):
    torch.manual_seed(0)
    net = Network.from_config(
        {
            "layers": [
                {"type": "flatten"},
                {"type": "linear", "out": 64},
                {"type": "relu"},
                {"type": "l2norm"},
                {"type": "linear", "out": 64},
                {"type": "relu"},
            ],
            "split": [3],
            "rule": {"name": "ff", "negative": "shuffle"},
            "optimizer": {"name": "adam", "lr": 0.01},
        },
        tuple(digits.x_train.shape[1:]),
        10,
    )
    history = (
        Trainer(
            net,
            SchedulerConfig(epochs=6, batch_size=64),
            digits.x_train,
            digits.y_train,
        )
        .run()
        .history
    )
    first, last = history[0]["diagnostics"], history[-1]["diagnostics"]
    for block in ("block1", "block2"):
        gap_first = first[block]["goodness_pos"] - first[block]["goodness_neg"]
        gap_last = last[block]["goodness_pos"] - last[block]["goodness_neg"]
        assert gap_last > gap_first + 1.0, (block, gap_first, gap_last)
        assert last[block]["accuracy"] > 0.85, (block, last[block])
    loss = [h["loss"]["block1"] for h in history]
    assert loss[-1] < loss[0]


def test_threshold_and_symba_losses_are_differentiable_inside_the_block():
    y = torch.randn(4, 3, requires_grad=True)
    for options in ({}, {"loss": "symba"}):
        rule = _rule(options, out_shape=(3,))
        (grad,) = torch.autograd.grad(rule.loss(None, y), y)
        assert torch.isfinite(grad).all() and grad.abs().sum() > 0
    # softplus written out agrees with torch's on the symba loss
    g_pos, g_neg = torch.tensor([1.0, 2.0]), torch.tensor([3.0, 0.5])
    assert symba_loss(g_pos, g_neg, 4.0).item() == pytest.approx(
        F.softplus(-4.0 * (g_pos - g_neg)).mean().item()
    )
