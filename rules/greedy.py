"""Greedy supervised learning: each block trains its own small classifier.

Decoupled greedy learning (Belilovsky, Eickenberg and Oyallon, "Greedy
layerwise learning can scale to ImageNet", ICML 2019; "Decoupled greedy
learning of CNNs", ICML 2020) gives every block an auxiliary head and trains
the block and its head with the cross-entropy of the head's prediction; no
gradient reaches the blocks below. The head sees the block's output pooled
like the probe's features (``pool`` cells per grid axis), then either a linear
map or a one-hidden-layer MLP. With ``scheduler.mode=reference`` the same
network is trained end to end by the last block's head: the supervised
reference.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from localearn.layers import to_grid
from localearn.rule import BlockContext, ObjectiveRule, require


def pooled(y: torch.Tensor, grid: tuple[int, ...], cells: int) -> torch.Tensor:
    """A block output laid on its grid, average-pooled to ``cells`` per axis."""
    z = to_grid(y, grid)
    if z.dim() == 4:
        z = F.adaptive_avg_pool2d(z, cells)
    elif z.dim() == 3:
        z = F.adaptive_avg_pool1d(z, cells)
    return z.flatten(1)


@dataclass
class GreedySupervisedConfig:
    """Hyperparameters of :class:`GreedySupervised`.

    Attributes:
        pool: cells per grid axis the output is pooled to before the head.
        hidden: width of the head's hidden layer; 0 for a linear head.
        label_smoothing: label smoothing of the cross-entropy.
    """

    pool: int = 2
    hidden: int = 0
    label_smoothing: float = 0.0


class GreedySupervised(ObjectiveRule):
    """Greedy supervised: the block and its own head minimise cross-entropy."""

    Config = GreedySupervisedConfig
    needs_labels = True
    invalid = [{"pool": 0}, {"hidden": -1}, {"label_smoothing": 1.0}]

    def validate(self) -> None:
        c = self.config
        require(c.pool >= 1, "greedy_supervised", f"pool must be >= 1, got {c.pool}")
        require(
            c.hidden >= 0, "greedy_supervised", f"hidden must be >= 0, got {c.hidden}"
        )
        require(
            0.0 <= c.label_smoothing < 1.0,
            "greedy_supervised",
            f"label_smoothing must be in [0, 1), got {c.label_smoothing}",
        )

    def setup(self, context: BlockContext, body: nn.Module) -> None:
        super().setup(context, body)
        probe = torch.zeros(
            max(math.prod(context.grid), 1) if context.grid else 1,
            *context.out_shape,
        )
        width = pooled(probe, context.grid, self.config.pool).shape[1]
        n = context.n_classes
        if self.config.hidden:
            self.head = nn.Sequential(
                nn.Linear(width, self.config.hidden),
                nn.ReLU(),
                nn.Linear(self.config.hidden, n),
            )
        else:
            self.head = nn.Linear(width, n)

    def logits(self, y: torch.Tensor) -> torch.Tensor:
        """Class scores of the block's own head."""
        return self.head(pooled(y, self.context.grid, self.config.pool))

    def loss(
        self, x: torch.Tensor, y: torch.Tensor, labels: torch.Tensor | None = None
    ) -> torch.Tensor:
        return F.cross_entropy(
            self.logits(y), labels, label_smoothing=self.config.label_smoothing
        )
