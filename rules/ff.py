"""Forward-Forward: each block tells real inputs from negative data by goodness.

Hinton, "The Forward-Forward Algorithm: Some Preliminary Investigations"
(2022), replaces the backward pass by two forward passes, one on real data
(positive) and one on negative data, and trains every layer on its own to give
high *goodness* to positive data and low goodness to negative data. Here the
goodness of a sample is the mean of the squared activities of the block's
output over all its features (channels, positions and, with a patch grid, all
patches of the sample):

    g(x) = mean_j y_j(x) ** 2

Two objectives (``loss``):

* ``threshold`` (Hinton 2022, section 2): the probability that a sample is
  positive is ``sigmoid(g - theta)``; the loss is its logistic loss, averaged
  over the positive and the negative samples,
  ``mean(softplus(-(g_pos - theta)), softplus(g_neg - theta))``.
* ``symba`` (Lee and Song, "SymBa: A Symmetric Bidirectional Loss for the
  Forward-Forward Algorithm", 2023): the positive and negative sample of each
  pair are compared directly, ``softplus(-alpha * (g_pos - g_neg))``, which
  balances the gradients of the two kinds of sample.

The rule declares ``negatives = True``: the scheduler appends to every raw
minibatch one negative per sample (:mod:`localearn.negatives`, kind
``negative``) and every block then carries the batch ``[positives;
negatives]``; the rule splits its output in halves by sample.

Hinton normalises the length of each layer's input, so the goodness of a
layer cannot be read off the length of the vector it receives and the next
layer must use the direction, its relative activities. Put an ``l2norm``
layer first in every block after the first::

    layers: [{type: flatten}, {type: linear, out: 500}, {type: relu},
             {type: l2norm}, {type: linear, out: 500}, {type: relu}]
    split: [3]
    rule: {name: ff}

Example:
    >>> import torch
    >>> from localearn.rule import BlockContext, make_rule
    >>> rule = make_rule("ff", {"threshold": 1.0})
    >>> rule.setup(BlockContext("b", (2,), (2,)), torch.nn.Identity())
    >>> y = torch.tensor([[2.0, 0.0], [0.0, 0.0]])  # one positive, one negative
    >>> round(float(rule.loss(None, y)), 4)  # softplus(-1) and softplus(-1)
    0.3133
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn
from torch.nn import functional as F

from localearn.errors import ShapeError
from localearn.layers import to_grid
from localearn.negatives import KINDS
from localearn.rule import BlockContext, ObjectiveRule, require

LOSSES = ("threshold", "symba")


def goodness(y: torch.Tensor, grid: tuple[int, ...] = ()) -> torch.Tensor:
    """Goodness of every sample: the mean squared activity of its output.

    Args:
        y: block output; with a patch grid, ``batch * prod(grid)`` rows in the
            sample-major order of :class:`localearn.layers.Patchify`.
        grid: patch grid of the network input, ``()`` for none.

    Returns:
        ``(batch,)`` goodness values.

    Example:
        >>> goodness(torch.tensor([[1.0, 3.0], [2.0, 0.0]])).tolist()
        [5.0, 2.0]
    """
    squares = y.pow(2)
    if grid:
        # every patch holds as many activities, so the mean of the patch means
        # is the mean over the whole sample
        squares = to_grid(squares, grid)
    return squares.flatten(1).mean(1)


def split_halves(g: torch.Tensor, block: str = "?") -> tuple[torch.Tensor, ...]:
    """Split per-sample values of ``[positives; negatives]`` into the two halves.

    Raises:
        ShapeError: an odd batch, which cannot hold as many negatives as
            positives.
    """
    if len(g) % 2:
        raise ShapeError(
            f"rule 'ff' (block '{block}') needs a batch of positive samples "
            f"followed by as many negative ones, got an odd batch of {len(g)} "
            "samples; the scheduler appends the negatives when a rule declares "
            "negatives = True"
        )
    return g.chunk(2)


def threshold_loss(
    g_pos: torch.Tensor, g_neg: torch.Tensor, theta: float
) -> torch.Tensor:
    """Hinton's (2022) logistic loss of goodness against a threshold ``theta``.

    ``p(positive) = sigmoid(g - theta)``; the loss is the mean negative log
    likelihood over all positive and negative samples.
    """
    terms = torch.cat([F.softplus(-(g_pos - theta)), F.softplus(g_neg - theta)])
    return terms.mean()


def symba_loss(g_pos: torch.Tensor, g_neg: torch.Tensor, alpha: float) -> torch.Tensor:
    """SymBa loss (Lee and Song 2023): ``softplus(-alpha * (g_pos - g_neg))``.

    Each positive sample is paired with the negative sample at the same index.
    """
    return F.softplus(-alpha * (g_pos - g_neg)).mean()


@dataclass
class ForwardForwardConfig:
    """Hyperparameters of :class:`ForwardForward`.

    Attributes:
        loss: ``threshold`` (Hinton 2022) or ``symba`` (Lee and Song 2023).
        threshold: ``theta``, the goodness that separates positive from
            negative samples in the ``threshold`` loss (and the diagnostics).
        alpha: scale of the goodness difference in the ``symba`` loss.
        negative: kind of negative data, ``hybrid`` or ``shuffle`` (see
            :mod:`localearn.negatives`); all blocks of a network must agree.
    """

    loss: str = "threshold"
    threshold: float = 2.0
    alpha: float = 4.0
    negative: str = "hybrid"


class ForwardForward(ObjectiveRule):
    """Forward-Forward: high goodness for real data, low for negative data."""

    Config = ForwardForwardConfig
    negatives: ClassVar[bool] = True
    invalid = [
        {"loss": "energy"},
        {"threshold": 0.0},
        {"alpha": -1.0},
        {"negative": "noise"},
    ]

    def validate(self) -> None:
        c = self.config
        require(
            c.loss in LOSSES,
            "ff",
            f"loss must be one of {', '.join(LOSSES)}, got {c.loss!r}",
        )
        require(c.threshold > 0, "ff", f"threshold must be > 0, got {c.threshold}")
        require(c.alpha > 0, "ff", f"alpha must be > 0, got {c.alpha}")
        require(
            c.negative in KINDS,
            "ff",
            f"negative must be one of {', '.join(KINDS)}, got {c.negative!r}",
        )

    def setup(self, context: BlockContext, body: nn.Module) -> None:
        super().setup(context, body)
        self._sums: torch.Tensor | None = None
        self._batches = 0

    def loss(
        self, x: torch.Tensor, y: torch.Tensor, labels: torch.Tensor | None = None
    ) -> torch.Tensor:
        c = self.config

        # goodness of the positive and the negative half
        g = goodness(y, self.context.grid)
        g_pos, g_neg = split_halves(g, self.context.name)

        # logistic loss on goodness
        if c.loss == "threshold":
            loss = threshold_loss(g_pos, g_neg, c.threshold)
        else:
            loss = symba_loss(g_pos, g_neg, c.alpha)
        self._record(g_pos.detach(), g_neg.detach())
        return loss

    def _record(self, g_pos: torch.Tensor, g_neg: torch.Tensor) -> None:
        if self.config.loss == "threshold":
            theta = self.config.threshold
            right = torch.cat([g_pos > theta, g_neg < theta]).float().mean()
        else:
            right = (g_pos > g_neg).float().mean()
        stats = torch.stack([g_pos.mean(), g_neg.mean(), right])
        self._sums = stats if self._sums is None else self._sums + stats
        self._batches += 1

    def diagnostics(self) -> dict[str, float]:
        """Means over the batches since the last call (one epoch in training).

        Returns:
            ``goodness_pos`` and ``goodness_neg``, the mean goodness of the
            positive and the negative samples, and ``accuracy``, the fraction
            of samples on the right side of the threshold (``threshold``
            loss) or of pairs with ``g_pos > g_neg`` (``symba`` loss).
        """
        if not getattr(self, "_batches", 0):
            return {}
        pos, neg, right = (self._sums / self._batches).tolist()
        self._sums, self._batches = None, 0
        return {"goodness_pos": pos, "goodness_neg": neg, "accuracy": right}
