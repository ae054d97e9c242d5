"""Tests for Krotov and Hopfield's competing hidden units."""

import re

import numpy as np
import pytest
import torch
from plugins import plasticity_network

from localearn.errors import ConfigError
from localearn.rule import make_rule
from localearn.rules.krotov import krotov_currents, krotov_delta, ranking
from localearn.schedulers import Position, SchedulerConfig, Trainer


def network(layers, in_shape, lr=0.01, split=None, **options):
    return plasticity_network("krotov", layers, in_shape, lr, split, **options)


def krotov_loop(x, w, p, k, delta, prec=1e-30):
    """The rule one sample at a time: rank, then g (v - I W), then max-scale."""
    change = np.zeros_like(w)
    for v in x:
        currents = np.array(
            [np.sum(np.sign(row) * np.abs(row) ** (p - 1) * v) for row in w]
        )
        order = np.argsort(-currents, kind="stable")
        g = np.zeros(len(w))
        g[order[0]] = 1.0
        g[order[k - 1]] = -delta
        for mu in range(len(w)):
            change[mu] += g[mu] * (v - currents[mu] * w[mu])
    return change / max(np.abs(change).max(), prec)


# ---------------------------------------------------------------------------
# equations
# ---------------------------------------------------------------------------


def test_hand_computed_step():
    # units e1 and e2 on the unit sphere, samples e1 and e2, k = 2:
    # sample e1: unit 1 wins (I = 1), unit 2 is 2nd (I = 0) and gets -0.4 e1;
    # the winner's change e1 - 1 * e1 = 0. Symmetrically for e2.
    x = torch.eye(3)[:2]
    w = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    change = krotov_delta(x, krotov_currents(x, w, 3.0), w, k=2, delta=0.4)
    assert torch.allclose(change, torch.tensor([[0.0, -1.0, 0.0], [-1.0, 0.0, 0.0]]))


def test_currents_use_the_p_norm_geometry():
    # <W, v>_3 = sum sign(W) |W|^2 v: (-2)^2 * -1 * 1 + 3^2 * 2 = -4 + 18
    w = torch.tensor([[-2.0, 3.0]])
    assert krotov_currents(torch.tensor([[1.0, 2.0]]), w, 3.0).item() == 14.0
    assert krotov_currents(torch.tensor([[1.0, 2.0]]), w, 2.0).item() == 4.0
    assert krotov_currents(torch.tensor([[1.0, 2.0]]), w, 4.5).item() == pytest.approx(
        -(2**3.5) + 2 * 3**3.5
    )


def test_ranking_picks_winner_and_kth():
    currents = torch.tensor([[0.3, 0.9, -1.0, 0.5], [2.0, 0.0, 1.0, 3.0]])
    winners, kth = ranking(currents, 3)
    assert winners.tolist() == [1, 3]
    assert kth.tolist() == [0, 2]


@pytest.mark.parametrize("p, k, delta", [(3.0, 2, 0.4), (2.0, 4, 0.1), (4.5, 7, 0.4)])
def test_update_matches_loop(p, k, delta):
    gen = np.random.default_rng(0)
    x, w = gen.normal(size=(6, 5)), gen.normal(size=(9, 5))
    xt, wt = torch.tensor(x), torch.tensor(w)
    got = krotov_delta(xt, krotov_currents(xt, wt, p), wt, k, delta)
    np.testing.assert_allclose(got.numpy(), krotov_loop(x, w, p, k, delta), rtol=1e-9)


def test_conv_block_learns_filters_from_patches():
    layers = [{"type": "conv", "out": 5, "kernel": 3, "stride": 2, "bias": False}]
    net = network(layers, (2, 7, 7), k=3)
    block = net.blocks["block1"]
    x = torch.randn(2, 2, 7, 7)
    with torch.no_grad():
        y = block.rule.forward_train(block.body, x)
        delta = block.rule.update(block.body, x, y)["0.weight"]

    # patches by explicit indexing: 3x3 windows every 2 pixels
    patches = [
        x[b, :, i : i + 3, j : j + 3].reshape(-1).numpy()
        for b in range(2)
        for i in range(0, 5, 2)
        for j in range(0, 5, 2)
    ]
    w = block.body[0].weight.detach().numpy()
    want = krotov_loop(np.array(patches), w.reshape(5, -1), 3.0, 3, 0.4)
    np.testing.assert_allclose(
        delta.numpy(), want.reshape(w.shape), rtol=1e-4, atol=1e-6
    )


def test_update_is_scaled_by_its_largest_entry():
    x, w = torch.randn(20, 6), torch.randn(8, 6)
    change = krotov_delta(x, krotov_currents(x, w, 3.0), w, k=2)
    assert change.abs().max().item() == pytest.approx(1.0)
    # below prec the change is divided by prec instead
    still = krotov_delta(x * 0, krotov_currents(x * 0, w, 3.0), w, k=2, prec=1.0)
    assert torch.equal(still, torch.zeros_like(w))


# ---------------------------------------------------------------------------
# convergence
# ---------------------------------------------------------------------------


def test_units_converge_to_the_p_sphere(digits):
    layers = [{"type": "linear", "out": 10, "bias": False}]
    net = network(layers, (1, 8, 8), lr=0.05, p=3.0, k=2, delta=0.4, init_std=0.1)
    rule = net.blocks["block1"].rule
    assert rule.diagnostics()["weight_norm_max"] < 0.7
    cfg = SchedulerConfig(epochs=6, batch_size=50, audit_steps=0)
    Trainer(net, cfg, digits.x_train, digits.y_train).run()
    diag = rule.diagnostics()
    assert diag["units_ever_won"] > 0.2
    assert abs(diag["weight_norm_min"] - 1) < 0.01
    assert abs(diag["weight_norm_max"] - 1) < 0.01


def test_paper_initialisation_is_standard_normal():
    net = network([{"type": "linear", "out": 200, "bias": False}], (1, 28, 28))
    w = net.blocks["block1"].body[0][1].weight.detach()
    assert abs(float(w.mean())) < 0.01 and abs(float(w.std()) - 1) < 0.01
    kept = network(
        [{"type": "linear", "out": 200, "bias": False}], (1, 28, 28), init_std=0.0
    )
    assert float(kept.blocks["block1"].body[0][1].weight.detach().abs().max()) < 0.04


# ---------------------------------------------------------------------------
# networks
# ---------------------------------------------------------------------------

BLOCKS = {
    "linear": (
        [
            {"type": "linear", "out": 16, "bias": False},
            {"type": "relu"},
            {"type": "power", "n": 4.5},
        ],
        [{"type": "linear", "out": 8, "bias": False}],
    ),
    "conv": (
        [
            {"type": "conv", "out": 8, "kernel": 3, "bias": False},
            {"type": "relu"},
            {"type": "maxpool"},
        ],
        [{"type": "conv", "out": 8, "bias": False}, {"type": "relu"}],
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

    trainer.step(torch.arange(32), ["block2"], None, True, Position())
    changed = {n for n, p in net.named_parameters() if not torch.equal(p, before[n])}
    assert changed == {names["block2"]}

    trainer.run()
    assert not torch.equal(net.get_parameter(names["block1"]), before[names["block1"]])
    diag = net.blocks["block1"].rule.diagnostics()
    assert set(diag) >= {"weight_norm_mean", "units_ever_won", "dead_units"}
    assert 0 < diag["units_ever_won"] <= 1


def test_receptive_fields_of_mnist_units():
    net = network([{"type": "linear", "out": 20, "bias": False}], (1, 28, 28))
    block = net.blocks["block1"]
    assert tuple(block.rule.receptive_fields(block.body).shape) == (20, 1, 28, 28)


# ---------------------------------------------------------------------------
# refused configurations
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "options, message",
    [
        ({"p": 1.5}, "rule 'krotov': p must be >= 2, got 1.5"),
        (
            {"k": 1},
            "rule 'krotov': k must be >= 2 (rank of the unit pushed away), got 1",
        ),
        ({"delta": -0.4}, "rule 'krotov': delta must be >= 0, got -0.4"),
        ({"prec": 0.0}, "rule 'krotov': prec must be > 0, got 0.0"),
        ({"init_std": -1.0}, "rule 'krotov': init_std must be >= 0, got -1.0"),
        (
            {"k": "seven"},
            "rule 'krotov': Value 'seven' of type 'str' could not be converted",
        ),
    ],
)
def test_bad_hyperparameters_are_refused(options, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        make_rule("krotov", options)


def test_k_past_the_units_is_refused():
    message = (
        "rule 'krotov' of block 'block1': k=7 ranks past the 5 units of layer '0'; "
        "use k <= 5 or more units"
    )
    with pytest.raises(ConfigError, match=re.escape(message)):
        network([{"type": "linear", "out": 5, "bias": False}], (12,))


def test_paper_defaults():
    config = make_rule("krotov").config
    assert (config.p, config.k, config.delta) == (3.0, 7, 0.4)
