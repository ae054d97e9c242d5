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

The weights start as independent ``N(0, 1)`` draws, as in the paper
(``init_std``). The rule learns from the currents; what the block outputs
(and a probe reads) is the body's own forward pass: for the paper's features
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
from localearn.rules._plasticity import WeightLayerRule, find_weight_layer


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
    # sign(W) |W|^(p-1) = |W|^(p-2) W
    metric = w.abs() if p == 3 else w.abs().pow_(p - 2)
    return x @ metric.mul_(w).T


def ranking(currents: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Each sample's strongest unit and its ``k``-th strongest unit.

    These carry the learning activation ``g``: 1 for the winner, ``-Delta``
    for the ``k``-th ranked, 0 elsewhere.

    Args:
        currents: ``(n, units)`` currents.
        k: rank of the unit pushed away (2 is the runner-up).

    Returns:
        ``(winners, kth)``, two ``(n,)`` index tensors.

    Example:
        >>> ranking(torch.tensor([[0.1, 0.9, 0.5]]), 2)
        (tensor([1]), tensor([2]))
    """
    ranked = currents.topk(k, dim=1).indices
    return ranked[:, 0], ranked[:, k - 1]


def krotov_delta(
    x: torch.Tensor,
    currents: torch.Tensor,
    w: torch.Tensor,
    k: int = 7,
    delta: float = 0.4,
    prec: float = 1e-30,
) -> torch.Tensor:
    """Weight change of Krotov and Hopfield's rule for one batch.

    ``dW_mu = sum_n g(I_n,mu) (v_n - I_n,mu W_mu)``, divided by
    ``max(max |dW|, prec)``, where ``g`` is 1 for the sample's winner,
    ``-delta`` for its ``k``-th ranked unit and 0 otherwise. Only two units
    per sample have ``g != 0``, so the sum is gathered by index rather than
    by a dense product.

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
    winners, kth = ranking(currents, k)
    rows = torch.arange(x.shape[0], device=x.device)

    # decay term: -(sum_n g I) W
    coef = torch.zeros(w.shape[0], dtype=w.dtype, device=w.device)
    coef.index_add_(0, winners, currents[rows, winners])
    coef.index_add_(0, kth, currents[rows, kth], alpha=-delta)
    change = w * coef.neg().unsqueeze(1)

    # hebbian term: +v for the winner, -delta v for the k-th ranked
    change.index_add_(0, winners, x)
    change.index_add_(0, kth, x, alpha=-delta)

    # scale by the largest absolute entry (a NaN stays a NaN)
    low, high = torch.aminmax(change)
    return change.div_(torch.maximum(high, -low).clamp_min(prec))


@dataclass
class KrotovConfig:
    """Hyperparameters of :class:`KrotovHopfield` (defaults: the paper's MNIST).

    Attributes:
        p: Lebesgue norm of the weight geometry, ``p >= 2`` (paper: 3).
        k: rank of the unit that is pushed away, ``k >= 2`` (paper: 7).
        delta: strength of that push, ``0 <= delta`` (paper: 0.4).
        prec: floor of the normaliser of the change (paper's code: 1e-30).
        init_std: at setup the layer's weights are redrawn from
            ``N(0, init_std^2)`` (paper: 1); 0 keeps the layer's own
            initialisation.
    """

    p: float = 3.0
    k: int = 7
    delta: float = 0.4
    prec: float = 1e-30
    init_std: float = 1.0


class KrotovHopfield(WeightLayerRule):
    """Krotov-Hopfield: hidden units compete by rank in the p-norm geometry.

    :meth:`forward_train` returns the currents ``<W, v>_p`` laid out as the
    weight layer's output; diagnostics report each unit's ``p``-norm (which
    converges to 1 for units that learn) and how often each unit wins.

    Example:
        >>> from localearn.network import Network
        >>> net = Network.from_config(
        ...     {"layers": [{"type": "linear", "out": 20, "bias": False}],
        ...      "rule": {"name": "krotov"}, "optimizer": {"name": "sgd", "lr": 0.04}},
        ...     in_shape=(1, 28, 28), n_classes=10)
        >>> net.blocks["block1"].rule.receptive_fields(net.blocks["block1"].body).shape
        torch.Size([20, 1, 28, 28])
    """

    Config = KrotovConfig
    default_name = "krotov"
    invalid = [{"p": 1.5}, {"k": 1}, {"delta": -0.4}, {"prec": 0.0}, {"init_std": -1.0}]

    def __init__(self, config: KrotovConfig) -> None:
        super().__init__(config)
        self.norm_p = float(config.p)

    def validate(self) -> None:
        c = self.config
        require(c.p >= 2, self.label, f"p must be >= 2, got {c.p}")
        require(
            c.k >= 2,
            self.label,
            f"k must be >= 2 (rank of the unit pushed away), got {c.k}",
        )
        require(c.delta >= 0, self.label, f"delta must be >= 0, got {c.delta}")
        require(c.prec > 0, self.label, f"prec must be > 0, got {c.prec}")
        require(c.init_std >= 0, self.label, f"init_std must be >= 0, got {c.init_std}")

    def setup(self, context: BlockContext, body) -> None:
        if self.config.init_std > 0:
            # the paper's initialisation: independent N(0, 1) weights
            weight = find_weight_layer(body, self.label, context.name).param
            with torch.no_grad():
                body.get_parameter(weight).normal_(0.0, self.config.init_std)
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
