"""Linear probes: what a block's frozen features tell about the labels.

A probe is a multinomial logistic regression on standardised features, fitted
by full-batch L-BFGS with a fixed L2 penalty, the same for every rule, block
and network in a run. It is fitted at several label budgets (a number of
labelled training samples per class, or all labels) and scored by accuracy
over every test sample.

Example:
    >>> import torch
    >>> g = torch.Generator().manual_seed(0)
    >>> x = torch.randn(200, 5, generator=g); y = (x[:, 0] > 0).long()
    >>> probe_accuracy(x, y, x, y, n_classes=2) > 0.95
    True
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.nn import functional as F

from localearn.errors import ConfigError


@dataclass
class ProbeConfig:
    """Probe protocol, identical for every model compared.

    Attributes:
        l2: penalty on the squared weights, added to the mean cross-entropy.
        max_iter: L-BFGS iterations.
    """

    l2: float = 1e-3
    max_iter: int = 300


def balanced_subset(labels: torch.Tensor, per_class: int, seed: int) -> torch.Tensor:
    """Indices of ``per_class`` samples of every class, drawn with ``seed``.

    Raises:
        ConfigError: if a class has fewer samples than asked for.
    """
    gen = torch.Generator().manual_seed(seed)
    picks = []
    for c in torch.unique(labels):
        idx = torch.nonzero(labels == c).flatten()
        if len(idx) < per_class:
            raise ConfigError(
                f"label budget of {per_class} per class, but class {int(c)} has "
                f"only {len(idx)} training samples; lower evaluate.budgets"
            )
        picks.append(idx[torch.randperm(len(idx), generator=gen)[:per_class]])
    return torch.cat(picks).sort().values


def fit_probe(
    x: torch.Tensor, y: torch.Tensor, n_classes: int, cfg: ProbeConfig | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Fit the probe; returns (weight, bias, feature mean, feature scale)."""
    cfg = cfg or ProbeConfig()
    x = x.double()
    mean = x.mean(0)
    scale = x.std(0, unbiased=False).clamp_min(1e-6)
    z = (x - mean) / scale
    w = torch.zeros(z.shape[1], n_classes, dtype=z.dtype, requires_grad=True)
    b = torch.zeros(n_classes, dtype=z.dtype, requires_grad=True)
    opt = torch.optim.LBFGS(
        [w, b],
        max_iter=cfg.max_iter,
        line_search_fn="strong_wolfe",
        tolerance_grad=1e-6,
        tolerance_change=1e-9,
    )

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(z @ w + b, y) + cfg.l2 * w.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return w.detach(), b.detach(), mean, scale


def probe_accuracy(
    x_train: torch.Tensor,
    y_train: torch.Tensor,
    x_test: torch.Tensor,
    y_test: torch.Tensor,
    n_classes: int,
    cfg: ProbeConfig | None = None,
) -> float:
    """Fit a probe on the training features and return test accuracy.

    Args:
        x_train: ``(N, D)`` frozen features of the labelled training samples.
        y_train: their labels.
        x_test: ``(M, D)`` features of the test samples.
        y_test: their labels.
        n_classes: number of classes.
        cfg: probe protocol.

    Returns:
        Fraction of test samples classified correctly.
    """
    if x_train.shape[1] != x_test.shape[1]:
        raise ValueError(
            f"train features have {x_train.shape[1]} dimensions but test features "
            f"have {x_test.shape[1]}"
        )
    w, b, mean, scale = fit_probe(x_train, y_train, n_classes, cfg)
    pred = (((x_test.double() - mean) / scale) @ w + b).argmax(1)
    return float((pred == y_test).double().mean())
