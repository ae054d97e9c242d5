"""Layers that block bodies are built from, and the patch grid of the input.

A layer is written in a config as a mapping with a ``type`` and its options,
for example ``{type: conv, out: 64, kernel: 3}``. Whether a convolution or a
pooling is 1-D or 2-D follows from the shape of its input, so the same layer
list serves images and sequences.

Example:
    >>> body, shape = build_body([{"type": "conv", "out": 8}, {"type": "relu"}],
    ...                          (1, 8, 8))
    >>> shape
    (8, 8, 8)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from localearn.errors import ConfigError, ShapeError, UnknownNameError


class PreActResidual(nn.Module):
    """Pre-activation residual unit (He et al., ECCV 2016, "ResNet v2").

    Args:
        in_ch: input channels.
        out_ch: output channels.
        stride: stride of the spatial convolution.
        bottleneck: if true, the 1x1-3x3-1x1 bottleneck of ResNet-50 with
            ``out_ch // 4`` inner channels; otherwise two 3x3 convolutions.
        norm: ``batch`` or ``none`` (no normalisation).
        dims: 1 or 2 spatial dimensions.
    """

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        stride: int = 1,
        bottleneck: bool = False,
        norm: str = "batch",
        dims: int = 2,
    ) -> None:
        super().__init__()
        conv = nn.Conv2d if dims == 2 else nn.Conv1d
        bn = nn.BatchNorm2d if dims == 2 else nn.BatchNorm1d

        def make_norm(ch: int) -> nn.Module:
            return bn(ch) if norm == "batch" else nn.Identity()

        if bottleneck:
            mid = max(out_ch // 4, 1)
            widths = [(in_ch, mid, 1, 1), (mid, mid, 3, stride), (mid, out_ch, 1, 1)]
        else:
            widths = [(in_ch, out_ch, 3, stride), (out_ch, out_ch, 3, 1)]
        self.norms = nn.ModuleList(make_norm(i) for i, _, _, _ in widths)
        self.convs = nn.ModuleList(
            conv(i, o, k, stride=s, padding=k // 2, bias=False) for i, o, k, s in widths
        )
        self.shortcut: nn.Module | None = None
        if stride != 1 or in_ch != out_ch:
            self.shortcut = conv(in_ch, out_ch, 1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.norms[0](x))
        skip = self.shortcut(out) if self.shortcut is not None else x
        out = self.convs[0](out)
        for norm, conv in zip(self.norms[1:], self.convs[1:], strict=True):
            out = conv(torch.relu(norm(out)))
        return out + skip


class Power(nn.Module):
    """Rectified power ``relu(x) ** n`` (Krotov and Hopfield, PNAS 2019)."""

    def __init__(self, n: float = 1.0) -> None:
        super().__init__()
        self.n = n

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x).pow(self.n)


class Softmax(nn.Module):
    """Soft winner-take-all over channels: ``softmax(x / temperature)`` on axis 1.

    The output nonlinearity of SoftHebb layers (Moraitis et al., Neuromorphic
    Computing and Engineering 2022; Journé et al., ICLR 2023).
    """

    def __init__(self, temperature: float = 1.0) -> None:
        super().__init__()
        if temperature <= 0:
            raise ConfigError(
                f"layer 'softmax' needs temperature > 0, got {temperature}"
            )
        self.temperature = temperature

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(x / self.temperature, dim=1)


class L2Norm(nn.Module):
    """Divide each feature vector by its length: ``x / (||x||_2 + eps)``.

    The norm is taken over axis 1: each sample's vector for ``(B, D)``
    inputs, each position's channel vector for conv maps ``(B, C, ...)``. It
    has no parameters. Forward-Forward (Hinton 2022, section 2.1) puts it at
    the input of every layer after the first, so a layer cannot pass its
    goodness (the length of its output) on to the next one, which sees only
    the direction.

    Args:
        eps: added to the norm, so a zero vector stays zero.
    """

    def __init__(self, eps: float = 1e-6) -> None:
        super().__init__()
        if eps <= 0:
            raise ConfigError(f"layer 'l2norm' needs eps > 0, got {eps}")
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x / (x.norm(dim=1, keepdim=True) + self.eps)


def _dims(in_shape: tuple[int, ...], layer: str) -> int:
    dims = len(in_shape) - 1
    if dims not in (1, 2):
        raise ShapeError(
            f"layer '{layer}' needs an input of shape (channels, length) or "
            f"(channels, height, width), got per-sample shape {in_shape}; "
            "put it before any flatten or linear layer"
        )
    return dims


def _conv(spec: dict, in_shape: tuple[int, ...]) -> nn.Module:
    dims = _dims(in_shape, "conv")
    kernel = spec.pop("kernel", 3)
    padding = spec.pop("padding", "same" if spec.get("stride", 1) == 1 else 0)
    if padding == "same":
        padding = kernel // 2
    cls = nn.Conv2d if dims == 2 else nn.Conv1d
    return cls(
        in_shape[0],
        spec.pop("out"),
        kernel,
        stride=spec.pop("stride", 1),
        padding=padding,
        bias=spec.pop("bias", True),
    )


def _linear(spec: dict, in_shape: tuple[int, ...]) -> nn.Module:
    layer = nn.Linear(math.prod(in_shape), spec.pop("out"), bias=spec.pop("bias", True))
    if len(in_shape) > 1:
        return nn.Sequential(nn.Flatten(), layer)
    return layer


def _pool(kind: str) -> Callable[[dict, tuple[int, ...]], nn.Module]:
    def make(spec: dict, in_shape: tuple[int, ...]) -> nn.Module:
        dims = _dims(in_shape, kind)
        kernel = spec.pop("kernel", 2)
        stride = spec.pop("stride", kernel)
        table = {
            ("max", 1): nn.MaxPool1d,
            ("max", 2): nn.MaxPool2d,
            ("avg", 1): nn.AvgPool1d,
            ("avg", 2): nn.AvgPool2d,
        }
        return table[kind, dims](kernel, stride=stride, padding=spec.pop("padding", 0))

    return make


def _norm(spec: dict, in_shape: tuple[int, ...]) -> nn.Module:
    if len(in_shape) == 1:
        return nn.BatchNorm1d(in_shape[0], affine=spec.pop("affine", True))
    dims = _dims(in_shape, "batchnorm")
    cls = nn.BatchNorm2d if dims == 2 else nn.BatchNorm1d
    return cls(in_shape[0], affine=spec.pop("affine", True))


def _residual(spec: dict, in_shape: tuple[int, ...]) -> nn.Module:
    return PreActResidual(
        in_shape[0],
        spec.pop("out", in_shape[0]),
        stride=spec.pop("stride", 1),
        bottleneck=spec.pop("bottleneck", False),
        norm=spec.pop("norm", "batch"),
        dims=_dims(in_shape, "residual"),
    )


LAYERS: dict[str, Callable[[dict, tuple[int, ...]], nn.Module]] = {
    "conv": _conv,
    "linear": _linear,
    "maxpool": _pool("max"),
    "avgpool": _pool("avg"),
    "batchnorm": _norm,
    "residual": _residual,
    "flatten": lambda spec, shape: nn.Flatten(),
    "relu": lambda spec, shape: nn.ReLU(),
    "gelu": lambda spec, shape: nn.GELU(),
    "tanh": lambda spec, shape: nn.Tanh(),
    "sigmoid": lambda spec, shape: nn.Sigmoid(),
    "power": lambda spec, shape: Power(spec.pop("n", 1.0)),
    "softmax": lambda spec, shape: Softmax(spec.pop("temperature", 1.0)),
    "l2norm": lambda spec, shape: L2Norm(spec.pop("eps", 1e-6)),
}
WEIGHT_LAYERS = ("conv", "linear", "residual")


def build_layer(spec: Mapping[str, Any], in_shape: tuple[int, ...]) -> nn.Module:
    """Build one layer from its config mapping.

    Args:
        spec: mapping with ``type`` and the layer's options.
        in_shape: per-sample input shape.

    Returns:
        The layer module.

    Raises:
        UnknownNameError: unknown layer type (lists the valid ones).
        ConfigError: unknown or missing option.
    """
    spec = dict(spec)
    kind = spec.pop("type", None)
    if kind not in LAYERS:
        raise UnknownNameError(
            f"unknown layer type {kind!r}; valid types: {', '.join(sorted(LAYERS))}"
        )
    try:
        module = LAYERS[kind](spec, tuple(in_shape))
    except KeyError as err:
        raise ConfigError(f"layer '{kind}' needs the option {err}") from None
    if spec:
        raise ConfigError(
            f"layer '{kind}' does not take the option(s) {', '.join(sorted(spec))}"
        )
    return module


def output_shape(module: nn.Module, in_shape: tuple[int, ...]) -> tuple[int, ...]:
    """Per-sample output shape of ``module`` for a per-sample input shape."""
    was_training = module.training
    module.eval()
    with torch.no_grad():
        out = module(torch.zeros(2, *in_shape))
    module.train(was_training)
    return tuple(out.shape[1:])


def build_body(
    specs: Sequence[Mapping[str, Any]], in_shape: tuple[int, ...]
) -> tuple[nn.Sequential, tuple[int, ...]]:
    """Build a block body from a list of layer specs.

    Args:
        specs: layer config mappings, applied in order.
        in_shape: per-sample input shape of the first layer.

    Returns:
        The body and its per-sample output shape.
    """
    layers = []
    shape = tuple(in_shape)
    for spec in specs:
        layer = build_layer(spec, shape)
        try:
            shape = output_shape(layer, shape)
        except RuntimeError as err:
            raise ShapeError(
                f"layer {dict(spec)} cannot take an input of shape {shape}: "
                f"{str(err).splitlines()[0]}"
            ) from None
        layers.append(layer)
    return nn.Sequential(*layers), shape


class Patchify(nn.Module):
    """Cut each input into a grid of overlapping patches.

    An image ``(B, C, H, W)`` becomes ``(B * gh * gw, C, size, size)`` and a
    sequence ``(B, C, L)`` becomes ``(B * g, C, size)``, patches in row-major
    grid order, as in Greedy InfoMax (Löwe et al., NeurIPS 2019, sec. 4.1),
    where each patch is encoded on its own.

    Args:
        size: patch side (or length).
        stride: step between patch starts.
    """

    def __init__(self, size: int, stride: int) -> None:
        super().__init__()
        if size < 1 or stride < 1:
            raise ConfigError(
                f"patches need size >= 1 and stride >= 1, got size={size}, "
                f"stride={stride}"
            )
        self.size = size
        self.stride = stride

    def grid(self, in_shape: tuple[int, ...]) -> tuple[int, ...]:
        """Grid shape for a per-sample input shape."""
        spatial = in_shape[1:]
        if any(s < self.size for s in spatial):
            raise ShapeError(
                f"patch size {self.size} is larger than the input {in_shape}; "
                "choose network.patches.size no larger than the input"
            )
        return tuple((s - self.size) // self.stride + 1 for s in spatial)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 4:
            b, c = x.shape[:2]
            p = x.unfold(2, self.size, self.stride).unfold(3, self.size, self.stride)
            # (B, C, gh, gw, s, s) -> (B, gh, gw, C, s, s)
            p = p.permute(0, 2, 3, 1, 4, 5)
            return p.reshape(-1, c, self.size, self.size)
        if x.dim() == 3:
            c = x.shape[1]
            p = x.unfold(2, self.size, self.stride).permute(0, 2, 1, 3)
            return p.reshape(-1, c, self.size)
        raise ShapeError(
            f"patches need inputs of shape (B, C, L) or (B, C, H, W), got "
            f"{tuple(x.shape)}"
        )


def to_grid(y: torch.Tensor, grid: tuple[int, ...]) -> torch.Tensor:
    """Pool each patch's output to one vector and lay the vectors on the grid.

    Args:
        y: block output with ``batch * prod(grid)`` leading entries, or, when
            ``grid`` is empty, an output of shape ``(B, C, *spatial)`` that is
            its own grid.
        grid: patch grid of the input.

    Returns:
        ``(B, C, *grid)``; for an empty grid, ``y`` unchanged.
    """
    if not grid:
        return y
    n = math.prod(grid)
    vec = y.flatten(2).mean(2) if y.dim() > 2 else y
    b = vec.shape[0] // n
    out = vec.reshape(b, *grid, vec.shape[1])
    return out.movedim(-1, 1)
