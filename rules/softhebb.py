"""SoftHebb: Hebbian learning in a soft winner-take-all layer.

Moraitis, Toichkin, Journé, Chua and Guo, "SoftHebb: Bayesian inference in
unsupervised Hebbian soft winner-take-all networks", Neuromorph. Comput. Eng.
2:044017 (2022) derive the rule; Journé, Garcia Rodriguez, Guo and Moraitis,
"Hebbian deep learning without feedback", ICLR 2023, stack it into deep
convolutional networks. For a sample ``x`` with currents ``u_k = w_k . x``:

    y_k = softmax(u / temperature)_k                   (soft winner-take-all)
    dw_k = sum over the batch of y_k (x - u_k w_k)     (the plasticity rule)

In the anti-Hebbian form of the ICLR paper (its "soft anti-Hebbian"
plasticity), every unit but the sample's hard winner ``argmax_k u_k`` learns
with ``-y_k`` instead of ``y_k``, so the losers move away from the input.
As in the authors' released code, the change is scaled by its largest
absolute entry, and each unit's rate is scaled by how far its weight norm
still is from 1,

    eta_k = eta (|norm(w_k) - 1| + 1e-10)^rate_power   (rate_power 0.5),

so a unit slows down as its norm converges to 1 (the block optimizer's
learning rate is ``eta``; the paper uses 0.08, 0.005 and 0.01 for its three
convolutional layers). A convolutional block learns its filters with every
patch position a sample, the softmax taken over channels at each position.

With ``init_radius > 0`` each unit starts on the sphere of that radius (the
authors' released CNN settings use 25), so the adaptive rate starts large.
The rule learns from the currents ``u``; what the block outputs is its
body's own forward pass, so the body lists the layers the paper stacks: a
non-affine batchnorm, the convolution, an activation and pooling, e.g.
``[{type: batchnorm, affine: false}, {type: conv, out: 96, kernel: 5, bias:
false}, {type: relu}, {type: power, n: 0.7}, {type: maxpool, kernel: 4,
stride: 2, padding: 1}]``. The ICLR paper's activation subtracts the channel
mean before the power ("triangle"); on the MNIST subset the soft
winner-take-all itself (a softmax over channels at the rule's temperature)
gives the best probe features (``experiments/softhebb_conv_mnist.yaml``).

Example:
    >>> import torch
    >>> u = torch.tensor([[2.0, 0.0]])
    >>> anti_hebbian(soft_wta(u, 1.0), u).round(decimals=3)
    tensor([[ 0.8810, -0.1190]])
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from localearn.rule import BlockContext, require
from localearn.rules._plasticity import WeightLayerRule, find_weight_layer, unit_norms


def soft_wta(u: torch.Tensor, temperature: float) -> torch.Tensor:
    """Soft winner-take-all: ``softmax(u / temperature)`` over units.

    Args:
        u: currents ``(n, units)``.
        temperature: softness; small values approach a hard winner-take-all.

    Returns:
        ``(n, units)`` activities summing to 1 per sample.
    """
    return torch.softmax(u / temperature, dim=1)


def anti_hebbian(y: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Flip the sign of every unit's activity except each sample's hard winner.

    Args:
        y: soft winner-take-all activity ``(n, units)``.
        u: currents ``(n, units)``; the winner is ``argmax`` of each row.

    Returns:
        ``y`` with ``-y`` for all units but the winner.
    """
    rows = torch.arange(u.shape[0], device=u.device)
    signed = -y
    winners = u.argmax(dim=1)
    signed[rows, winners] = y[rows, winners]
    return signed


def softhebb_delta(
    x: torch.Tensor, u: torch.Tensor, w: torch.Tensor, y: torch.Tensor
) -> torch.Tensor:
    """SoftHebb change ``dw_k = sum_n y_k (x - u_k w_k)``, max-scaled.

    Args:
        x: samples ``(n, D)``.
        u: currents ``(n, units)``.
        w: weights ``(units, D)``.
        y: learning activity ``(n, units)`` (soft winner-take-all, signed for
            the anti-Hebbian form).

    Returns:
        The change shaped like ``w``, its largest absolute entry 1.

    Example:
        >>> x = torch.tensor([[1.0, 0.0]]); w = torch.tensor([[0.5, 0.0]])
        >>> softhebb_delta(x, x @ w.T, w, torch.ones(1, 1)).tolist()
        [[1.0, 0.0]]
    """
    change = y.T @ x - (y * u).sum(0).unsqueeze(1) * w
    return change / change.abs().max().clamp_min(1e-30)


def adaptive_rate(w: torch.Tensor, power: float) -> torch.Tensor:
    """Per-unit rate factor ``(|norm(w_k) - 1| + 1e-10)^power``.

    Args:
        w: weights ``(units, D)``.
        power: exponent; 0 gives every unit the same rate.

    Returns:
        ``(units,)`` factors.

    Example:
        >>> adaptive_rate(torch.tensor([[3.0, 4.0], [0.0, 2.0]]), 0.5).tolist()
        [2.0, 1.0]
    """
    return (unit_norms(w) - 1).abs().add(1e-10).pow(power)


@dataclass
class SoftHebbConfig:
    """Hyperparameters of :class:`SoftHebb` (defaults: the ICLR 2023 paper).

    Attributes:
        temperature: softmax temperature, ``> 0`` (the paper's first layer:
            1; its deeper layers 1/0.65 and 1/0.25).
        anti_hebbian: losers learn with the opposite sign (the paper's soft
            anti-Hebbian plasticity); false gives the original SoftHebb.
        rate_power: exponent of the norm-adaptive rate, ``>= 0`` (paper: 0.5;
            0 turns the adaptive rate off).
        init_radius: at setup each unit's weights are redrawn from a normal
            distribution and scaled to this norm, so the adaptive rate starts
            at ``(init_radius - 1)^rate_power``; 0 keeps the layer's own
            initialisation.
    """

    temperature: float = 1.0
    anti_hebbian: bool = True
    rate_power: float = 0.5
    init_radius: float = 0.0


class SoftHebb(WeightLayerRule):
    """SoftHebb: soft winner-take-all Hebbian plasticity, anti-Hebbian losers.

    Example:
        >>> import torch
        >>> from localearn.network import Network
        >>> net = Network.from_config(
        ...     {"layers": [{"type": "conv", "out": 8, "kernel": 5, "bias": False}],
        ...      "rule": {"name": "softhebb", "init_radius": 25.0}},
        ...     in_shape=(1, 28, 28), n_classes=10)
        >>> round(net.blocks["block1"].rule.diagnostics()["weight_norm_mean"], 3)
        25.0
    """

    Config = SoftHebbConfig
    default_name = "softhebb"
    invalid = [{"temperature": 0.0}, {"rate_power": -0.5}, {"init_radius": -1.0}]

    def validate(self) -> None:
        c = self.config
        require(
            c.temperature > 0,
            self.label,
            f"temperature must be > 0, got {c.temperature}",
        )
        require(
            c.rate_power >= 0,
            self.label,
            f"rate_power must be >= 0, got {c.rate_power}",
        )
        require(
            c.init_radius >= 0,
            self.label,
            f"init_radius must be >= 0, got {c.init_radius}",
        )

    def setup(self, context: BlockContext, body: nn.Module) -> None:
        radius = self.config.init_radius
        if radius > 0:
            # each unit's weights on the sphere of the chosen radius
            name = find_weight_layer(body, self.label, context.name).param
            weight = body.get_parameter(name)
            with torch.no_grad():
                drawn = torch.randn_like(weight).flatten(1)
                drawn *= radius / unit_norms(drawn).unsqueeze(1)
                weight.copy_(drawn.reshape(weight.shape))
        super().setup(context, body)

    def learn(self, x, u, w):
        c = self.config

        # soft winner-take-all, anti-Hebbian for the losers
        y = soft_wta(u, c.temperature)
        if c.anti_hebbian:
            y = anti_hebbian(y, u)

        # plasticity, each unit's rate slowing as its norm reaches 1
        change = softhebb_delta(x, u, w, y)
        return adaptive_rate(w, c.rate_power).unsqueeze(1) * change, u
