"""Tests for SoftHebb: soft winner-take-all Hebbian plasticity."""

import math
import re

import numpy as np
import pytest
import torch
from plugins import plasticity_network

from localearn.errors import ConfigError
from localearn.rule import make_rule
from localearn.rules.softhebb import (
    adaptive_rate,
    anti_hebbian,
    soft_wta,
    softhebb_delta,
)
from localearn.schedulers import Position, SchedulerConfig, Trainer


def network(layers, in_shape, lr=0.01, split=None, **options):
    return plasticity_network("softhebb", layers, in_shape, lr, split, **options)


def delta_of(net, x):
    block = net.blocks["block1"]
    with torch.no_grad():
        y = block.rule.forward_train(block.body, x)
        return block.rule.update(block.body, x, y)[block.rule.site.param]


def softhebb_loop(x, w, temperature, anti, power):
    """The rule one sample at a time, then max-scaled and rate-scaled."""
    change = np.zeros_like(w)
    for v in x:
        u = w @ v
        y = np.exp(u / temperature) / np.exp(u / temperature).sum()
        if anti:
            y = np.where(np.arange(len(u)) == np.argmax(u), y, -y)
        for k in range(len(w)):
            change[k] += y[k] * (v - u[k] * w[k])
    change /= np.abs(change).max()
    rate = (np.abs(np.linalg.norm(w, axis=1) - 1) + 1e-10) ** power
    return rate[:, None] * change


# ---------------------------------------------------------------------------
# equations
# ---------------------------------------------------------------------------


def test_hand_computed_step():
    # two units (2, 0) and (0, 1), one sample (1, 0), temperature 1:
    # u = (2, 0), y = softmax(u) = (e^2, 1) / (e^2 + 1) = (a, 1 - a);
    # unit 1 wins: dw1 = a ((1, 0) - 2 (2, 0)) = a (-3, 0);
    # unit 2 loses, anti-Hebbian: dw2 = -(1 - a) ((1, 0) - 0) = (a - 1, 0);
    # scaled by max |dw| = 3a, then by sqrt(|norm - 1|) = (1, 0) for norms (2, 1)
    a = math.exp(2) / (math.exp(2) + 1)
    net = network([{"type": "linear", "out": 2, "bias": False}], (2,))
    with torch.no_grad():
        net.blocks["block1"].body[0].weight.copy_(
            torch.tensor([[2.0, 0.0], [0.0, 1.0]])
        )
    delta = delta_of(net, torch.tensor([[1.0, 0.0]]))
    assert torch.allclose(delta, torch.tensor([[-1.0, 0.0], [0.0, 0.0]]), atol=1e-5)

    # the same step without the adaptive rate keeps the loser's change
    net = network([{"type": "linear", "out": 2, "bias": False}], (2,), rate_power=0.0)
    with torch.no_grad():
        net.blocks["block1"].body[0].weight.copy_(
            torch.tensor([[2.0, 0.0], [0.0, 1.0]])
        )
    delta = delta_of(net, torch.tensor([[1.0, 0.0]]))
    want = torch.tensor([[-1.0, 0.0], [(a - 1) / (3 * a), 0.0]])
    assert torch.allclose(delta, want, atol=1e-6)


def test_soft_wta_and_anti_hebbian_signs():
    u = torch.tensor([[1.0, 3.0, 2.0]])
    y = soft_wta(u, 0.5)
    assert torch.allclose(y.sum(1), torch.ones(1))
    assert torch.allclose(y, torch.softmax(u * 2, dim=1))
    signed = anti_hebbian(y, u)
    assert (signed[0, 1] > 0) and (signed[0, [0, 2]] < 0).all()
    assert torch.allclose(signed.abs(), y)


@pytest.mark.parametrize("temperature", [1.0, 0.3])
@pytest.mark.parametrize("anti", [True, False])
@pytest.mark.parametrize("power", [0.5, 0.0])
def test_update_matches_loop(temperature, anti, power):
    gen = np.random.default_rng(1)
    x, w = gen.normal(size=(7, 5)), gen.normal(size=(4, 5))
    net = network(
        [{"type": "linear", "out": 4, "bias": False}],
        (5,),
        temperature=temperature,
        anti_hebbian=anti,
        rate_power=power,
    )
    with torch.no_grad():
        net.blocks["block1"].body[0].weight.copy_(torch.tensor(w))
    got = delta_of(net, torch.tensor(x, dtype=torch.float32))
    want = softhebb_loop(x, w, temperature, anti, power)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-4, atol=1e-6)


def test_conv_block_uses_every_patch_with_softmax_over_channels():
    layers = [{"type": "conv", "out": 4, "kernel": 3, "padding": 1, "bias": False}]
    net = network(layers, (2, 5, 5))
    x = torch.randn(2, 2, 5, 5)
    delta = delta_of(net, x)

    # patches by explicit indexing of the zero-padded input
    padded = np.pad(x.numpy(), [(0, 0), (0, 0), (1, 1), (1, 1)])
    patches = [
        padded[b, :, i : i + 3, j : j + 3].ravel()
        for b in range(2)
        for i in range(5)
        for j in range(5)
    ]
    w = net.blocks["block1"].body[0].weight.detach().numpy()
    want = softhebb_loop(np.array(patches), w.reshape(4, -1), 1.0, True, 0.5)
    np.testing.assert_allclose(
        delta.numpy(), want.reshape(w.shape), rtol=1e-4, atol=1e-6
    )


def test_pure_update_is_max_scaled():
    x, w = torch.randn(9, 3), torch.randn(5, 3)
    u = x @ w.T
    change = softhebb_delta(x, u, w, soft_wta(u, 1.0))
    assert change.abs().max().item() == pytest.approx(1.0)
    assert adaptive_rate(torch.tensor([[0.0, 1.0]]), 0.5).item() == pytest.approx(1e-5)


# ---------------------------------------------------------------------------
# convergence
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "layers, options",
    [
        # the ICLR 2023 form: centred inputs, anti-Hebbian losers, large start
        (
            [
                {"type": "flatten"},
                {"type": "batchnorm", "affine": False},
                {"type": "linear", "out": 8, "bias": False},
            ],
            {"init_radius": 4.0},
        ),
        # the original soft winner-take-all on raw pixels
        ([{"type": "linear", "out": 8, "bias": False}], {"anti_hebbian": False}),
    ],
    ids=["anti-hebbian", "original"],
)
def test_weight_norms_converge_to_one(digits, layers, options):
    net = network(layers, (1, 8, 8), lr=0.05, **options)
    rule = net.blocks["block1"].rule
    start = rule.diagnostics()
    if "init_radius" in options:
        assert start["weight_norm_min"] == pytest.approx(4.0)
    cfg = SchedulerConfig(epochs=4, batch_size=32, audit_steps=0)
    Trainer(net, cfg, digits.x_train, digits.y_train).run()
    diag = rule.diagnostics()
    assert abs(diag["weight_norm_min"] - 1) < 0.02
    assert abs(diag["weight_norm_max"] - 1) < 0.02
    assert diag["units_ever_won"] == 1.0


# ---------------------------------------------------------------------------
# networks
# ---------------------------------------------------------------------------

BLOCKS = {
    "linear": (
        [{"type": "linear", "out": 16, "bias": False}, {"type": "relu"}],
        [{"type": "linear", "out": 8, "bias": False}],
    ),
    "conv": (
        [
            {"type": "batchnorm", "affine": False},
            {"type": "conv", "out": 8, "kernel": 5, "bias": False},
            {"type": "relu"},
            {"type": "power", "n": 0.7},
            {"type": "maxpool", "kernel": 4, "stride": 2, "padding": 1},
        ],
        [
            {"type": "batchnorm", "affine": False},
            {"type": "conv", "out": 12, "bias": False},
            {"type": "relu"},
        ],
    ),
}


@pytest.mark.parametrize("kind", ["linear", "conv"])
def test_two_block_network_trains_each_block_alone(digits, kind):
    first, second = BLOCKS[kind]
    net = network([*first, *second], (1, 8, 8), split=[len(first)])
    x, y = digits.x_train[:256], digits.y_train[:256]
    trainer = Trainer(
        net, SchedulerConfig(epochs=1, batch_size=32, audit_steps=-1), x, y
    )
    names = {n: f"blocks.{n}.body.{net.blocks[n].rule.site.param}" for n in net.order}
    before = {n: p.detach().clone() for n, p in net.named_parameters()}

    trainer.step(torch.arange(32), ["block1"], None, True, Position())
    changed = {n for n, p in net.named_parameters() if not torch.equal(p, before[n])}
    assert changed == {names["block1"]}

    trainer.run()
    assert not torch.equal(net.get_parameter(names["block2"]), before[names["block2"]])
    for name in net.order:
        diag = net.blocks[name].rule.diagnostics()
        assert all(isinstance(v, float) and math.isfinite(v) for v in diag.values())


def test_conv_receptive_fields():
    net = network([{"type": "conv", "out": 6, "kernel": 5, "bias": False}], (3, 12, 12))
    block = net.blocks["block1"]
    assert tuple(block.rule.receptive_fields(block.body).shape) == (6, 3, 5, 5)


# ---------------------------------------------------------------------------
# refused configurations
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "options, message",
    [
        ({"temperature": 0.0}, "rule 'softhebb': temperature must be > 0, got 0.0"),
        ({"rate_power": -0.5}, "rule 'softhebb': rate_power must be >= 0, got -0.5"),
        ({"init_radius": -1.0}, "rule 'softhebb': init_radius must be >= 0, got -1.0"),
        ({"tau": 1.0}, "rule 'softhebb' has no hyperparameter 'tau'"),
    ],
)
def test_bad_hyperparameters_are_refused(options, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        make_rule("softhebb", options)


def test_bias_is_refused_with_the_fix():
    message = "build the layer with bias: false"
    with pytest.raises(ConfigError, match=re.escape(message)):
        network([{"type": "conv", "out": 4}], (1, 8, 8))
