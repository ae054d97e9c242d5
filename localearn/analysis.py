"""Representation analyses: linear CKA between blocks of two networks.

Linear centred kernel alignment (Kornblith, Norouzi, Lee and Hinton, "Similarity
of neural network representations revisited", ICML 2019, eq. 5): for feature
matrices ``X`` (n x p) and ``Y`` (n x q) of the same n samples, centred by
column,

    CKA(X, Y) = ||Y^T X||_F^2 / (||X^T X||_F ||Y^T Y||_F)

It is 1 for identical representations, invariant to orthogonal transforms
and isotropic scaling of either, and 0 when the features are uncorrelated.

Example:
    >>> import torch
    >>> x = torch.randn(50, 4, dtype=torch.float64)
    >>> round(float(linear_cka(x, 3 * x)), 6)
    1.0
"""

from __future__ import annotations

from collections.abc import Mapping

import torch


def linear_cka(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Linear CKA between two feature matrices of the same samples.

    Args:
        x: ``(n, p)`` features.
        y: ``(n, q)`` features of the same ``n`` samples.

    Returns:
        A scalar tensor in [0, 1].
    """
    if x.shape[0] != y.shape[0]:
        raise ValueError(
            "CKA needs the same samples in both: got "
            f"{x.shape[0]} and {y.shape[0]} rows"
        )
    x = x.double().flatten(1)
    y = y.double().flatten(1)
    x = x - x.mean(0)
    y = y - y.mean(0)
    # CKA is invariant to isotropic scaling: normalise first, so that tiny or
    # huge activations do not under- or overflow the products below
    x = x / x.norm().clamp_min(1e-300)
    y = y / y.norm().clamp_min(1e-300)
    cross = (y.T @ x).pow(2).sum()
    return cross / ((x.T @ x).norm() * (y.T @ y).norm()).clamp_min(1e-30)


def cka_matrix(
    a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor]
) -> tuple[list[str], list[str], torch.Tensor]:
    """CKA between every block of one network and every block of another.

    Args:
        a: block name -> features of network A on a fixed set of samples.
        b: block name -> features of network B on the same samples.

    Returns:
        Row names (A's blocks), column names (B's blocks) and the matrix.
    """
    rows, cols = list(a), list(b)
    out = torch.zeros(len(rows), len(cols), dtype=torch.float64)
    for i, r in enumerate(rows):
        for j, c in enumerate(cols):
            out[i, j] = linear_cka(a[r], b[c])
    return rows, cols, out


def cka_table(
    a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor]
) -> dict[str, list]:
    """:func:`cka_matrix` as plain lists, ready for JSON.

    Args:
        a: block name -> features of network A (the rows).
        b: block name -> features of network B on the same samples (the columns).

    Returns:
        ``{"rows": [...], "cols": [...], "values": [[...], ...]}``, row ``i``
        and column ``j`` holding CKA(A's block i, B's block j).

    Example:
        >>> import torch
        >>> f = {"b1": torch.randn(30, 4), "b2": torch.randn(30, 2)}
        >>> t = cka_table(f, f)
        >>> t["rows"], [round(t["values"][i][i], 6) for i in range(2)]
        (['b1', 'b2'], [1.0, 1.0])
    """
    rows, cols, values = cka_matrix(a, b)
    return {"rows": rows, "cols": cols, "values": values.tolist()}
