"""Shared plumbing of the Hebbian rule family: one weight layer, seen as samples.

Every Hebbian rule in :mod:`localearn.rules` learns the weight of the single
weight layer of its block (``nn.Linear``, ``nn.Conv1d`` or ``nn.Conv2d``).
The rule sees that layer's input as a matrix ``x`` of samples, one row per
sample, and the layer's weight as a matrix ``w`` of units, one row per unit:

* for a linear layer a sample is an input vector and ``w`` is the weight;
* for a convolution a sample is one patch of the input at one output position
  (cut with :func:`torch.nn.functional.unfold`, honouring the layer's
  padding, padding mode, stride and dilation) and ``w`` holds the filters
  flattened in the same channel-major order.

So the same pure update function of ``(x, u, w)`` serves linear and
convolutional blocks, where ``u = x w^T`` is the layer's output at each
sample. :class:`WeightLayerRule` is the thin base class that finds the layer,
cuts samples, counts winners and reports diagnostics; each rule adds its own
postsynaptic activity and update.

Example:
    >>> import torch
    >>> from torch import nn
    >>> body = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1, bias=False), nn.ReLU())
    >>> site = find_weight_layer(body, "oja", "block1")
    >>> site.param, site.kind, site.units
    ('0.weight', 'conv2d', 4)
    >>> x, geometry = to_samples(torch.randn(2, 1, 5, 5), site)
    >>> x.shape, geometry
    (torch.Size([50, 9]), (2, 5, 5))
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from localearn.errors import ConfigError, ShapeError
from localearn.rule import BlockContext, PlasticityRule

_WEIGHT_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d)


@dataclass
class WeightSite:
    """Where the learned weight lives in a body and how to cut its input.

    Attributes:
        path: module path of the weight layer in the body (``"0"``, ``"0.1"``).
        param: parameter name of its weight (``"0.weight"``).
        kind: ``linear``, ``conv1d`` or ``conv2d``.
        units: output units (features or channels).
        kernel: kernel size per spatial axis (empty for a linear layer).
        stride: stride per spatial axis.
        dilation: dilation per spatial axis.
        pad: ``F.pad`` amounts, last axis first (``(left, right, top, bottom)``).
        pad_mode: ``F.pad`` mode: ``constant``, ``reflect``, ``replicate`` or
            ``circular``.
        in_shape: per-sample shape of the layer's input, set by
            :func:`layer_input_shape`.
    """

    path: str
    param: str
    kind: str
    units: int
    kernel: tuple[int, ...] = ()
    stride: tuple[int, ...] = ()
    dilation: tuple[int, ...] = ()
    pad: tuple[int, ...] = ()
    pad_mode: str = "constant"
    in_shape: tuple[int, ...] = field(default=())


def _describe(modules: list[tuple[str, nn.Module]]) -> str:
    return ", ".join(f"'{name}' ({type(m).__name__})" for name, m in modules)


def find_weight_layer(body: nn.Module, rule: str, block: str) -> WeightSite:
    """Find the one weight layer a Hebbian rule learns, or say what is wrong.

    Args:
        body: the block's body.
        rule: the rule's name, for messages.
        block: the block's name, for messages.

    Returns:
        The layer's :class:`WeightSite` (``in_shape`` still empty).

    Raises:
        ConfigError: no weight layer, several, or trainable parameters
            outside the layer's weight (a bias, an affine batchnorm).
        NotImplementedError: a convolution this family does not learn
            (grouped, transposed, 3-D).
    """
    layers = [(n, m) for n, m in body.named_modules() if isinstance(m, _WEIGHT_LAYERS)]
    unsupported = [
        (n, m)
        for n, m in body.named_modules()
        if isinstance(m, nn.modules.conv._ConvNd) and not isinstance(m, _WEIGHT_LAYERS)
    ]
    if unsupported:
        raise NotImplementedError(
            f"rule '{rule}' of block '{block}' learns Linear, Conv1d and Conv2d "
            f"layers, but the body has {_describe(unsupported)}"
        )
    if len(layers) != 1:
        found = _describe(layers) if layers else "none"
        kinds = ", ".join(type(m).__name__ for m in body.children()) or "no layers"
        raise ConfigError(
            f"rule '{rule}' of block '{block}' needs exactly one weight layer "
            f"(Linear, Conv1d or Conv2d) in its body, found {len(layers)}: {found} "
            f"(body: {kinds}); give each weight layer its own block "
            "(network.split: layer)"
        )
    path, layer = layers[0]
    param = f"{path}.weight" if path else "weight"
    others = [n for n, p in body.named_parameters() if p.requires_grad and n != param]
    if others:
        raise ConfigError(
            f"rule '{rule}' of block '{block}' learns only the weight of layer "
            f"'{path}' ({type(layer).__name__}), but the body has other trainable "
            f"parameters: {', '.join(others)}; build the layer with bias: false "
            "(and a batchnorm with affine: false)"
        )
    if isinstance(layer, nn.Linear):
        return WeightSite(path, param, "linear", layer.out_features)
    return _conv_site(path, param, layer, rule, block)


def _conv_site(path: str, param: str, layer: nn.Module, rule: str, block: str):
    if layer.groups != 1:
        raise NotImplementedError(
            f"rule '{rule}' of block '{block}': layer '{path}' is a grouped "
            f"convolution (groups={layer.groups}); only groups=1 is supported"
        )
    dims = 2 if isinstance(layer, nn.Conv2d) else 1
    kernel = tuple(layer.kernel_size)
    dilation = tuple(layer.dilation)
    stride = tuple(layer.stride)
    if isinstance(layer.padding, str):
        # "valid" pads nothing; "same" splits the total as torch does
        totals = [0] * dims
        if layer.padding == "same":
            totals = [d * (k - 1) for d, k in zip(dilation, kernel, strict=True)]
        sides = [(t // 2, t - t // 2) for t in totals]
    else:
        sides = [(p, p) for p in layer.padding]
    pad = tuple(v for side in reversed(sides) for v in side)
    mode = "constant" if layer.padding_mode == "zeros" else layer.padding_mode
    kind = f"conv{dims}d"
    return WeightSite(
        path, param, kind, layer.out_channels, kernel, stride, dilation, pad, mode
    )


class _Captured(Exception):
    """Raised by a pre-hook to stop the body once the layer's input is known."""

    def __init__(self, value: torch.Tensor) -> None:
        super().__init__()
        self.value = value


def layer_input(body: nn.Module, site: WeightSite, x: torch.Tensor) -> torch.Tensor:
    """The weight layer's input for a batch: ``x`` through the layers before it.

    The body runs only up to the weight layer (a pre-hook stops it there), so
    the layers after it cost nothing.

    Args:
        body: the block's body.
        site: where the weight layer is.
        x: the block's input batch.

    Returns:
        The input the weight layer receives.
    """
    if not site.path:
        return x

    def stop(module: nn.Module, args: tuple) -> None:
        raise _Captured(args[0])

    handle = body.get_submodule(site.path).register_forward_pre_hook(stop)
    try:
        body(x)
    except _Captured as captured:
        return captured.value
    finally:
        handle.remove()
    raise RuntimeError(f"weight layer '{site.path}' was not reached by the body")


def layer_input_shape(body: nn.Module, site: WeightSite, in_shape: tuple) -> tuple:
    """Per-sample input shape of the weight layer for a block input shape."""
    was_training = body.training
    body.eval()
    with torch.no_grad():
        pre = layer_input(body, site, torch.zeros(2, *in_shape))
    body.train(was_training)
    return tuple(pre.shape[1:])


def to_samples(pre: torch.Tensor, site: WeightSite) -> tuple[torch.Tensor, tuple]:
    """Cut the weight layer's input into samples, one per row.

    Args:
        pre: the layer's input, ``(B, ..., D)`` for a linear layer or
            ``(B, C, *spatial)`` for a convolution.
        site: the layer.

    Returns:
        ``x`` of shape ``(n, D)`` and the geometry needed by
        :func:`to_layer_output`: the leading shape for a linear layer, or
        ``(B, *spatial_out)`` for a convolution (``n = B * prod(spatial_out)``).
    """
    if site.kind == "linear":
        return pre.reshape(-1, pre.shape[-1]), tuple(pre.shape[:-1])
    dims = len(site.kernel)
    if pre.dim() != dims + 2:
        axes = "H, W" if dims == 2 else "L"
        raise ShapeError(
            f"a {site.kind} layer needs inputs of shape (B, C, {axes}), got "
            f"{tuple(pre.shape)}"
        )
    padded = F.pad(pre, site.pad, mode=site.pad_mode) if any(site.pad) else pre
    kernel, stride, dilation = site.kernel, site.stride, site.dilation
    if dims == 1:
        # a sequence is an image of height 1
        padded = padded.unsqueeze(2)
        kernel, stride, dilation = (1, *kernel), (1, *stride), (1, *dilation)
    cols = F.unfold(padded, kernel, dilation=dilation, stride=stride)
    spatial = [
        (s - d * (k - 1) - 1) // t + 1
        for s, k, t, d in zip(padded.shape[2:], kernel, stride, dilation, strict=True)
    ]
    out_spatial = tuple(spatial[-dims:])
    x = cols.transpose(1, 2).reshape(-1, cols.shape[1])
    return x, (pre.shape[0], *out_spatial)


def to_layer_output(u: torch.Tensor, site: WeightSite, geometry: tuple) -> torch.Tensor:
    """Lay per-sample unit activity ``(n, units)`` out as the layer's output."""
    if site.kind == "linear":
        return u.reshape(*geometry, site.units)
    b, spatial = geometry[0], geometry[1:]
    return (
        u.reshape(b, math.prod(spatial), site.units)
        .transpose(1, 2)
        .reshape(b, site.units, *spatial)
    )


def to_units(y: torch.Tensor, site: WeightSite) -> torch.Tensor:
    """Inverse of :func:`to_layer_output`: ``(n, units)`` rows of unit activity."""
    if site.kind == "linear":
        return y.reshape(-1, y.shape[-1])
    return y.flatten(2).transpose(1, 2).reshape(-1, y.shape[1])


def unit_norms(w: torch.Tensor, p: float = 2.0) -> torch.Tensor:
    """The ``p``-norm of each unit's weights (rows of ``w``)."""
    return torch.linalg.vector_norm(w, ord=p, dim=1)


def fields_of(
    weight: torch.Tensor, site: WeightSite, image_shape: tuple[int, ...] = ()
) -> torch.Tensor:
    """A layer's weights as images ``(units, C, h, w)`` for the report.

    Args:
        weight: the layer's weight.
        site: the layer.
        image_shape: for a linear layer that reads a flattened image or
            sequence, its shape ``(C, H, W)`` or ``(C, L)``; by default the
            layer's own input shape.
    """
    w = weight.detach()
    if site.kind == "conv2d":
        return w.clone()
    if site.kind == "conv1d":
        return w.unsqueeze(2).clone()
    shape = site.in_shape
    if image_shape and math.prod(image_shape) == math.prod(shape):
        shape = tuple(image_shape)
    if len(shape) == 3:
        return w.reshape(site.units, *shape).clone()
    if len(shape) == 2:
        return w.reshape(site.units, shape[0], 1, shape[1]).clone()
    return w.reshape(site.units, 1, 1, -1).clone()


class WeightLayerRule(PlasticityRule):
    """Base of the Hebbian rules: one weight layer, samples in rows, statistics.

    A subclass sets ``norm_p`` (the norm its weights converge in) and defines
    :meth:`learn`, which maps samples ``x`` ``(n, D)``, the layer's currents
    ``u`` ``(n, units)`` and the weights ``w`` ``(units, D)`` to the weight
    change and the postsynaptic activity whose winners and activity the
    diagnostics count. It may override :meth:`currents` (the currents the
    rule ranks or weighs; by default ``u = x w^T``, the layer's own output).

    Buffers kept in the block's checkpoint:

    * ``win_counts``: how often each unit was the most active on a sample;
    * ``active_counts``: how often each unit's activity was positive;
    * ``samples_seen``: samples (patches, for a convolution) learned from;
    * ``weight_norms``: each unit's ``norm_p`` weight norm when the
      diagnostics were last read.
    """

    norm_p: float = 2.0
    default_name: str = ""

    def __init__(self, config: Any) -> None:
        super().__init__(config)
        self.site: WeightSite | None = None
        self._cache: tuple[torch.Tensor, torch.Tensor] | None = None
        # the learned weight, held in a list so it is not registered as the
        # rule's own parameter; read by diagnostics()
        self._weight: list[torch.Tensor] = []

    @property
    def label(self) -> str:
        """The rule's registered name, or its usual name before registration."""
        return self.name or self.default_name or type(self).__name__.lower()

    def setup(self, context: BlockContext, body: nn.Module) -> None:
        super().setup(context, body)
        site = find_weight_layer(body, self.label, context.name)
        site.in_shape = layer_input_shape(body, site, context.in_shape)
        self.site = site
        units = site.units
        weight = body.get_parameter(site.param)
        self._weight = [weight]
        self.register_buffer("win_counts", torch.zeros(units, dtype=torch.long))
        self.register_buffer("active_counts", torch.zeros(units, dtype=torch.long))
        self.register_buffer("samples_seen", torch.zeros((), dtype=torch.long))
        self.register_buffer(
            "weight_norms", unit_norms(weight.detach().flatten(1), self.norm_p)
        )

    def _site(self) -> WeightSite:
        if self.site is None:
            raise RuntimeError(
                f"rule '{self.label}' has not been set up; build it through a "
                "Network (or call setup(context, body)) before training"
            )
        return self.site

    # -- the rule's own parts ---------------------------------------------------

    def currents(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """Currents into each unit for each sample; the layer's output ``x w^T``."""
        return x @ w.T

    def learn(
        self, x: torch.Tensor, u: torch.Tensor, w: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Weight change ``(units, D)`` and postsynaptic activity ``(n, units)``."""
        raise NotImplementedError

    # -- the plasticity contract -----------------------------------------------

    def forward_train(self, body: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """The weight layer's currents, laid out as the layer's output.

        Returns:
            :meth:`currents` of every sample, shaped like the weight layer's
            output (before any nonlinearity of the body).
        """
        site = self._site()
        samples, geometry = to_samples(layer_input(body, site, x), site)
        self._cache = (x, samples)
        w = body.get_parameter(site.param).flatten(1)
        return to_layer_output(self.currents(samples, w), site, geometry)

    def update(
        self,
        body: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        labels: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Weight change of the layer from its samples and currents.

        Args:
            body: the block's body.
            x: the block's input batch.
            y: what :meth:`forward_train` returned for ``x``.
            labels: unused; Hebbian rules learn without labels.

        Returns:
            ``{weight name: delta}`` in the body's parameter names.
        """
        site = self._site()
        cache, self._cache = self._cache, None
        if cache is not None and cache[0] is x:
            samples = cache[1]
        else:
            samples, _ = to_samples(layer_input(body, site, x), site)
        u = to_units(y, site)
        if u.shape != (samples.shape[0], site.units):
            raise ShapeError(
                f"rule '{self.label}' of block '{self.context.name}': update() needs "
                f"y as returned by forward_train(), the currents of "
                f"{samples.shape[0]} samples x {site.units} units, got shape "
                f"{tuple(y.shape)}"
            )
        weight = body.get_parameter(site.param)
        w = weight.detach().flatten(1)
        delta, post = self.learn(samples, u, w)
        self._count(post)
        return {site.param: delta.reshape(weight.shape)}

    def _count(self, post: torch.Tensor) -> None:
        # winners and activity of the batch
        winners = post.argmax(dim=1)
        self.win_counts += torch.bincount(winners, minlength=post.shape[1])
        self.active_counts += (post > 0).sum(0)
        self.samples_seen += post.shape[0]

    # -- what the report shows -------------------------------------------------

    def diagnostics(self) -> dict[str, float]:
        """Weight norms, how often units win, and dead units, as floats.

        Keys: ``weight_norm_mean``, ``weight_norm_min``, ``weight_norm_max``
        (each unit's ``norm_p`` norm, also kept in the buffer
        ``weight_norms``); ``units_ever_won``
        (fraction of units that were ever the most active on a sample);
        ``win_share_max`` (largest fraction of samples won by one unit);
        ``units_never_active`` (fraction never positive); ``dead_units``
        (fraction that never won or were never active).
        """
        if self.site is None:
            return {}
        if self._weight:
            with torch.no_grad():
                w = self._weight[0].detach().flatten(1)
                self.weight_norms.copy_(unit_norms(w, self.norm_p))
        norms = self.weight_norms
        won = self.win_counts > 0
        active = self.active_counts > 0
        seen = max(int(self.samples_seen), 1)
        return {
            "weight_norm_mean": float(norms.mean()),
            "weight_norm_min": float(norms.min()),
            "weight_norm_max": float(norms.max()),
            "units_ever_won": float(won.float().mean()),
            "win_share_max": float(self.win_counts.max()) / seen,
            "units_never_active": float((~active).float().mean()),
            "dead_units": float((~(won & active)).float().mean()),
        }

    def receptive_fields(self, body: nn.Module) -> torch.Tensor | None:
        """The learned weights as ``(units, C, h, w)`` images.

        A convolution gives its filters (a 1-D filter as an image of height
        1); a linear layer on an image gives one image per unit, reshaped to
        the layer's input shape (``(units, 1, 28, 28)`` on MNIST).
        """
        site = self._site()
        return fields_of(body.get_parameter(site.param), site, self.context.in_shape)
