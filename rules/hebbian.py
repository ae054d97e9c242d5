"""Classical Hebbian plasticity: Hebb, Oja and BCM.

Each rule learns the one weight layer of its block (linear, or a 1-D or 2-D
convolution whose every patch position is a sample; see
:mod:`localearn.rules._plasticity`). In the equations below ``x`` is a
sample of the layer's input, ``w_i`` the weights of unit ``i``,
``u_i = w_i . x`` the unit's current (the layer's output), ``y_i`` the
postsynaptic activity the rule uses, and ``<.>`` the mean over the samples
of a batch. Each function returns the change ``dw``; the block's optimizer
applies it (plain SGD with learning rate ``eta`` adds ``eta * dw``).

* Hebb: ``dw_i = <y_i x>``, kept bounded by weight decay or by removing the
  part of the change along ``w_i`` (the first-order form of renormalising
  ``w_i`` after every step, Oja 1982, eqs. 2-3).
* Oja (Oja 1982, J. Math. Biol. 15:267): ``dw_i = <y_i (x - y_i w_i)>`` with
  ``y = u``: every unit converges to the unit-norm first principal component.
  The subspace rule (Oja 1989, Int. J. Neural Syst. 1:61),
  ``dW = <y x^T> - <y y^T> W``, makes the units an orthonormal basis of the
  principal subspace; Sanger's generalized Hebbian algorithm (Sanger 1989,
  Neural Networks 2:459), ``dW = <y x^T> - LT(<y y^T>) W`` with ``LT`` the
  lower triangle, makes unit ``i`` the ``i``-th principal component.
* BCM (Bienenstock, Cooper and Munro 1982, J. Neurosci. 2:32), in the
  objective form of Intrator and Cooper (1992, Neural Networks 5:3):
  ``c = sigma(u)``, ``dw_i = <phi(c_i, theta_i) sigma'(u_i) x>`` with
  ``phi(c, theta) = c (c - theta)`` and the sliding threshold
  ``theta_i = E[c_i^2]``, kept as a running mean over batches.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from localearn.rule import BlockContext, require
from localearn.rules._plasticity import WeightLayerRule

HEBB_CONSTRAINTS = ("none", "decay", "norm")
OJA_FORMS = ("single", "subspace", "gha")
ACTIVATIONS = ("linear", "relu", "sigmoid")


def activity(u: torch.Tensor, activation: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Postsynaptic activity ``sigma(u)`` and its slope ``sigma'(u)``.

    Args:
        u: currents ``(n, units)``.
        activation: ``linear``, ``relu`` or ``sigmoid``.

    Returns:
        ``(sigma(u), sigma'(u))``.

    Example:
        >>> c, dc = activity(torch.tensor([[0.0, 2.0]]), "relu")
        >>> c.tolist(), dc.tolist()
        ([[0.0, 2.0]], [[0.0, 1.0]])
    """
    if activation == "relu":
        return torch.relu(u), (u > 0).to(u.dtype)
    if activation == "sigmoid":
        c = torch.sigmoid(u)
        return c, c * (1 - c)
    return u, torch.ones_like(u)


def hebb_delta(
    x: torch.Tensor,
    y: torch.Tensor,
    w: torch.Tensor,
    constraint: str = "norm",
    decay: float = 0.1,
) -> torch.Tensor:
    """Hebbian weight change, bounded by decay or by normalisation.

    ``h_i = <y_i x>``; then ``decay``: ``dw_i = h_i - decay * w_i``;
    ``norm``: ``dw_i = h_i - (h_i . w_i / |w_i|^2) w_i``, the change with its
    component along ``w_i`` removed, so that each unit's norm is kept to first
    order in the learning rate; ``none``: ``dw_i = h_i``.

    Args:
        x: presynaptic samples ``(n, D)``.
        y: postsynaptic activity ``(n, units)``.
        w: weights ``(units, D)``.
        constraint: ``none``, ``decay`` or ``norm``.
        decay: weight decay rate for ``decay``.

    Returns:
        ``dw``, shaped like ``w``.

    Example:
        >>> x = torch.tensor([[1.0, 0.0]]); w = torch.tensor([[1.0, 1.0]])
        >>> hebb_delta(x, x @ w.T, w, "none").tolist()
        [[1.0, 0.0]]
    """
    # hebbian term: correlation of post- and presynaptic activity
    h = y.T @ x / x.shape[0]

    # bound the growth
    if constraint == "decay":
        return h - decay * w
    if constraint == "norm":
        along = (h * w).sum(1, keepdim=True) / (w * w).sum(1, keepdim=True)
        return h - along * w
    return h


def oja_delta(
    x: torch.Tensor, y: torch.Tensor, w: torch.Tensor, form: str = "subspace"
) -> torch.Tensor:
    """Oja's rule: single-unit, subspace, or Sanger's generalized Hebbian form.

    ``dW = <y x^T> - M W`` with ``M = diag(<y y^T>)`` (``single``: each unit on
    its own, Oja 1982), ``M = <y y^T>`` (``subspace``, Oja 1989) or
    ``M = LT(<y y^T>)`` (``gha``, Sanger 1989).

    Args:
        x: presynaptic samples ``(n, D)``.
        y: outputs ``y = x w^T``, ``(n, units)``.
        w: weights ``(units, D)``.
        form: ``single``, ``subspace`` or ``gha``.

    Returns:
        ``dW``, shaped like ``w``.

    Example:
        >>> x = torch.tensor([[1.0, 0.0]]); w = torch.tensor([[0.5, 0.5]])
        >>> oja_delta(x, x @ w.T, w).tolist()
        [[0.375, -0.125]]
    """
    n = x.shape[0]

    # hebbian term and the decay that keeps the units normalised
    hebb = y.T @ x / n
    m = y.T @ y / n
    if form == "single":
        m = torch.diag(torch.diagonal(m))
    elif form == "gha":
        m = torch.tril(m)
    return hebb - m @ w


def bcm_threshold(theta: torch.Tensor, c: torch.Tensor, rate: float) -> torch.Tensor:
    """Slide the BCM threshold toward ``E[c^2]`` of the batch.

    ``theta <- theta + rate * (<c^2> - theta)``.

    Args:
        theta: per-unit threshold ``(units,)``.
        c: activity ``(n, units)``.
        rate: step of the running mean, in ``(0, 1]``.

    Returns:
        The new threshold.
    """
    return theta + rate * (c.pow(2).mean(0) - theta)


def bcm_delta(
    x: torch.Tensor,
    c: torch.Tensor,
    slope: torch.Tensor,
    theta: torch.Tensor,
    w: torch.Tensor,
    decay: float = 0.0,
) -> torch.Tensor:
    """BCM change ``dw_i = <c_i (c_i - theta_i) sigma'(u_i) x> - decay w_i``.

    Args:
        x: presynaptic samples ``(n, D)``.
        c: activity ``sigma(u)``, ``(n, units)``.
        slope: ``sigma'(u)``, ``(n, units)``.
        theta: sliding threshold ``(units,)``.
        w: weights ``(units, D)``.
        decay: weight decay rate.

    Returns:
        ``dw``, shaped like ``w``.

    Example:
        >>> x = torch.tensor([[1.0, 2.0]]); c = torch.tensor([[2.0]])
        >>> bcm_delta(x, c, torch.ones(1, 1), torch.tensor([1.0]), torch.zeros(1, 2))
        tensor([[2., 4.]])
    """
    # phi(c, theta): potentiation above the threshold, depression below
    phi = c * (c - theta)
    return (phi * slope).T @ x / x.shape[0] - decay * w


@dataclass
class HebbConfig:
    """Hyperparameters of :class:`Hebb`.

    Attributes:
        activation: postsynaptic activity ``y = sigma(u)``: ``linear`` or
            ``relu`` (also ``sigmoid``).
        constraint: how growth is bounded: ``norm`` (change orthogonal to the
            weights), ``decay`` (weight decay) or ``none`` (plain Hebb, which
            grows without bound).
        decay: weight decay rate, used with ``constraint: decay``.
    """

    activation: str = "linear"
    constraint: str = "norm"
    decay: float = 0.1


class Hebb(WeightLayerRule):
    """Plain Hebbian learning with weight normalisation or decay.

    Example:
        >>> from localearn.rule import make_rule
        >>> make_rule("hebb", {"constraint": "decay", "decay": 0.05}).config.decay
        0.05
    """

    Config = HebbConfig
    default_name = "hebb"
    invalid = [{"activation": "tanh"}, {"constraint": "clip"}, {"decay": -0.1}]

    def validate(self) -> None:
        c = self.config
        require(
            c.activation in ACTIVATIONS,
            self.label,
            f"activation must be one of {', '.join(ACTIVATIONS)}, got {c.activation!r}",
        )
        require(
            c.constraint in HEBB_CONSTRAINTS,
            self.label,
            f"constraint must be one of {', '.join(HEBB_CONSTRAINTS)}, got "
            f"{c.constraint!r}",
        )
        require(c.decay >= 0, self.label, f"decay must be >= 0, got {c.decay}")

    def learn(self, x, u, w):
        c = self.config
        y, _ = activity(u, c.activation)
        return hebb_delta(x, y, w, c.constraint, c.decay), y


@dataclass
class OjaConfig:
    """Hyperparameters of :class:`Oja`.

    Attributes:
        form: ``subspace`` (Oja 1989: the units span the principal subspace),
            ``gha`` (Sanger 1989: unit ``i`` becomes the ``i``-th principal
            component) or ``single`` (Oja 1982 for each unit on its own: every
            unit becomes the first principal component).
    """

    form: str = "subspace"


class Oja(WeightLayerRule):
    """Oja's rule: principal components by normalised Hebbian learning.

    Example:
        >>> from localearn.network import Network
        >>> net = Network.from_config(
        ...     {"layers": [{"type": "linear", "out": 3, "bias": False}],
        ...      "rule": {"name": "oja", "form": "gha"}}, in_shape=(8,), n_classes=2)
        >>> net.blocks["block1"].rule.site.param
        '0.weight'
    """

    Config = OjaConfig
    default_name = "oja"
    invalid = [{"form": "pca"}]

    def validate(self) -> None:
        form = self.config.form
        require(
            form in OJA_FORMS,
            self.label,
            f"form must be one of {', '.join(OJA_FORMS)}, got {form!r}",
        )

    def learn(self, x, u, w):
        return oja_delta(x, u, w, self.config.form), u


@dataclass
class BCMConfig:
    """Hyperparameters of :class:`BCM` (Intrator and Cooper 1992).

    Attributes:
        activation: ``sigma`` in ``c = sigma(u)``: ``sigmoid`` (the paper's
            smooth nonlinearity), ``relu`` or ``linear`` (the 1982 model).
        threshold_rate: step of the running mean ``theta -> E[c^2]`` per batch,
            in ``(0, 1]``; 1 uses the batch alone.
        decay: weight decay rate (0: none).
    """

    activation: str = "sigmoid"
    threshold_rate: float = 0.1
    decay: float = 0.0


class BCM(WeightLayerRule):
    """BCM: Hebbian above a sliding threshold, anti-Hebbian below it.

    The threshold ``theta`` (one per unit) is the buffer ``threshold``, saved
    with the block's checkpoint. It starts at the first batch's ``<c^2>`` and
    then follows :func:`bcm_threshold`; each step first moves the threshold,
    then computes the change with the new threshold.

    Example:
        >>> from localearn.network import Network
        >>> net = Network.from_config(
        ...     {"layers": [{"type": "conv", "out": 6, "bias": False}],
        ...      "rule": {"name": "bcm"}}, in_shape=(1, 8, 8), n_classes=2)
        >>> net.blocks["block1"].rule.threshold.shape
        torch.Size([6])
    """

    Config = BCMConfig
    default_name = "bcm"
    invalid = [
        {"threshold_rate": 0.0},
        {"threshold_rate": 1.5},
        {"decay": -1.0},
        {"activation": "step"},
    ]

    def validate(self) -> None:
        c = self.config
        require(
            c.activation in ACTIVATIONS,
            self.label,
            f"activation must be one of {', '.join(ACTIVATIONS)}, got {c.activation!r}",
        )
        require(
            0 < c.threshold_rate <= 1,
            self.label,
            f"threshold_rate must be in (0, 1], got {c.threshold_rate}",
        )
        require(c.decay >= 0, self.label, f"decay must be >= 0, got {c.decay}")

    def setup(self, context: BlockContext, body) -> None:
        super().setup(context, body)
        self.register_buffer("threshold", torch.zeros(self.site.units))

    def learn(self, x, u, w):
        cfg = self.config
        c, slope = activity(u, cfg.activation)

        # sliding threshold: running mean of c^2 (the first batch sets it)
        rate = 1.0 if int(self.samples_seen) == 0 else cfg.threshold_rate
        self.threshold.copy_(bcm_threshold(self.threshold, c, rate))

        return bcm_delta(x, c, slope, self.threshold, w, cfg.decay), c

    def diagnostics(self) -> dict[str, float]:
        out = super().diagnostics()
        if self.site is not None:
            out["threshold_mean"] = float(self.threshold.mean())
        return out
