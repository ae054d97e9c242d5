"""One conformance suite, run over every registered rule.

Built-in rules, third-party plugins and the test plugins all face the same
checks: isolation holds, a step changes only its own block, state survives a
checkpoint round trip, bad hyperparameters are refused, batch size 1 works
(or fails with a clear message).
"""

import copy
import io

import pytest
import torch

from localearn.errors import ConfigError, LocalearnError
from localearn.network import Network
from localearn.rule import get_rule_class, make_rule, rule_names
from localearn.schedulers import Position, SchedulerConfig, Trainer

# deliberately broken rules that exist to test the framework's guards
BROKEN_ON_PURPOSE = {"test_leak", "test_explode"}
RULES = [r for r in rule_names() if r not in BROKEN_ON_PURPOSE]
DEFAULT_EXAMPLE = {
    "in_shape": (1, 8, 8),
    "network": {
        "layers": [
            {"type": "linear", "out": 16, "bias": False},
            {"type": "relu"},
            {"type": "linear", "out": 10, "bias": False},
        ],
        "split": [2],
    },
}


def _example(name):
    return copy.deepcopy(get_rule_class(name).example or DEFAULT_EXAMPLE)


def _network(name, seed=0):
    ex = _example(name)
    torch.manual_seed(seed)
    net_cfg = {
        **ex["network"],
        "rule": {"name": name, **ex.get("rule", {})},
        "optimizer": ex.get("optimizer", {"name": "sgd", "lr": 0.01, "momentum": 0.9}),
    }
    return Network.from_config(net_cfg, tuple(ex["in_shape"]), 10)


def _batch(name, n=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    shape = tuple(_example(name)["in_shape"])
    return torch.rand(n, *shape, generator=g), torch.randint(0, 10, (n,), generator=g)


def _trainer(net, x, y):
    return Trainer(
        net, SchedulerConfig(epochs=1, batch_size=len(x), audit_steps=-1), x, y
    )


def test_every_builtin_rule_is_registered():
    for name in ("infonce",):
        assert name in RULES


@pytest.mark.parametrize("name", RULES)
def test_isolation_audit_passes_for_a_full_epoch(name):
    net = _network(name)
    x, y = _batch(name, 32)
    Trainer(net, SchedulerConfig(epochs=1, batch_size=16, audit_steps=-1), x, y).run()


@pytest.mark.parametrize("name", RULES)
def test_a_step_changes_only_its_own_block(name):
    net = _network(name)
    x, y = _batch(name)
    trainer = _trainer(net, x, y)
    trainer._local_step(x, y, net.order, True, Position())  # warm optimizer state
    for k in net.order:
        before = {n: v.clone() for n, v in net.state_dict().items()}
        opt_before = {
            n: copy.deepcopy(b.optimizer.state_dict())
            for n, b in net.blocks.items()
            if b.optimizer is not None
        }
        trainer._local_step(x, y, [k], True, Position())
        changed = {
            n for n, v in net.state_dict().items() if not torch.equal(v, before[n])
        }
        assert changed, f"{name}: a step of {k} changed nothing"
        assert all(n.startswith(f"blocks.{k}.") for n in changed), changed
        for other, state in opt_before.items():
            if other == k:
                continue
            now = net.blocks[other].optimizer.state_dict()["state"]
            for pid, slots in state["state"].items():
                for slot, value in slots.items():
                    if torch.is_tensor(value):
                        assert torch.equal(value, now[pid][slot]), (other, slot)


@pytest.mark.parametrize("name", RULES)
def test_state_survives_a_checkpoint_round_trip(name):
    net = _network(name)
    x, y = _batch(name)
    trainer = _trainer(net, x, y)
    trainer._local_step(x, y, net.order, False, Position())
    buf = io.BytesIO()
    torch.save(
        {
            "net": net.state_dict(),
            "opt": {
                n: b.optimizer.state_dict()
                for n, b in net.blocks.items()
                if b.optimizer is not None
            },
        },
        buf,
    )
    buf.seek(0)
    saved = torch.load(buf, weights_only=False)
    twin = _network(name, seed=123)
    twin.load_state_dict(saved["net"])
    for n, state in saved["opt"].items():
        twin.blocks[n].optimizer.load_state_dict(state)
    for a, b in zip(net.state_dict().values(), twin.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    # the next step is identical from the original and from the restored copy
    torch.manual_seed(7)
    trainer._local_step(x, y, net.order, False, Position())
    torch.manual_seed(7)
    _trainer(twin, x, y)._local_step(x, y, twin.order, False, Position())
    for (k, a), b in zip(
        net.state_dict().items(), twin.state_dict().values(), strict=True
    ):
        assert torch.allclose(a, b, atol=1e-6), k


@pytest.mark.parametrize("name", RULES)
def test_bad_hyperparameters_are_refused(name):
    cls = get_rule_class(name)
    with pytest.raises(
        ConfigError, match=f"rule '{name}' has no hyperparameter 'not_a_key'"
    ):
        make_rule(name, {"not_a_key": 1})
    for bad in cls.invalid:
        with pytest.raises(ConfigError, match=f"rule '{name}'"):
            make_rule(name, bad)
    if not name.startswith("test_"):
        assert cls.invalid, f"built-in rule {name} lists no invalid settings to refuse"


@pytest.mark.parametrize("name", RULES)
def test_batch_size_one_works_or_fails_clearly(name):
    net = _network(name)
    x, y = _batch(name, 1)
    try:
        _trainer(net, x, y)._local_step(x, y, net.order, True, Position())
    except LocalearnError as err:
        assert "batch" in str(err), f"{name}: unclear batch-size-1 error: {err}"
        return
    for v in net.state_dict().values():
        if v.is_floating_point():
            assert torch.isfinite(v).all()
