"""Negative data for rules that contrast real inputs with corrupted ones.

A rule that declares ``negatives = True`` (the Forward-Forward rule) learns to
tell real inputs (positive data) from negative data. The scheduler builds one
negative for every raw input of a minibatch with :func:`make_negatives`, before
the patch grid is applied, and trains on ``[positives; negatives]``.

Kinds (:data:`KINDS`):

* ``hybrid``: Hinton, "The Forward-Forward Algorithm: Some Preliminary
  Investigations" (2022), section 3.2. A random bit image is blurred
  repeatedly with the filter ``[1/4, 1/2, 1/4]`` along every spatial axis and
  thresholded at 0.5; the resulting mask keeps large regions of one image and
  fills the rest from another image of the batch:
  ``mask * x + (1 - mask) * x[perm]``, with ``perm`` a derangement (no sample
  is mixed with itself). The hybrids keep the short-range correlations of
  real images and break the long-range ones (shapes).
* ``shuffle``: every sample's features are reordered by one random
  permutation drawn for the whole batch, which keeps each sample's values
  and breaks all spatial structure.

Example:
    >>> import torch
    >>> x = torch.rand(4, 1, 8, 8)
    >>> g = torch.Generator().manual_seed(0)
    >>> make_negatives(x, g, "hybrid").shape
    torch.Size([4, 1, 8, 8])
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

from localearn.errors import ShapeError, UnknownNameError

KINDS = ("hybrid", "shuffle")
#: blurring passes of the random bit image; Hinton (2022) says "repeatedly"
#: without a number. Six passes give blobs a few pixels wide on 28x28 digits.
BLURS = 6


def derangement(n: int, generator: torch.Generator) -> torch.Tensor:
    """A random permutation of ``range(n)`` without fixed points.

    The samples are put in a random order and each one is sent ``k`` places
    further along it (``1 <= k < n``, also random), so ``perm[i] != i``.

    Args:
        n: number of elements, at least 2.
        generator: source of randomness.

    Returns:
        Long tensor of shape ``(n,)`` on the generator's device.

    Example:
        >>> p = derangement(5, torch.Generator().manual_seed(0))
        >>> bool((p != torch.arange(5)).all())
        True
    """
    if n < 2:
        raise ShapeError(
            f"a derangement needs at least 2 elements, got {n}; hybrid negatives "
            "mix two different samples, so the batch needs at least 2 samples"
        )
    device = generator.device
    order = torch.randperm(n, generator=generator, device=device)
    shift = int(torch.randint(1, n, (1,), generator=generator, device=device))
    perm = torch.empty_like(order)
    perm[order] = order.roll(-shift)
    return perm


def hybrid_mask(
    shape: tuple[int, ...], generator: torch.Generator, blurs: int = BLURS
) -> torch.Tensor:
    """Blurred and thresholded random bit images (Hinton 2022, section 3.2).

    Args:
        shape: ``(B, *spatial)`` with one or two spatial axes.
        generator: source of randomness.
        blurs: passes of the ``[1/4, 1/2, 1/4]`` filter along each axis.

    Returns:
        Float tensor of ``shape`` holding only 0 and 1.

    Example:
        >>> m = hybrid_mask((2, 8, 8), torch.Generator().manual_seed(0))
        >>> sorted(m.unique().tolist()) in ([0.0], [1.0], [0.0, 1.0])
        True
    """
    dims = len(shape) - 1
    if dims not in (1, 2):
        raise ShapeError(
            f"hybrid masks need one or two spatial axes, got shape {tuple(shape)}"
        )
    device = generator.device

    # random bit image
    bits = torch.randint(0, 2, shape, generator=generator, device=device)
    mask = bits.float().unsqueeze(1)

    # repeated blurring with [1/4, 1/2, 1/4] along each axis (edges replicated)
    kernel = torch.tensor([0.25, 0.5, 0.25], device=device)
    for _ in range(blurs):
        if dims == 1:
            mask = F.conv1d(F.pad(mask, (1, 1), mode="replicate"), kernel.view(1, 1, 3))
        else:
            padded = F.pad(mask, (1, 1, 1, 1), mode="replicate")
            mask = F.conv2d(padded, kernel.view(1, 1, 1, 3))
            mask = F.conv2d(mask, kernel.view(1, 1, 3, 1))

    # threshold at 0.5
    return (mask.squeeze(1) > 0.5).float()


def make_negatives(
    x: torch.Tensor, generator: torch.Generator, kind: str = "hybrid"
) -> torch.Tensor:
    """One negative sample for every sample of a raw minibatch.

    A pure function of its arguments: the same inputs and a generator in the
    same state give the same negatives.

    Args:
        x: raw inputs, ``(B, C, H, W)`` images, ``(B, C, L)`` sequences or
            ``(B, L)`` vectors.
        generator: source of randomness, on the device of ``x``.
        kind: one of :data:`KINDS` (see the module docstring).

    Returns:
        Negatives of the shape and dtype of ``x``.

    Raises:
        UnknownNameError: unknown ``kind``.
        ShapeError: an input shape the kind cannot handle, or a batch of one
            sample for ``hybrid``.

    Example:
        >>> x = torch.arange(6.0).view(2, 3)
        >>> neg = make_negatives(x, torch.Generator().manual_seed(1), "shuffle")
        >>> sorted(neg[0].tolist()) == sorted(x[0].tolist())
        True
    """
    if kind == "hybrid":
        if x.dim() not in (2, 3, 4):
            raise ShapeError(
                "hybrid negatives need inputs (B, L), (B, C, L) or (B, C, H, W), "
                f"got {tuple(x.shape)}"
            )
        perm = derangement(len(x), generator)
        spatial = x.shape[2:] if x.dim() > 2 else x.shape[1:]
        mask = hybrid_mask((len(x), *spatial), generator).to(x.dtype)
        if x.dim() > 2:
            mask = mask.unsqueeze(1)  # one mask for all channels of a pixel
        return mask * x + (1 - mask) * x[perm]
    if kind == "shuffle":
        flat = x.reshape(len(x), -1)
        order = torch.randperm(flat.shape[1], generator=generator, device=x.device)
        return flat[:, order].reshape(x.shape)
    raise UnknownNameError(
        f"unknown kind of negative data {kind!r}; valid kinds: {', '.join(KINDS)}"
    )
