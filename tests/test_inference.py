"""The inference loop of energy rules: relaxation, messages, weight updates."""

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from localearn.errors import ConfigError, DivergenceError, IsolationError
from localearn.inference import InferenceOptions, Path, gaussian_energy, relax_and_learn
from localearn.network import Network
from localearn.schedulers import Position, SchedulerConfig, Trainer

MLP = [
    {"type": "linear", "out": 12},
    {"type": "tanh"},
    {"type": "linear", "out": 9},
    {"type": "gelu"},
    {"type": "linear", "out": 5},
]
CONV = [
    {"type": "conv", "out": 3},
    {"type": "gelu"},
    {"type": "conv", "out": 4, "stride": 2},
    {"type": "tanh"},
    {"type": "flatten"},
    {"type": "linear", "out": 5},
]
SHAPES = {"mlp": (7,), "conv": (1, 6, 6)}


def _net(layers="mlp", lr=1.0, **rule):
    torch.manual_seed(0)
    spec = {
        "layers": MLP if layers == "mlp" else CONV,
        "split": [2, 4],
        "rule": {"name": "pc", **rule},
        "optimizer": {"name": "sgd", "lr": lr},
    }
    return Network.from_config(spec, SHAPES[layers], 5).double()


def _batch(layers="mlp", n=6):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(n, *SHAPES[layers], generator=g, dtype=torch.float64)
    return x, torch.randint(0, 5, (n,), generator=g)


def _relax(net, x, labels, audit=True):
    return relax_and_learn(
        net,
        net.order,
        x,
        labels,
        audit,
        net.block_of_parameter(),
        Position(step=7, epoch=1),
    )


def _updates(net, x, labels):
    """What one relax-and-learn step takes off the weights (SGD, lr 1: the gradient)."""
    before = {k: v.clone() for k, v in net.state_dict().items()}
    _relax(net, x, labels)
    return {k: before[k] - v for k, v in net.state_dict().items()}


def _by_autograd(net, x, labels, steps, lr, incremental=False):
    """The same relaxation written from the equations, by autograd on the energy.

    Each sample's state descends its own energy: B times the gradient of the
    batch-mean energy. Returns the weight gradients (summed over steps in the
    incremental variant), which is what SGD with lr 1 takes off the weights.
    """
    blocks = [net.blocks[n] for n in net.order]
    params = [list(b.parameters()) for b in blocks]
    with torch.no_grad():
        states, below = [], x
        for b in blocks:
            below = b.body(below)
            states.append(below)
    supervised = blocks[-1].rule.config.mode == "supervised"
    if supervised:
        states[-1] = F.one_hot(labels, 5).to(x.dtype)
    free = len(states) - 1 if supervised else len(states)
    moved = {id(p): torch.zeros_like(p) for ps in params for p in ps}
    for step in range(steps + (0 if incremental else 1)):
        zs = [s.detach().requires_grad_(i < free) for i, s in enumerate(states)]
        energies = [
            b.rule.energy(b.body, x if i == 0 else zs[i - 1], zs[i])
            for i, b in enumerate(blocks)
        ]
        last = step == steps and not incremental
        if not last:
            grads = torch.autograd.grad(sum(energies), zs[:free], retain_graph=True)
            states = [
                (z - lr * len(x) * g).detach() for z, g in zip(zs, grads, strict=False)
            ]
            states += [s.detach() for s in zs[free:]]
        if incremental or last:
            changes = [
                torch.autograd.grad(e, ps)
                for e, ps in zip(energies, params, strict=True)
            ]
            with torch.no_grad():
                for ps, gs in zip(params, changes, strict=True):
                    for p, g in zip(ps, gs, strict=True):
                        moved[id(p)] += g
                        if incremental:
                            p -= g
    if incremental:
        with torch.no_grad():
            for ps in params:
                for p in ps:
                    p += moved[id(p)]
    names = {id(p): n for n, p in net.named_parameters()}
    return {names[k]: v for k, v in moved.items()}


def _rel(a: dict, b: dict) -> float:
    flat_a = torch.cat([a[k].flatten() for k in sorted(a)])
    flat_b = torch.cat([b[k].flatten() for k in sorted(b)])
    return float((flat_a - flat_b).norm() / flat_b.norm())


# -- the loop against the equations ------------------------------------------


@pytest.mark.parametrize("layers", ["mlp", "conv"])
@pytest.mark.parametrize("mode", ["supervised", "generative"])
def test_relaxation_and_update_equal_autograd_on_the_energy(layers, mode):
    rule = {
        "mode": mode,
        "inference_steps": 6,
        "inference_lr": 0.05,
        "inference_backoff": 1.0,
    }
    x, labels = _batch(layers)
    got = _updates(_net(layers, **rule), x, labels)
    want = _by_autograd(_net(layers, **rule), x, labels, steps=6, lr=0.05)
    assert _rel(got, want) < 1e-9


def test_incremental_variant_updates_the_weights_at_every_step():
    rule = {
        "inference_steps": 4,
        "inference_lr": 0.05,
        "inference_backoff": 1.0,
        "incremental": True,
    }
    x, labels = _batch()
    net = _net(lr=0.1, **rule)
    calls = []
    for block in net.blocks.values():
        block.optimizer.register_step_post_hook(lambda opt, a, k: calls.append(opt))
    _updates(net, x, labels)
    assert len(calls) == 4 * len(net.blocks)


def test_incremental_variant_matches_the_equations_step_by_step():
    rule = {
        "inference_steps": 3,
        "inference_lr": 0.05,
        "inference_backoff": 1.0,
        "incremental": True,
    }
    x, labels = _batch()
    got = _updates(_net(lr=1.0, **rule), x, labels)
    want = _by_autograd(
        _net(lr=1.0, **rule), x, labels, steps=3, lr=0.05, incremental=True
    )
    assert _rel(got, want) < 1e-9


# -- written-out vector-Jacobian products ------------------------------------


@pytest.mark.parametrize(
    "module",
    [
        nn.Sequential(nn.Linear(6, 4), nn.GELU()),
        nn.Sequential(nn.GELU(approximate="tanh"), nn.Linear(6, 4)),
        nn.Sequential(nn.Flatten(), nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 4)),
        nn.Sequential(nn.Sequential(nn.Linear(6, 4), nn.Tanh()), nn.Sigmoid()),
        nn.Sequential(nn.Identity(), nn.Linear(6, 12), nn.Unflatten(1, (3, 4))),
    ],
    ids=["linear-gelu", "gelu-linear", "flatten-relu", "nested-tanh", "unflatten"],
)
def test_written_out_vjp_equals_autograd(module):
    path = Path(module)
    assert path.written_out
    x = torch.randn(5, 6, requires_grad=True)
    y, saved = path.forward(x)
    g = torch.randn_like(y)
    (want,) = torch.autograd.grad(module(x), x, g)
    torch.testing.assert_close(y, module(x).detach())
    torch.testing.assert_close(path.vjp(saved, g), want)


def test_other_modules_fall_back_to_autograd():
    module = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU())
    path = Path(module)
    assert not path.written_out
    x = torch.randn(2, 1, 5, 5)
    y, saved = path.forward(x)
    g = torch.randn_like(y)
    leaf = x.clone().requires_grad_()
    (want,) = torch.autograd.grad(module(leaf), leaf, g)
    torch.testing.assert_close(path.vjp(saved, g), want)


def test_gaussian_energy_is_half_the_squared_errors_averaged_over_the_batch():
    z, mu = torch.ones(4, 3), torch.zeros(4, 3)
    x, x_hat = torch.ones(4, 2), torch.ones(4, 2) * 3
    assert float(gaussian_energy(z, mu)) == pytest.approx(1.5)
    assert float(gaussian_energy(z, mu, x, x_hat)) == pytest.approx(1.5 + 4.0)


# -- options, stopping and back-off ------------------------------------------


def test_options_come_from_the_rule_config_with_defaults_otherwise():
    class Cfg:
        inference_steps = 3

    opts = InferenceOptions.of(Cfg())
    assert opts.inference_steps == 3 and opts.inference_lr == 0.1
    assert opts.inference_backoff == 1.0 and not opts.incremental


def test_blocks_relaxing_together_must_agree_on_their_options():
    torch.manual_seed(0)
    net = Network.from_config(
        {
            "layers": MLP,
            "split": [2, 4],
            "rule": {"name": "pc"},
            "blocks": [{}, {"rule": {"inference_lr": 0.2}}, {}],
        },
        (7,),
        5,
    )
    x, labels = _batch()
    with pytest.raises(
        ConfigError,
        match=r"blocks 'block1' and 'block2' relax together "
        r"but set different inference options \(inference_lr 0.1 vs 0.2\)",
    ):
        _relax(net, x.float(), labels)


def test_tolerance_stops_inference_early():
    net = _net(inference_steps=200, inference_lr=0.2, inference_tolerance=1e-3)
    _relax(net, *_batch())
    record = net.blocks["block1"].rule._last
    assert 1 < record.steps < 200
    assert len(record.energy) == record.steps + 1


def test_backoff_undoes_a_rising_step_and_lowers_the_step_size():
    net = _net(inference_steps=20, inference_lr=3.0, inference_backoff=0.5)
    _relax(net, *_batch())
    record = net.blocks["block1"].rule._last
    assert record.backoffs > 0 and record.lr < 3.0
    totals = [
        sum(r)
        for r in zip(*(b.rule._last.energy for b in net.blocks.values()), strict=True)
    ]
    assert all(b <= a * (1 + 1e-5) for a, b in zip(totals, totals[1:], strict=False))


def test_divergence_names_the_block_and_the_step():
    net = _net(
        inference_steps=30,
        inference_lr=3.0,
        inference_backoff=1.0,
        max_energy_ratio=100.0,
    )
    with pytest.raises(
        DivergenceError,
        match=r"block '\w+' \(rule 'pc'\): inference "
        r"diverged at inference step \d+ of training step 7 \(epoch 1\): "
        r"the total energy rose from .* past max_energy_ratio=100",
    ):
        _relax(net, *_batch())


def test_nan_energy_names_the_block_and_the_step():
    net = _net()
    with torch.no_grad():
        net.blocks["block2"].body[0].weight[0, 0] = float("nan")
    with pytest.raises(
        DivergenceError,
        match=r"block 'block2' \(rule 'pc'\): the energy "
        r"became nan at inference step 0 of training step 7 \(epoch 1\)",
    ):
        _relax(net, *_batch())


def test_nan_is_caught_without_per_step_checks_too():
    net = _net(inference_backoff=1.0)
    with torch.no_grad():
        net.blocks["block3"].body[0].bias[0] = float("inf")
    with pytest.raises(
        DivergenceError,
        match=r"block 'block3' .* became (nan|inf) at "
        r"inference step 0",
    ):
        _relax(net, *_batch())


# -- locality ------------------------------------------------------------------


@pytest.mark.parametrize(
    "rule",
    [
        {},
        {"mode": "generative"},
        {"incremental": True},
        {"fixed_prediction": True},
    ],
)
@pytest.mark.parametrize("layers", ["mlp", "conv"])
def test_isolation_audit_passes_at_every_step(rule, layers):
    net = _net(layers, lr=0.01, **rule).float()
    x, labels = _batch(layers, n=16)
    cfg = SchedulerConfig(mode="simultaneous", epochs=1, batch_size=8, audit_steps=-1)
    Trainer(net, cfg, x.float(), labels).run()


def test_a_prediction_that_reaches_another_block_is_caught():
    net = _net()
    foreign = net.blocks["block1"].body[0].weight

    class Leaky(nn.Module):
        def __init__(self, body):
            super().__init__()
            self.inner = body

        def forward(self, x):
            return self.inner(x) + 0.0 * foreign.sum()

    rule = net.blocks["block2"].rule
    leaky = Leaky(net.blocks["block2"].body)
    rule.predictor = lambda body: leaky
    with pytest.raises(
        IsolationError,
        match=r"block 'block2' \(rule 'pc'\) reaches "
        r"parameter 'body.0.weight' of block 'block1'",
    ):
        _relax(net, *_batch())


def test_messages_are_detached_from_the_block_that_sent_them():
    net = _net()
    x, labels = _batch()
    outputs, _ = _relax(net, x, labels)
    assert all(not y.requires_grad for y in outputs.values())


def test_a_plain_energy_rule_is_relaxed_by_autograd_on_its_energy():
    torch.manual_seed(0)
    spec = {
        "layers": MLP,
        "split": [2, 4],
        "rule": {"name": "test_energy"},
        "optimizer": {"name": "sgd", "lr": 0.1},
    }
    net = Network.from_config(spec, (7,), 5)
    x, labels = _batch()
    before = [p.clone() for p in net.parameters()]
    outputs, energies = _relax(net, x.float(), labels)
    assert set(energies) == {"block1", "block2", "block3"}
    assert any(
        not torch.equal(a, b) for a, b in zip(before, net.parameters(), strict=True)
    )
