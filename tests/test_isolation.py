"""The isolation guarantee: audit, per-block optimizers, detached messages."""

import copy

import pytest
import torch

from localearn.errors import IsolationError
from localearn.isolation import audit_graph, audit_update
from localearn.network import Network
from localearn.schedulers import Position, SchedulerConfig, Trainer

MLP3 = {
    "layers": [
        {"type": "linear", "out": 12},
        {"type": "relu"},
        {"type": "linear", "out": 10},
        {"type": "relu"},
        {"type": "linear", "out": 8},
    ],
    "split": [2, 4],
    "rule": {"name": "test_decorrelate"},
    "optimizer": {"name": "sgd", "lr": 0.1, "momentum": 0.9},
}


def _net(cfg=MLP3):
    return Network.from_config(cfg, (1, 8, 8), 10)


def test_leaking_rule_is_caught_with_block_rule_and_parameter_named():
    cfg = copy.deepcopy(MLP3)
    cfg["blocks"] = [{}, {"rule": {"name": "test_leak"}}, {}]
    net = _net(cfg)
    net.blocks["block2"].rule.__dict__["foreign"] = (
        net.blocks["block1"].body[0][1].weight
    )
    trainer = Trainer(
        net,
        SchedulerConfig(epochs=1, batch_size=8, audit_steps=-1),
        torch.rand(16, 1, 8, 8),
        torch.zeros(16, dtype=torch.long),
    )
    with pytest.raises(
        IsolationError,
        match=r"block 'block2' \(rule 'test_leak'\) reaches parameter "
        r"'body.0.1.weight' "
        r"of block 'block1'",
    ):
        trainer.run()


def test_audit_names_a_stray_tensor_that_belongs_to_no_block():
    w = torch.nn.Parameter(torch.ones(3))
    stray = torch.ones(3, requires_grad=True)
    with pytest.raises(IsolationError, match="belongs to no block"):
        audit_graph((w * stray).sum(), "b", "r", [w], {id(w): ("b", "w")})


def test_audit_counts_own_parameters():
    net = _net()
    block = net.blocks["block1"]
    loss = block(torch.rand(4, 1, 8, 8)).sum()
    assert (
        audit_graph(loss, "block1", "r", block.parameters(), net.block_of_parameter())
        == 2
    )


def test_plasticity_update_for_a_foreign_parameter_is_refused():
    with pytest.raises(IsolationError, match="returned a change for 'other.weight'"):
        audit_update(["0.weight", "other.weight"], "b", "hebb", ["0.weight"])


def test_every_block_has_its_own_optimizer_over_its_own_parameters():
    net = _net()
    seen = set()
    for block in net.blocks.values():
        opt_params = {id(p) for g in block.optimizer.param_groups for p in g["params"]}
        assert opt_params == {id(p) for p in block.parameters()}
        assert not (opt_params & seen)
        seen |= opt_params


def _snapshot(net):
    params = {k: v.clone() for k, v in net.state_dict().items()}
    opts = {n: copy.deepcopy(b.optimizer.state_dict()) for n, b in net.blocks.items()}
    return params, opts


@pytest.mark.parametrize("k", ["block1", "block2", "block3"])
def test_a_step_of_block_k_changes_nothing_outside_it_momentum_included(k):
    net = _net()
    x = torch.rand(16, 1, 8, 8)
    y = torch.zeros(16, dtype=torch.long)
    trainer = Trainer(
        net, SchedulerConfig(epochs=1, batch_size=16, audit_steps=-1), x, y
    )
    # give every optimizer momentum state first
    trainer._local_step(x, y, net.order, True, Position())
    before, opt_before = _snapshot(net)
    trainer._local_step(x, y, [k], True, Position())
    after, opt_after = _snapshot(net)
    changed = {key for key in before if not torch.equal(before[key], after[key])}
    assert changed, "the trained block did not change"
    assert all(key.startswith(f"blocks.{k}.") for key in changed), changed
    for name in net.blocks:
        buf_b = opt_before[name]["state"][0]["momentum_buffer"]
        buf_a = opt_after[name]["state"][0]["momentum_buffer"]
        assert torch.equal(buf_b, buf_a) == (name != k), name


def test_messages_between_blocks_are_detached():
    net = _net()
    outs = net(torch.rand(4, 1, 8, 8))
    assert all(not o.requires_grad or o.grad_fn is not None for o in outs.values())
    loss = outs["block3"].sum()
    leaves = {id(p) for p in net.blocks["block3"].parameters()}
    from localearn.isolation import graph_leaves

    assert {id(t) for t in graph_leaves(loss)} <= leaves


def test_reference_mode_does_cross_blocks():
    net = _net()
    outs = net(torch.rand(4, 1, 8, 8), detach=False)
    from localearn.isolation import graph_leaves

    reached = {id(t) for t in graph_leaves(outs["block3"].sum())}
    assert {id(p) for p in net.blocks["block1"].parameters()} <= reached
