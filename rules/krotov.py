"""Krotov and Hopfield's competing hidden units.

Krotov and Hopfield, "Unsupervised learning by competing hidden units", PNAS
116:7723 (2019). Each hidden unit ``mu`` receives the current

    I_mu = <W_mu, v>_p = sum_i sign(W_mu,i) |W_mu,i|^(p-1) v_i

(the inner product of the p-norm geometry, eq. 2). For every sample the units
are ranked by current; the learning activation ``g`` is 1 for the strongest
unit, ``-Delta`` for the ``k``-th strongest and 0 for the others (eq. 9).
The plasticity rule (eq. 3, with ``R = 1``)

    dW_mu,i = sum over the batch of g(I_mu) (v_i - I_mu W_mu,i)

drives every unit that keeps winning onto the unit p-sphere,
``sum_i |W_mu,i|^p = 1``, and is scaled by its largest absolute entry
(``max(|dW|, prec)``), as in the authors' minibatch algorithm. A
convolutional block learns filters this way, each patch position a sample.

The rule learns from the currents; what the block outputs (and a probe
reads) is the body's own forward pass: for the paper's features
``relu(W v)^n`` put ``{type: relu}, {type: power, n: 4.5}`` after the layer.
The learning rate and its annealing belong to the block's optimizer: plain
SGD with ``lr: 0.04``, decayed linearly to 0 over training, reproduces the
paper's schedule.

Example:
    >>> import torch
    >>> x = torch.eye(3)[:2]; w = torch.tensor([[1.0, 0, 0], [0, 1.0, 0]])
    >>> i = krotov_currents(x, w, 3.0)
    >>> krotov_delta(x, i, w, k=2, delta=0.4)
    tensor([[ 0., -1.,  0.],
            [-1.,  0.,  0.]])
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from localearn.errors import ConfigError
from localearn.rule import BlockContext, require
from localearn.rules._plasticity import WeightLayerRule


def krotov_currents(x: torch.Tensor, w: torch.Tensor, p: float) -> torch.Tensor:
    """Currents ``<W_mu, v>_p`` of every unit for every sample.

    Args:
        x: samples ``(n, D)``.
        w: weights ``(units, D)``.
        p: the Lebesgue norm, ``p >= 2``.

    Returns:
        ``(n, units)`` currents.
    """
    if p == 2:
        return x @ w.T
    return x @ (w.sign() * w.abs().pow(p - 1)).T


def ranking_activation(currents: torch.Tensor, k: int, delta: float) -> torch.Tensor:
    """Learning activation ``g``: 1 for each sample's winner, ``-delta`` at rank k.

    Args:
        currents: ``(n, units)`` currents.
        k: rank of the unit pushed away (2 is the runner-up).
        delta: strength of that anti-Hebbian push.

    Returns:
        ``(n, units)`` with one 1 and one ``-delta`` per row.

    Example:
        >>> ranking_activation(torch.tensor([[0.1, 0.9, 0.5]]), 2, 0.5).tolist()
        [[0.0, 1.0, -0.5]]
    """
    ranked = currents.topk(k, dim=1).indices
    rows = torch.arange(currents.shape[0], device=currents.device)
    g = torch.zeros_like(currents)
    g[rows, ranked[:, 0]] = 1.0
    g[rows, ranked[:, k - 1]] = -delta
    return g


def krotov_delta(
    x: torch.Tensor,
    currents: torch.Tensor,
    w: torch.Tensor,
    k: int = 7,
    delta: float = 0.4,
    prec: float = 1e-30,
) -> torch.Tensor:
    """Weight change of Krotov and Hopfield's rule for one batch.

    ``dW = sum_n g_n (v_n - I_n W)``, divided by ``max(max |dW|, prec)``.

    Args:
        x: samples ``(n, D)``.
        currents: ``<W, v>_p`` from :func:`krotov_currents`, ``(n, units)``.
        w: weights ``(units, D)``.
        k: rank of the weakened unit.
        delta: strength of the weakening.
        prec: floor of the normaliser.

    Returns:
        ``dW`` shaped like ``w``, its largest absolute entry 1 (or smaller
        when the change is below ``prec``).
    """
    # ranking: the winner learns the sample, the k-th ranked unlearns it
    g = ranking_activation(currents, k, delta)

    # plasticity: g (v - <W, v>_p W), summed over the batch
    change = g.T @ x - (g * currents).sum(0).unsqueeze(1) * w

    # scale by the largest absolute entry
    return change / change.abs().max().clamp_min(prec)


@dataclass
class KrotovConfig:
    """Hyperparameters of :class:`KrotovHopfield` (defaults: the paper's MNIST).

    Attributes:
        p: Lebesgue norm of the weight geometry, ``p >= 2`` (paper: 3).
        k: rank of the unit that is pushed away, ``k >= 2`` (paper: 7).
        delta: strength of that push, ``0 <= delta`` (paper: 0.4).
        prec: floor of the normaliser of the change (paper's code: 1e-30).
    """

    p: float = 3.0
    k: int = 7
    delta: float = 0.4
    prec: float = 1e-30


class KrotovHopfield(WeightLayerRule):
    """Krotov-Hopfield: hidden units compete by rank in the p-norm geometry.

    :meth:`forward_train` returns the currents ``<W, v>_p`` laid out as the
    weight layer's output; diagnostics report each unit's ``p``-norm (which
    converges to 1 for units that learn) and how often each unit wins.
    """

    Config = KrotovConfig
    default_name = "krotov"

    def __init__(self, config: KrotovConfig) -> None:
        super().__init__(config)
        self.norm_p = float(config.p)

    def validate(self) -> None:
        c = self.config
        require(c.p >= 2, self.label, f"p must be >= 2, got {c.p}")
        require(c.k >= 2, self.label,
                f"k must be >= 2 (rank of the unit pushed away), got {c.k}")
        require(c.delta >= 0, self.label, f"delta must be >= 0, got {c.delta}")
        require(c.prec > 0, self.label, f"prec must be > 0, got {c.prec}")

    def setup(self, context: BlockContext, body) -> None:
        super().setup(context, body)
        if self.config.k > self.site.units:
            raise ConfigError(
                f"rule '{self.label}' of block '{context.name}': k={self.config.k} "
                f"ranks past the {self.site.units} units of layer "
                f"'{self.site.path}'; use k <= {self.site.units} or more units"
            )

    def currents(self, x, w):
        return krotov_currents(x, w, self.config.p)

    def learn(self, x, u, w):
        c = self.config
        return krotov_delta(x, u, w, c.k, c.delta, c.prec), u
