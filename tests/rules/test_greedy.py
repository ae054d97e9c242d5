"""Greedy supervised learning (decoupled greedy learning)."""

import pytest
import torch
from torch.nn import functional as F

from localearn.config import load_config
from localearn.experiment import Experiment
from localearn.rule import BlockContext, make_rule


def test_loss_is_the_cross_entropy_of_the_blocks_own_head():
    rule = make_rule("greedy_supervised", {"pool": 1})
    rule.setup(
        BlockContext("b", (3, 4, 4), (3, 4, 4), n_classes=2), torch.nn.Identity()
    )
    with torch.no_grad():
        rule.head.weight.copy_(torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]))
        rule.head.bias.zero_()
    y = torch.zeros(1, 3, 4, 4)
    y[0, 0] = 2.0  # mean-pooled features (2, 0, 0): logits (2, 0)
    loss = rule.loss(None, y, torch.tensor([1]))
    assert loss.item() == pytest.approx(
        -F.log_softmax(torch.tensor([2.0, 0.0]), 0)[1].item()
    )


@pytest.mark.parametrize("mode", ["simultaneous", "reference"])
def test_greedy_and_end_to_end_supervised_learn_digits(tmp_path, mode):
    cfg = load_config(
        None,
        [
            "data.name=digits",
            "network.layers=[{type: conv, out: 16}, {type: relu},"
            " {type: conv, out: 16}, {type: relu}]",
            "network.optimizer.lr=0.005",
            "network.split=[2]",
            "network.rule.name=greedy_supervised",
            f"scheduler.mode={mode}",
            "scheduler.epochs=8",
            "scheduler.batch_size=32",
            "evaluate.budgets=[all]",
            "evaluate.random_twin=false",
        ],
    )
    results = Experiment.create(cfg, tmp_path / mode).run()
    assert results["readout"]["trained"] > 0.85
