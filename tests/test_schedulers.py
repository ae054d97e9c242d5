"""Schedulers: simultaneous, sequential, cached, reference; the three rule kinds."""

import pytest
import torch

from localearn.errors import ConfigError, UnknownNameError
from localearn.network import Network
from localearn.schedulers import SchedulerConfig, Trainer

MLP = {
    "layers": [
        {"type": "linear", "out": 16},
        {"type": "relu"},
        {"type": "linear", "out": 10},
    ],
    "split": [2],
    "optimizer": {"name": "sgd", "lr": 0.05},
}


def _data(n=64):
    g = torch.Generator().manual_seed(1)
    return torch.rand(n, 1, 8, 8, generator=g), torch.randint(0, 10, (n,), generator=g)


def _train(rule, mode="simultaneous", epochs=2, **net_extra):
    torch.manual_seed(0)
    net = Network.from_config(
        {**MLP, "rule": {"name": rule}, **net_extra}, (1, 8, 8), 10
    )
    before = {k: v.clone() for k, v in net.state_dict().items()}
    x, y = _data()
    records = []
    Trainer(
        net,
        SchedulerConfig(mode=mode, epochs=epochs, batch_size=16, audit_steps=-1),
        x,
        y,
        log_step=records.append,
    ).run()
    return net, before, records


@pytest.mark.parametrize(
    "rule", ["test_decorrelate", "test_hebb", "test_energy", "test_supervised_head"]
)
def test_a_tiny_plugin_of_each_kind_trains_a_two_block_network(rule):
    net, before, records = _train(rule)
    for name in net.order:
        prefix = f"blocks.{name}.body"
        assert any(
            not torch.equal(before[k], v)
            for k, v in net.state_dict().items()
            if k.startswith(prefix)
        ), f"{rule}: block {name} did not learn"
    epochs = [r for r in records if r["event"] == "epoch"]
    assert len(epochs) == 2 and set(epochs[0]["loss"]) == {"block1", "block2"}


def test_energy_inference_lowers_the_supervised_error():
    net, _, records = _train("test_energy", epochs=6)
    first = [r for r in records if r["event"] == "epoch"][0]["loss"]["block2"]
    last = [r for r in records if r["event"] == "epoch"][-1]["loss"]["block2"]
    assert last < first


def test_sequential_trains_one_block_per_stage():
    net, _, records = _train("test_decorrelate", mode="sequential")
    stages = [(r["stage"], tuple(r["loss"])) for r in records if r["event"] == "epoch"]
    assert stages == [
        (0, ("block1",)),
        (0, ("block1",)),
        (1, ("block2",)),
        (1, ("block2",)),
    ]


@pytest.mark.parametrize("cache", ["memory", "disk"])
def test_cached_equals_sequential(cache, tmp_path):
    cfg = {
        "patches": {"size": 4, "stride": 2},
        "layers": [
            {"type": "conv", "out": 4},
            {"type": "relu"},
            {"type": "conv", "out": 4},
            {"type": "relu"},
        ],
        "split": [2],
        "rule": {"name": "infonce", "steps": 1, "negatives": 4},
    }
    x, y = _data(32)
    nets = {}
    for mode in ("sequential", "cached"):
        torch.manual_seed(0)
        net = Network.from_config(cfg, (1, 8, 8), 10)
        torch.manual_seed(5)
        Trainer(
            net,
            SchedulerConfig(mode=mode, epochs=2, batch_size=8, cache=cache),
            x,
            y,
            cache_dir=tmp_path,
        ).run()
        nets[mode] = net.state_dict()
    for k in nets["sequential"]:
        assert torch.allclose(nets["sequential"][k], nets["cached"][k], atol=1e-5), k
    if cache == "disk":
        assert (tmp_path / "block2.input.npy").exists()


def test_reference_moves_lower_blocks_through_the_top_objective():
    net, before, _ = _train("test_supervised_head", mode="reference", epochs=1)
    assert not torch.equal(
        before["blocks.block1.body.0.1.weight"],
        net.state_dict()["blocks.block1.body.0.1.weight"],
    )
    # the lower block's own head is not part of the end-to-end objective
    assert torch.equal(
        before["blocks.block1.rule.head.weight"],
        net.state_dict()["blocks.block1.rule.head.weight"],
    )


def test_reference_refuses_plasticity_rules():
    with pytest.raises(
        NotImplementedError, match="block 'block1' uses plasticity rule 'test_hebb'"
    ):
        _train("test_hebb", mode="reference")


def test_simultaneous_frees_each_blocks_graph_before_the_next(monkeypatch):
    """Block 1's graph is already freed when block 2's loss is computed."""
    net = Network.from_config(
        {**MLP, "rule": {"name": "test_decorrelate"}}, (1, 8, 8), 10
    )
    rule1, rule2 = net.blocks["block1"].rule, net.blocks["block2"].rule
    kept, freed = [], []
    orig1, orig2 = rule1.loss, rule2.loss

    def loss1(x, y, labels=None):
        kept.append(orig1(x, y, labels))
        return kept[-1]

    def loss2(x, y, labels=None):
        try:
            kept[-1].backward()
            freed.append(False)
        except RuntimeError as err:
            freed.append("second time" in str(err))
        return orig2(x, y, labels)

    monkeypatch.setattr(rule1, "loss", loss1)
    monkeypatch.setattr(rule2, "loss", loss2)
    x, y = _data(16)
    Trainer(net, SchedulerConfig(epochs=1, batch_size=16), x, y).run()
    assert freed == [True]


def test_unknown_mode_lists_the_valid_ones():
    net = Network.from_config({**MLP, "rule": {"name": "test_hebb"}}, (1, 8, 8), 10)
    with pytest.raises(
        UnknownNameError,
        match="unknown scheduler mode 'simultanous'; valid modes: simultaneous",
    ):
        Trainer(net, SchedulerConfig(mode="simultanous"), *_data())


def test_bad_cache_setting_is_refused():
    net = Network.from_config({**MLP, "rule": {"name": "test_hebb"}}, (1, 8, 8), 10)
    with pytest.raises(ConfigError, match="scheduler.cache must be 'memory' or 'disk'"):
        Trainer(net, SchedulerConfig(mode="cached", cache="gpu"), *_data())


def test_asynchronous_mode_says_it_is_not_available():
    net = Network.from_config({**MLP, "rule": {"name": "test_hebb"}}, (1, 8, 8), 10)
    with pytest.raises(NotImplementedError, match="asynchronous"):
        Trainer(net, SchedulerConfig(mode="asynchronous"), *_data())
