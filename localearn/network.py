"""Networks of blocks wired as a directed acyclic graph.

A block is the unit of gradient isolation: a body (an ``nn.Sequential``), the
rule that trains it and that rule's heads and state, and its own optimizer.
The network keeps the wiring as a ``networkx.DiGraph`` whose nodes are
``"input"`` and the block names, so order, fan-in and the isolation audit are
graph questions.

Config form (``network:`` in an experiment)::

    patches: {size: 8, stride: 4}      # optional; cut the input into a grid
    layers: [{type: conv, out: 64}, {type: relu}, ...]
    split: [3, 6]       # layer indices where new blocks start, or "layer"
    rule: {name: infonce}               # rule of every block ...
    optimizer: {name: adam, lr: 0.001}  # ... and its optimizer
    blocks: [{rule: {...}}, ...]        # optional per-block overrides

or, for full control, ``blocks`` alone, each with ``name``, ``layers``,
``rule``, ``optimizer`` and ``inputs`` (names of the blocks it reads; their
outputs are concatenated along channels).
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

import networkx as nx
import torch
from torch import nn

from localearn.errors import ConfigError, ShapeError, UnknownNameError
from localearn.layers import WEIGHT_LAYERS, Patchify, build_body, to_grid
from localearn.rule import BlockContext, Rule, make_rule

log = logging.getLogger(__name__)

INPUT = "input"
OPTIMIZERS = {
    "adam": torch.optim.Adam,
    "adamw": torch.optim.AdamW,
    "sgd": torch.optim.SGD,
}
NETWORK_KEYS = {"patches", "layers", "split", "rule", "optimizer", "blocks"}
BLOCK_KEYS = {"name", "layers", "rule", "optimizer", "inputs"}


class Block(nn.Module):
    """One block: body, rule (with heads and state) and wiring.

    Args:
        name: unique name in the network.
        body: the layers the block's rule trains.
        rule: the configured rule.
        inputs: names of the nodes whose outputs feed this block.
    """

    def __init__(self, name: str, body: nn.Module, rule: Rule, inputs: list[str]):
        super().__init__()
        self.name = name
        self.body = body
        self.rule = rule
        self.inputs = inputs
        self.optimizer: torch.optim.Optimizer | None = None
        self.optimizer_spec: dict[str, Any] = {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def own_parameters(self) -> list[nn.Parameter]:
        """Parameters of the body and of the rule's heads."""
        return list(self.parameters())

    def make_optimizer(self, spec: Mapping[str, Any]) -> None:
        """Create this block's own optimizer from ``{name, lr, ...}``."""
        spec = dict(spec)
        name = spec.pop("name", "adam")
        if name not in OPTIMIZERS:
            raise UnknownNameError(
                f"block '{self.name}': unknown optimizer '{name}'; valid: "
                f"{', '.join(sorted(OPTIMIZERS))}"
            )
        self.optimizer_spec = {"name": name, **spec}
        params = [p for p in self.parameters() if p.requires_grad]
        if not params:
            self.optimizer = None
            return
        if name in ("adam", "adamw", "sgd"):
            # one multi-tensor step per block instead of a loop over parameters
            spec.setdefault("foreach", True)
        try:
            self.optimizer = OPTIMIZERS[name](params, **spec)
        except TypeError as err:
            raise ConfigError(
                f"block '{self.name}' optimizer '{name}': {err}"
            ) from None


def expand_blocks(net_cfg: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Turn ``layers`` + ``split`` into an explicit list of block specs.

    Args:
        net_cfg: the ``network`` section of a config (plain containers).

    Returns:
        One dict per block with ``name``, ``layers``, ``rule``, ``optimizer``
        and ``inputs``.
    """
    unknown = set(net_cfg) - NETWORK_KEYS
    if unknown:
        raise ConfigError(
            f"unknown key(s) network.{', network.'.join(sorted(unknown))}; valid "
            f"keys: {', '.join(sorted(NETWORK_KEYS))}"
        )
    default_rule = dict(net_cfg.get("rule") or {})
    default_opt = dict(net_cfg.get("optimizer") or {"name": "adam", "lr": 1e-3})
    overrides = list(net_cfg.get("blocks") or [])
    layers = net_cfg.get("layers")
    if layers is None:
        if not overrides:
            raise ConfigError("network needs 'layers' (with 'split') or 'blocks'")
        specs = overrides
    else:
        groups = _split_layers(list(layers), net_cfg.get("split"))
        if overrides and len(overrides) != len(groups):
            raise ConfigError(
                f"network.blocks has {len(overrides)} entries but network.split "
                f"makes {len(groups)} blocks; give one override per block"
            )
        specs = [
            {"layers": g, **(overrides[i] if overrides else {})}
            for i, g in enumerate(groups)
        ]
    out = []
    for i, spec in enumerate(specs):
        spec = dict(spec)
        bad = set(spec) - BLOCK_KEYS
        if bad:
            raise ConfigError(
                f"block {i}: unknown key(s) {', '.join(sorted(bad))}; valid keys: "
                f"{', '.join(sorted(BLOCK_KEYS))}"
            )
        name = spec.get("name") or f"block{i + 1}"
        rule = {**default_rule, **dict(spec.get("rule") or {})}
        if "rule" in spec and "name" in (spec["rule"] or {}):
            if spec["rule"]["name"] != default_rule.get("name"):
                rule = dict(spec["rule"])
        out.append(
            {
                "name": name,
                "layers": list(spec.get("layers") or []),
                "rule": rule,
                "optimizer": {**default_opt, **dict(spec.get("optimizer") or {})},
                "inputs": list(
                    spec.get("inputs") or [out[-1]["name"] if out else INPUT]
                ),
            }
        )
    return out


def _split_layers(layers: list, split: Any) -> list[list]:
    if split is None or split == "none":
        return [layers]
    if split == "layer":
        starts = [
            i for i, spec in enumerate(layers) if spec.get("type") in WEIGHT_LAYERS
        ]
        starts = [0] + [s for s in starts if s > 0]
    elif isinstance(split, Sequence) and not isinstance(split, str):
        starts = [0, *split]
        if any(not isinstance(s, int) for s in split) or starts != sorted(set(starts)):
            raise ConfigError(
                f"network.split must be increasing layer indices > 0, got {list(split)}"
            )
        if starts[-1] >= len(layers):
            raise ConfigError(
                f"network.split index {starts[-1]} is past the last layer "
                f"(there are {len(layers)} layers, indices 0..{len(layers) - 1})"
            )
    else:
        raise ConfigError(
            f"network.split must be a list of layer indices, 'layer' or 'none', "
            f"got {split!r}"
        )
    bounds = [*starts, len(layers)]
    return [layers[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


class Network(nn.Module):
    """Blocks wired as a DAG, with the optional patch grid at the input.

    Args:
        blocks: explicit block specs (see :func:`expand_blocks`).
        in_shape: per-sample shape of the data.
        n_classes: number of classes, passed to rules.
        patches: ``{size, stride}`` to cut the input into a grid, or None.
    """

    def __init__(
        self,
        blocks: Sequence[Mapping[str, Any]],
        in_shape: tuple[int, ...],
        n_classes: int = 10,
        patches: Mapping[str, int] | None = None,
    ) -> None:
        super().__init__()
        self.in_shape = tuple(in_shape)
        self.patcher = Patchify(**patches) if patches else None
        self.grid: tuple[int, ...] = self.patcher.grid(self.in_shape) if patches else ()
        self.specs = [copy.deepcopy(dict(b)) for b in blocks]
        self.graph = nx.DiGraph()
        self.graph.add_node(INPUT)
        self.blocks = nn.ModuleDict()
        self.in_shapes: dict[str, tuple[int, ...]] = {}
        shapes: dict[str, tuple[int, ...]] = {INPUT: self._patch_shape()}
        names = [b["name"] for b in self.specs]
        if len(set(names)) != len(names) or INPUT in names:
            raise ConfigError(
                f"block names must be unique and not 'input', got {names}"
            )
        for spec in self.specs:
            self._add_block(spec, shapes, n_classes)
        if not nx.is_directed_acyclic_graph(self.graph):
            raise ConfigError("the block wiring has a cycle; blocks must form a DAG")
        self.order: list[str] = [
            n for n in nx.topological_sort(self.graph) if n != INPUT
        ]
        self.shapes = shapes
        for spec in self.specs:
            self.blocks[spec["name"]].make_optimizer(spec["optimizer"])

    def _patch_shape(self) -> tuple[int, ...]:
        if self.patcher is None:
            return self.in_shape
        return (self.in_shape[0],) + (self.patcher.size,) * (len(self.in_shape) - 1)

    def _add_block(self, spec: dict, shapes: dict, n_classes: int) -> None:
        name = spec["name"]
        for src in spec["inputs"]:
            if src not in shapes:
                raise UnknownNameError(
                    f"block '{name}' reads from unknown block '{src}'; blocks defined "
                    f"before it: {', '.join(shapes)}"
                )
        in_shape = self._fan_in_shape(name, spec["inputs"], shapes)
        self.in_shapes[name] = in_shape
        try:
            body, out_shape = build_body(spec["layers"], in_shape)
        except ShapeError as err:
            raise ShapeError(
                f"block '{name}' cannot take the output of "
                f"{' + '.join(repr(s) for s in spec['inputs'])} (per-sample shape "
                f"{in_shape}): {err}"
            ) from None
        rule_cfg = dict(spec["rule"])
        if "name" not in rule_cfg:
            raise ConfigError(
                f"block '{name}' has no rule; set network.rule.name or "
                f"network.blocks[i].rule.name"
            )
        rule = make_rule(rule_cfg.pop("name"), rule_cfg)
        ctx = BlockContext(
            name=name,
            in_shape=in_shape,
            out_shape=out_shape,
            grid=self.grid,
            n_classes=n_classes,
            index=len(shapes) - 1,
        )
        if self.patcher is not None:
            ctx.extra.update(
                patch_size=self.patcher.size, patch_stride=self.patcher.stride
            )
        block = Block(name, body, rule, list(spec["inputs"]))
        self.blocks[name] = block
        for src in spec["inputs"]:
            self.graph.add_edge(src, name)
        ctx.is_last = True
        for src in spec["inputs"]:
            if src in self.blocks:
                self.blocks[src].rule.context.is_last = False
        rule.setup(ctx, body)
        rule.context = ctx
        shapes[name] = out_shape

    def _fan_in_shape(self, name: str, inputs: list[str], shapes: dict) -> tuple:
        first = shapes[inputs[0]]
        for src in inputs[1:]:
            if shapes[src][1:] != first[1:]:
                raise ShapeError(
                    f"block '{name}' concatenates '{inputs[0]}' of shape {first} and "
                    f"'{src}' of shape {shapes[src]}; all but the channel axis must "
                    "match"
                )
        return (sum(shapes[s][0] for s in inputs), *first[1:])

    @classmethod
    def from_config(
        cls, net_cfg: Mapping[str, Any], in_shape: tuple[int, ...], n_classes: int
    ) -> Network:
        """Build a network from the ``network`` section of a config."""
        blocks = expand_blocks(net_cfg)
        return cls(blocks, in_shape, n_classes, net_cfg.get("patches"))

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the patch grid (if any) to a batch of raw inputs."""
        return self.patcher(x) if self.patcher is not None else x

    def block_input(
        self, name: str, outputs: Mapping[str, torch.Tensor]
    ) -> torch.Tensor:
        """Concatenate the outputs feeding block ``name`` along channels."""
        srcs = self.blocks[name].inputs
        if len(srcs) == 1:
            return outputs[srcs[0]]
        return torch.cat([outputs[s] for s in srcs], dim=1)

    def forward(
        self, x: torch.Tensor, detach: bool = True, upto: str | None = None
    ) -> dict[str, torch.Tensor]:
        """Run every block in order.

        Args:
            x: a batch of raw inputs.
            detach: detach every message between blocks (local modes); only the
                reference mode passes False.
            upto: stop after this block.

        Returns:
            Mapping from ``"input"`` and each block name to its output.
        """
        outputs = {INPUT: self.prepare(x)}
        for name in self.order:
            inp = self.block_input(name, outputs)
            outputs[name] = self.blocks[name](inp.detach() if detach else inp)
            if name == upto:
                break
        return outputs

    def features(self, outputs: Mapping[str, torch.Tensor], pool: int) -> dict:
        """Probe features of every block: grid-pooled, flattened outputs.

        A block output laid on the patch grid (or a conv output, which is its
        own grid) is average-pooled to ``pool`` cells per grid axis; a vector
        output is used as it is.
        """
        out = {}
        for name in self.order:
            y = to_grid(outputs[name], self.grid)
            if y.dim() > 2:
                pooler = nn.functional.adaptive_avg_pool2d if y.dim() == 4 else None
                if pooler is None:
                    y = nn.functional.adaptive_avg_pool1d(y, pool)
                else:
                    y = pooler(y, pool)
            out[name] = y.flatten(1)
        return out

    def block_of_parameter(self) -> dict[int, tuple[str, str]]:
        """Map ``id(param)`` to (block name, parameter name) for the audit."""
        table = {}
        for bname, block in self.blocks.items():
            for pname, p in block.named_parameters():
                table[id(p)] = (bname, pname)
        return table

    def n_parameters(self) -> dict[str, int]:
        """Number of trainable parameters per block."""
        return {
            n: sum(math.prod(p.shape) for p in b.parameters())
            for n, b in self.blocks.items()
        }
