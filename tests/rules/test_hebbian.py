"""Tests for the Hebb, Oja and BCM rules and the shared weight-layer plumbing."""

import math
import re

import numpy as np
import pytest
import torch
from scipy.linalg import subspace_angles
from torch import nn

from localearn.errors import ConfigError, DivergenceError
from localearn.network import Network
from localearn.rule import BlockContext, make_rule
from localearn.rules.hebbian import bcm_delta, hebb_delta, oja_delta
from localearn.schedulers import Position, SchedulerConfig, Trainer


def block_of(rule, layers, in_shape, **options):
    """Body and configured rule of a one-block network."""
    net = Network.from_config(
        {
            "layers": layers,
            "rule": {"name": rule, **options},
            "optimizer": {"name": "sgd", "lr": 1.0},
        },
        in_shape=in_shape,
        n_classes=2,
    )
    block = net.blocks["block1"]
    return block.body, block.rule


def delta_of(body, rule, x):
    """One weight change of ``rule`` for the batch ``x``, not applied."""
    with torch.no_grad():
        y = rule.forward_train(body, x)
        return rule.update(body, x, y)


def set_weight(body, w):
    with torch.no_grad():
        next(iter(body.parameters())).copy_(torch.as_tensor(w, dtype=torch.float32))


LINEAR_2 = [{"type": "linear", "out": 1, "bias": False}]


# ---------------------------------------------------------------------------
# equations on hand-computed cases
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "options, expected",
    [
        ({"constraint": "none"}, [[0.5, 2.0]]),
        ({"constraint": "decay", "decay": 0.1}, [[0.4, 1.9]]),
        ({"constraint": "norm"}, [[-0.75, 0.75]]),
    ],
)
def test_hebb_hand_computed(options, expected):
    # w = (1, 1), samples (1, 0) and (0, 2): y = 1, 2; <y x> = (0.5, 2)
    body, rule = block_of("hebb", LINEAR_2, (2,), **options)
    set_weight(body, [[1.0, 1.0]])
    delta = delta_of(body, rule, torch.tensor([[1.0, 0.0], [0.0, 2.0]]))
    assert torch.allclose(delta["0.weight"], torch.tensor(expected))


@pytest.mark.parametrize(
    "form, expected",
    [
        ("single", [[0.0, 1.0], [1.0, 0.0]]),
        ("subspace", [[0.0, 0.0], [0.0, 0.0]]),
        ("gha", [[0.0, 1.0], [0.0, 0.0]]),
    ],
)
def test_oja_hand_computed(form, expected):
    # W = I, one sample (1, 1): y = (1, 1), <y x^T> and <y y^T> are all ones
    layers = [{"type": "linear", "out": 2, "bias": False}]
    body, rule = block_of("oja", layers, (2,), form=form)
    set_weight(body, torch.eye(2))
    delta = delta_of(body, rule, torch.tensor([[1.0, 1.0]]))
    assert torch.allclose(delta["0.weight"], torch.tensor(expected))


def test_bcm_hand_computed_threshold_slides():
    # linear BCM, w = (1, 0); first sample (2, 1): c = 2, theta = c^2 = 4,
    # phi = 2 (2 - 4) = -4, dw = -4 (2, 1); then (1, 0): c = 1,
    # theta = 4 + 0.1 (1 - 4) = 3.7, phi = 1 - 3.7 = -2.7, dw = (-2.7, 0)
    body, rule = block_of("bcm", LINEAR_2, (2,), activation="linear")
    set_weight(body, [[1.0, 0.0]])
    first = delta_of(body, rule, torch.tensor([[2.0, 1.0]]))
    assert torch.allclose(first["0.weight"], torch.tensor([[-8.0, -4.0]]))
    assert torch.allclose(rule.threshold, torch.tensor([4.0]))
    second = delta_of(body, rule, torch.tensor([[1.0, 0.0]]))
    assert torch.allclose(second["0.weight"], torch.tensor([[-2.7, 0.0]]))
    assert torch.allclose(rule.threshold, torch.tensor([3.7]))


# ---------------------------------------------------------------------------
# equations against per-sample numpy loops
# ---------------------------------------------------------------------------


def _sigma(u, activation):
    if activation == "relu":
        return max(u, 0.0), float(u > 0)
    if activation == "sigmoid":
        c = 1 / (1 + math.exp(-u))
        return c, c * (1 - c)
    return u, 1.0


def hebb_loop(x, w, activation, constraint, decay):
    units, dim = w.shape
    h = np.zeros_like(w)
    for sample in x:
        for i in range(units):
            y, _ = _sigma(float(w[i] @ sample), activation)
            h[i] += y * sample / len(x)
    if constraint == "decay":
        return h - decay * w
    if constraint == "norm":
        out = h.copy()
        for i in range(units):
            out[i] -= (h[i] @ w[i]) / (w[i] @ w[i]) * w[i]
        return out
    return h


def oja_loop(x, w, form):
    units = w.shape[0]
    out = np.zeros_like(w)
    for sample in x:
        y = w @ sample
        for i in range(units):
            js = {"single": [i], "subspace": range(units), "gha": range(i + 1)}[form]
            back = sum(y[j] * w[j] for j in js)
            out[i] += y[i] * (sample - back) / len(x)
    return out


def bcm_loop(x, w, activation, theta, decay):
    out = -decay * w
    for sample in x:
        for i in range(w.shape[0]):
            c, slope = _sigma(float(w[i] @ sample), activation)
            out[i] += c * (c - theta[i]) * slope * sample / len(x)
    return out


@pytest.fixture
def tiny():
    gen = np.random.default_rng(3)
    return gen.normal(size=(5, 4)), gen.normal(size=(3, 4))


@pytest.mark.parametrize("activation", ["linear", "relu", "sigmoid"])
@pytest.mark.parametrize("constraint", ["none", "decay", "norm"])
def test_hebb_matches_loop(tiny, activation, constraint):
    x, w = tiny
    layers = [{"type": "linear", "out": 3, "bias": False}]
    body, rule = block_of(
        "hebb", layers, (4,), activation=activation, constraint=constraint, decay=0.3
    )
    set_weight(body, w)
    got = delta_of(body, rule, torch.tensor(x, dtype=torch.float32))["0.weight"]
    want = hebb_loop(x, w, activation, constraint, 0.3)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("form", ["single", "subspace", "gha"])
def test_oja_matches_loop(tiny, form):
    x, w = tiny
    got = oja_delta(*(torch.tensor(a) for a in (x, x @ w.T, w)), form=form)
    np.testing.assert_allclose(got.numpy(), oja_loop(x, w, form), rtol=1e-10)


@pytest.mark.parametrize("activation", ["linear", "relu", "sigmoid"])
def test_bcm_matches_loop_over_two_steps(tiny, activation):
    x, w = tiny
    layers = [{"type": "linear", "out": 3, "bias": False}]
    body, rule = block_of(
        "bcm", layers, (4,), activation=activation, threshold_rate=0.25, decay=0.01
    )
    set_weight(body, w)
    xt = torch.tensor(x, dtype=torch.float32)
    delta_of(body, rule, xt[:2])
    got = delta_of(body, rule, xt[2:])["0.weight"]

    # threshold: <c^2> of the first batch, then a quarter of the way to the second's
    c1 = np.array([[_sigma(float(r @ s), activation)[0] for r in w] for s in x[:2]])
    c2 = np.array([[_sigma(float(r @ s), activation)[0] for r in w] for s in x[2:]])
    theta = (c1**2).mean(0) + 0.25 * ((c2**2).mean(0) - (c1**2).mean(0))
    np.testing.assert_allclose(rule.threshold.numpy(), theta, rtol=1e-5)
    want = bcm_loop(x[2:], w, activation, theta, 0.01)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-4, atol=1e-6)


def test_pure_functions_accept_any_float_dtype(tiny):
    x, w = (torch.tensor(a) for a in tiny)
    y = x @ w.T
    assert hebb_delta(x, y, w).dtype == torch.float64
    assert bcm_delta(x, y, torch.ones_like(y), torch.zeros(3), w).shape == w.shape


# ---------------------------------------------------------------------------
# convolutions: every patch a sample
# ---------------------------------------------------------------------------


def patches_loop(x, kernel, stride, pads, dims):
    """Patches by explicit indexing; ``pads`` per axis as (before, after)."""
    xp = np.pad(x, [(0, 0), (0, 0), *pads])
    rows = []
    if dims == 1:
        length = (xp.shape[2] - kernel) // stride + 1
        for b in range(len(xp)):
            for i in range(length):
                rows.append(xp[b, :, i * stride : i * stride + kernel].ravel())
        return np.array(rows)
    height = (xp.shape[2] - kernel) // stride + 1
    width = (xp.shape[3] - kernel) // stride + 1
    for b in range(len(xp)):
        for i in range(height):
            for j in range(width):
                window = xp[
                    b,
                    :,
                    i * stride : i * stride + kernel,
                    j * stride : j * stride + kernel,
                ]
                rows.append(window.ravel())
    return np.array(rows)


CONVS = [
    # (layer options, input shape, numpy padding per spatial axis, stride, dims)
    ({"kernel": 3, "padding": 1}, (2, 6, 5), [(1, 1), (1, 1)], 1, 2),
    ({"kernel": 3, "stride": 2}, (2, 7, 7), [(0, 0), (0, 0)], 2, 2),
    ({"kernel": 2, "stride": 2, "padding": 1}, (1, 5, 4), [(1, 1), (1, 1)], 2, 2),
    ({"kernel": 3, "padding": 2}, (3, 9), [(2, 2)], 1, 1),
    ({"kernel": 4, "stride": 3}, (2, 11), [(0, 0)], 3, 1),
]


@pytest.mark.parametrize("options, in_shape, pads, stride, dims", CONVS)
def test_conv_update_learns_on_every_patch(options, in_shape, pads, stride, dims):
    layers = [{"type": "conv", "out": 3, "bias": False, **options}, {"type": "relu"}]
    body, rule = block_of("oja", layers, in_shape, form="gha")
    x = torch.randn(2, *in_shape)
    delta = delta_of(body, rule, x)["0.weight"]

    # the currents the rule sees are the convolution's own output
    assert torch.allclose(rule.forward_train(body, x), body[0](x), atol=1e-5)

    # and its change is Sanger's rule with every patch as a sample
    w = body[0].weight.detach().numpy()
    samples = patches_loop(x.numpy(), options["kernel"], stride, pads, dims)
    want = oja_loop(samples, w.reshape(3, -1), "gha").reshape(w.shape)
    np.testing.assert_allclose(delta.numpy(), want, rtol=1e-4, atol=1e-5)


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")
@pytest.mark.parametrize(
    "layer, in_shape",
    [
        (nn.Conv2d(2, 3, 4, padding="same", bias=False), (2, 6, 6)),
        (nn.Conv2d(2, 3, 3, padding=1, padding_mode="reflect", bias=False), (2, 5, 5)),
        (nn.Conv1d(2, 3, 3, padding=1, padding_mode="circular", bias=False), (2, 8)),
        (nn.Conv2d(1, 3, 3, dilation=2, padding=2, bias=False), (1, 7, 7)),
    ],
)
def test_conv_currents_match_torch_padding_modes(layer, in_shape):
    rule = make_rule("hebb")
    body = nn.Sequential(layer, nn.ReLU())
    rule.setup(BlockContext("conv", in_shape, in_shape), body)
    x = torch.randn(2, *in_shape)
    with torch.no_grad():
        assert torch.allclose(rule.forward_train(body, x), layer(x), atol=1e-5)


# ---------------------------------------------------------------------------
# convergence
# ---------------------------------------------------------------------------

EIGENVALUES = torch.tensor(
    [5.0, 3.0, 2.0, 0.5, 0.4, 0.3, 0.2, 0.1], dtype=torch.float64
)


@pytest.fixture(scope="module")
def gaussian():
    """4,000 samples whose sample covariance is exactly Q diag(EIGENVALUES) Q^T."""
    gen = torch.Generator().manual_seed(7)
    q, _ = torch.linalg.qr(torch.randn(8, 8, generator=gen, dtype=torch.float64))
    z = torch.randn(4000, 8, generator=gen, dtype=torch.float64)
    z = z - z.mean(0)
    # whiten the sample exactly, then give it the known covariance
    chol = torch.linalg.cholesky(z.T @ z / len(z))
    z = torch.linalg.solve_triangular(chol, z.T, upper=False).T
    x = z * EIGENVALUES.sqrt() @ q.T
    return x.float(), q


def train_oja(x, units, form):
    net = Network.from_config(
        {
            "layers": [{"type": "linear", "out": units, "bias": False}],
            "rule": {"name": "oja", "form": form},
            "optimizer": {"name": "sgd", "lr": 0.02},
        },
        in_shape=(8,),
        n_classes=2,
    )
    labels = torch.zeros(len(x), dtype=torch.long)
    for lr, epochs in [(0.02, 10), (0.002, 5)]:
        for group in net.blocks["block1"].optimizer.param_groups:
            group["lr"] = lr
        cfg = SchedulerConfig(epochs=epochs, batch_size=100, audit_steps=0)
        Trainer(net, cfg, x, labels, seed=epochs).run()
    return net.blocks["block1"].body[0].weight.detach().double()


def test_oja_single_unit_finds_first_principal_component(gaussian):
    x, q = gaussian
    w = train_oja(x, 1, "single")[0]
    cos = float((w @ q[:, 0]).abs() / w.norm())
    assert math.degrees(math.acos(min(cos, 1.0))) < 1.0
    assert abs(float(w.norm()) - 1) < 0.01


@pytest.mark.parametrize("form", ["subspace", "gha"])
def test_oja_subspace_spans_top_components(gaussian, form):
    x, q = gaussian
    w = train_oja(x, 3, form)
    angles = np.degrees(subspace_angles(w.T.numpy(), q[:, :3].numpy()))
    assert angles.max() < 2.0
    # the units are orthonormal
    assert torch.allclose(w @ w.T, torch.eye(3, dtype=w.dtype), atol=0.02)
    if form == "gha":
        # and Sanger's units are the components themselves, in order
        cos = (w * q[:, :3].T).sum(1).abs()
        assert np.degrees(np.arccos(cos.clamp(max=1).numpy())).max() < 2.0


# ---------------------------------------------------------------------------
# networks, state and diagnostics
# ---------------------------------------------------------------------------

LINEAR_BLOCKS = (
    [{"type": "linear", "out": 12, "bias": False}, {"type": "relu"}],
    [{"type": "linear", "out": 6, "bias": False}],
)
CONV_BLOCKS = (
    [{"type": "conv", "out": 6, "bias": False}, {"type": "relu"}, {"type": "maxpool"}],
    [{"type": "conv", "out": 8, "bias": False}, {"type": "relu"}],
)


def two_blocks(rule, blocks):
    first, second = blocks
    return Network.from_config(
        {
            "layers": [*first, *second],
            "split": [len(first)],
            "rule": rule,
            "optimizer": {"name": "sgd", "lr": 0.01},
        },
        in_shape=(1, 8, 8),
        n_classes=10,
    )


def weights(net):
    return {n: p.detach().clone() for n, p in net.named_parameters()}


RULES = [{"name": "hebb"}, {"name": "oja"}, {"name": "bcm"}]


@pytest.mark.parametrize("rule", RULES, ids=lambda r: r["name"])
@pytest.mark.parametrize("blocks", [LINEAR_BLOCKS, CONV_BLOCKS], ids=["linear", "conv"])
def test_two_block_network_trains_each_block_alone(digits, rule, blocks):
    net = two_blocks(rule, blocks)
    x, y = digits.x_train[:256], digits.y_train[:256]
    trainer = Trainer(
        net, SchedulerConfig(epochs=1, batch_size=32, audit_steps=-1), x, y
    )

    # a step of block1 alone moves block1 and nothing else
    before = weights(net)
    trainer.step(torch.arange(32), ["block1"], None, True, Position())
    after = weights(net)
    changed = {n for n in before if not torch.equal(before[n], after[n])}
    learned = {n: f"blocks.{n}.body.{net.blocks[n].rule.site.param}" for n in net.order}
    assert changed == {learned["block1"]}

    # a whole epoch trains both, every weight finite
    trainer.run()
    final = weights(net)
    second = learned["block2"]
    assert not torch.equal(final[second], before[second])
    assert all(torch.isfinite(p).all() for p in final.values())
    for name in net.order:
        diag = net.blocks[name].rule.diagnostics()
        assert diag and all(isinstance(v, float) for v in diag.values())


@pytest.mark.parametrize("rule", RULES, ids=lambda r: r["name"])
def test_batch_of_one(rule, digits):
    net = two_blocks(rule, CONV_BLOCKS)
    x, y = digits.x_train[:1], digits.y_train[:1]
    Trainer(net, SchedulerConfig(epochs=1, batch_size=1, audit_steps=-1), x, y).run()


def test_state_survives_a_checkpoint(digits):
    net = two_blocks({"name": "bcm"}, LINEAR_BLOCKS)
    cfg = SchedulerConfig(epochs=1, batch_size=64, audit_steps=0)
    Trainer(net, cfg, digits.x_train[:256], digits.y_train[:256]).run()
    twin = two_blocks({"name": "bcm"}, LINEAR_BLOCKS)
    twin.load_state_dict(net.state_dict())
    rule, copy = net.blocks["block1"].rule, twin.blocks["block1"].rule
    assert float(rule.threshold.abs().sum()) > 0
    for name in ("threshold", "win_counts", "active_counts", "samples_seen"):
        assert torch.equal(getattr(rule, name), getattr(copy, name))
    assert int(copy.samples_seen) == 256
    assert copy.diagnostics() == rule.diagnostics()


def test_diagnostics_count_winners_and_dead_units():
    body, rule = block_of("oja", [{"type": "linear", "out": 3, "bias": False}], (2,))
    set_weight(body, [[1.0, 0.0], [0.0, 1.0], [-1.0, -1.0]])
    delta_of(body, rule, torch.tensor([[1.0, 0.0], [2.0, 0.0], [0.0, 1.0]]))
    diag = rule.diagnostics()
    assert diag["units_ever_won"] == pytest.approx(2 / 3)
    assert diag["win_share_max"] == pytest.approx(2 / 3)
    assert diag["units_never_active"] == pytest.approx(1 / 3)
    assert diag["dead_units"] == pytest.approx(1 / 3)
    assert diag["weight_norm_max"] == pytest.approx(math.sqrt(2))
    assert diag["weight_norm_min"] == pytest.approx(1.0)


@pytest.mark.parametrize(
    "layers, in_shape, shape",
    [
        ([{"type": "linear", "out": 5, "bias": False}], (1, 28, 28), (5, 1, 28, 28)),
        ([{"type": "linear", "out": 5, "bias": False}], (2, 9), (5, 2, 1, 9)),
        ([{"type": "linear", "out": 5, "bias": False}], (7,), (5, 1, 1, 7)),
        (
            [{"type": "conv", "out": 4, "kernel": 5, "bias": False}],
            (3, 8, 8),
            (4, 3, 5, 5),
        ),
        (
            [{"type": "conv", "out": 4, "kernel": 3, "bias": False}],
            (2, 16),
            (4, 2, 1, 3),
        ),
    ],
)
def test_receptive_fields(layers, in_shape, shape):
    body, rule = block_of("hebb", layers, in_shape)
    fields = rule.receptive_fields(body)
    assert tuple(fields.shape) == shape
    assert torch.equal(fields.flatten(), next(body.parameters()).detach().flatten())


def test_nan_input_is_not_hidden(digits):
    net = two_blocks({"name": "oja"}, LINEAR_BLOCKS)
    x = digits.x_train[:32].clone()
    x[3, 0, 2, 2] = float("nan")
    trainer = Trainer(
        net, SchedulerConfig(epochs=1, batch_size=32), x, digits.y_train[:32]
    )
    with pytest.raises(DivergenceError, match="rule 'oja'"):
        trainer.run()


# ---------------------------------------------------------------------------
# refused configurations
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "rule, options, message",
    [
        (
            "hebb",
            {"activation": "tanh"},
            "rule 'hebb': activation must be one of linear, relu, sigmoid, got 'tanh'",
        ),
        (
            "hebb",
            {"constraint": "clip"},
            "rule 'hebb': constraint must be one of none, decay, norm, got 'clip'",
        ),
        ("hebb", {"decay": -0.1}, "rule 'hebb': decay must be >= 0, got -0.1"),
        (
            "oja",
            {"form": "pca"},
            "rule 'oja': form must be one of single, subspace, gha, got 'pca'",
        ),
        (
            "bcm",
            {"threshold_rate": 0.0},
            "rule 'bcm': threshold_rate must be in (0, 1], got 0.0",
        ),
        (
            "bcm",
            {"threshold_rate": 1.5},
            "rule 'bcm': threshold_rate must be in (0, 1], got 1.5",
        ),
        ("bcm", {"decay": -1.0}, "rule 'bcm': decay must be >= 0, got -1.0"),
        (
            "bcm",
            {"activation": "step"},
            "rule 'bcm': activation must be one of linear, relu, sigmoid, got 'step'",
        ),
        ("oja", {"eta": 0.1}, "rule 'oja' has no hyperparameter 'eta'; valid: form"),
    ],
)
def test_bad_hyperparameters_are_refused(rule, options, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        make_rule(rule, options)


@pytest.mark.parametrize(
    "layers, message",
    [
        (
            [{"type": "relu"}],
            "rule 'hebb' of block 'block1' needs exactly one weight layer "
            "(Linear, Conv1d or Conv2d) in its body, found 0: none (body: ReLU)",
        ),
        (
            [
                {"type": "conv", "out": 4, "bias": False},
                {"type": "relu"},
                {"type": "conv", "out": 4, "bias": False},
            ],
            "found 2: '0' (Conv2d), '2' (Conv2d)",
        ),
        (
            [{"type": "residual", "out": 4, "norm": "none"}],
            "found 3: '0.convs.0' (Conv2d)",
        ),
        (
            [{"type": "linear", "out": 4}],
            "rule 'hebb' of block 'block1' learns only the weight of layer '0.1' "
            "(Linear), but the body has other trainable parameters: 0.1.bias; build "
            "the layer with bias: false",
        ),
        (
            [{"type": "batchnorm"}, {"type": "conv", "out": 4, "bias": False}],
            "other trainable parameters: 0.weight, 0.bias",
        ),
    ],
)
def test_bodies_without_one_weight_layer_are_refused(layers, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        block_of("hebb", layers, (2, 6, 6))


@pytest.mark.parametrize(
    "layer, message",
    [
        (nn.Conv2d(4, 4, 3, groups=2, bias=False), "grouped convolution (groups=2)"),
        (nn.Conv3d(4, 4, 3, bias=False), "the body has '0' (Conv3d)"),
    ],
)
def test_unsupported_convolutions_are_named(layer, message):
    rule = make_rule("oja")
    with pytest.raises(NotImplementedError, match=re.escape(message)):
        rule.setup(BlockContext("conv", (4, 6, 6), (4, 4, 4)), nn.Sequential(layer))
