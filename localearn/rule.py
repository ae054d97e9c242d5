"""The rule contract: how a block learns from what is local to it.

A rule is an ``nn.Module`` subclass of one of three kinds:

* :class:`ObjectiveRule` returns a scalar loss from the block's detached input,
  its output and (only if it needs them) the labels. The scheduler
  differentiates that loss inside the block alone.
* :class:`PlasticityRule` returns weight changes computed without autograd.
  The scheduler writes ``-delta`` into ``.grad`` and steps the block's own
  optimizer, so a plain SGD step with learning rate ``lr`` adds ``lr * delta``.
* :class:`EnergyRule` defines a local energy of the block's input and its own
  latent state. The scheduler runs inference steps on the latent states, with
  neighbours exchanging one-hop detached messages, then updates each block's
  weights from its own energy.

A rule's hyperparameters are a dataclass named in its ``Config`` attribute;
they are validated when the rule is configured. Rules are registered under a
short name with :func:`register_rule` (a class decorator) or through the
entry-point group ``localearn.rules``, which is how the built-in rules are
found too. A class that lacks what its kind needs is refused at registration.

Example:
    >>> import dataclasses, torch
    >>> from localearn.rule import ObjectiveRule, register_rule
    >>> @dataclasses.dataclass
    ... class SquareConfig:
    ...     scale: float = 1.0
    >>> @register_rule("doc_square", replace=True)
    ... class Square(ObjectiveRule):
    ...     Config = SquareConfig
    ...     def loss(self, x, y, labels=None):
    ...         return self.config.scale * y.pow(2).mean()
    >>> rule = make_rule("doc_square", {"scale": 2.0})
    >>> float(rule.loss(None, torch.ones(3)))
    2.0
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from localearn.errors import ConfigError, RuleDefinitionError, UnknownNameError

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "localearn.rules"
KINDS = ("objective", "plasticity", "energy")


@dataclass
class BlockContext:
    """What a rule may know about the block it trains.

    Attributes:
        name: the block's name in the network.
        in_shape: per-sample shape of the block's input.
        out_shape: per-sample shape of the block's output.
        grid: spatial or temporal grid of patches the network input was cut
            into (``()`` when the input was not cut into patches). When not
            empty, the leading batch axis of the block's tensors holds
            ``batch * prod(grid)`` patches in row-major grid order.
        n_classes: number of classes of the data set.
        index: position of the block in topological order (0 is the lowest).
        is_last: whether no block reads this block's output.
    """

    name: str
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    grid: tuple[int, ...] = ()
    n_classes: int = 10
    index: int = 0
    is_last: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


class Rule(nn.Module):
    """Base class of every rule; subclass one of the three kinds instead.

    Subclasses set ``Config`` to a dataclass of hyperparameters and may
    override :meth:`validate` (raise :class:`ConfigError` on a bad value),
    :meth:`setup` (create heads, buffers) and :meth:`diagnostics`.
    Parameters created in :meth:`setup` (heads) belong to the block: they are
    trained by the block's optimizer and saved in its checkpoint, as are
    buffers (rule state such as thresholds or win counts).
    """

    name: ClassVar[str] = ""
    kind: ClassVar[str] = ""
    needs_labels: ClassVar[bool] = False
    #: whether the rule learns from negative data as well as real data. If any
    #: block's rule says so, the scheduler appends one negative per sample to
    #: every raw minibatch (see :mod:`localearn.negatives`; the kind is the
    #: rule's ``negative`` hyperparameter, ``hybrid`` if it has none) and every
    #: block sees ``[positives; negatives]``, labels repeated.
    negatives: ClassVar[bool] = False
    Config: ClassVar[type] = None  # type: ignore[assignment]
    #: a small network this rule trains, ``{"in_shape": (C, ...), "network":
    #: {...}}`` without the rule; used by the conformance suite and the docs.
    example: ClassVar[dict[str, Any] | None] = None
    #: hyperparameter settings the rule must refuse (conformance suite).
    invalid: ClassVar[list[dict[str, Any]]] = []

    def __init__(self, config: Any) -> None:
        super().__init__()
        self.config = config
        self.context: BlockContext | None = None

    def validate(self) -> None:
        """Raise :class:`ConfigError` if a hyperparameter is out of range."""

    def setup(self, context: BlockContext, body: nn.Module) -> None:
        """Create heads and state for a block; called once before training.

        Args:
            context: shapes and position of the block.
            body: the block's body, to inspect (never to store as a submodule).
        """
        self.context = context

    def diagnostics(self) -> dict[str, float]:
        """Scalars describing the rule's state, written to the metrics."""
        return {}

    def traces(self) -> dict[str, list[float]]:
        """Curves (such as energy over inference steps) drawn in the report."""
        return {}

    def receptive_fields(self, body: nn.Module) -> torch.Tensor | None:
        """Weights to draw as an image grid, ``(units, C, h, w)``, or None."""
        return None

    def needs_labels_now(self) -> bool:
        """Whether this configured rule uses labels (may depend on config)."""
        return self.needs_labels


class ObjectiveRule(Rule):
    """A rule that returns a local loss; autograd stays inside the block."""

    kind: ClassVar[str] = "objective"

    def loss(
        self, x: torch.Tensor, y: torch.Tensor, labels: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Local loss of one batch.

        Args:
            x: the block's input, detached from every other block.
            y: the block's output, with the autograd graph of the body.
            labels: class labels, given only when the rule needs them.

        Returns:
            A scalar tensor to minimise.
        """
        raise NotImplementedError


class PlasticityRule(Rule):
    """A rule that returns weight changes computed without autograd."""

    kind: ClassVar[str] = "plasticity"

    def forward_train(self, body: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """Output the rule sees during learning; by default ``body(x)``."""
        return body(x)

    def update(
        self,
        body: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        labels: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Weight changes for one batch.

        Args:
            body: the block's body (read its parameters, never write them).
            x: presynaptic activity, the block's detached input.
            y: postsynaptic activity from :meth:`forward_train`.
            labels: class labels, given only when the rule needs them.

        Returns:
            Mapping from a parameter name of ``body`` (as in
            ``body.named_parameters()``) or of the rule (prefixed ``rule.``)
            to the change ``delta`` in the direction of learning. The
            scheduler sets ``param.grad = -delta`` and steps the optimizer.
        """
        raise NotImplementedError


class EnergyRule(Rule):
    """A rule with latent state, relaxed by inference before learning.

    The energy of block ``i`` depends only on its input state ``x`` (the
    latent state of the block below, or the clamped data) and its own latent
    state ``z``. During inference the scheduler sends down to the block below
    the gradient of this energy with respect to ``x``, detached: the one-hop
    message of predictive coding.
    """

    kind: ClassVar[str] = "energy"

    def init_state(self, body: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """Initial latent state; by default the feedforward prediction."""
        return body(x)

    def energy(self, body: nn.Module, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """Scalar energy of the block given its input state and latent state."""
        raise NotImplementedError

    def clamp(
        self, z: torch.Tensor, labels: torch.Tensor | None
    ) -> torch.Tensor | None:
        """State to clamp this block to (the top block in supervised mode)."""
        return None


_KIND_BASES: dict[str, type] = {
    "objective": ObjectiveRule,
    "plasticity": PlasticityRule,
    "energy": EnergyRule,
}
_REQUIRED: dict[str, tuple[str, ...]] = {
    "objective": ("loss",),
    "plasticity": ("update",),
    "energy": ("energy",),
}
_REGISTRY: dict[str, type[Rule]] = {}
_ENTRY_POINTS_LOADED = False
_BROKEN: dict[str, str] = {}


def check_rule_class(cls: type, name: str) -> None:
    """Refuse a rule class that does not satisfy its kind's contract.

    Args:
        cls: the class to check.
        name: the name it is being registered under.

    Raises:
        RuleDefinitionError: naming the rule and what it lacks.
    """
    if not (isinstance(cls, type) and issubclass(cls, Rule)):
        raise RuleDefinitionError(
            f"rule '{name}' must subclass ObjectiveRule, PlasticityRule or "
            f"EnergyRule from localearn.rule, got {cls!r}"
        )
    if cls.kind not in KINDS:
        raise RuleDefinitionError(
            f"rule '{name}' has kind {cls.kind!r}; expected one of {KINDS}: "
            "subclass ObjectiveRule, PlasticityRule or EnergyRule"
        )
    base = _KIND_BASES[cls.kind]
    for method in _REQUIRED[cls.kind]:
        if getattr(cls, method) is getattr(base, method):
            raise RuleDefinitionError(
                f"rule '{name}' of kind '{cls.kind}' must define {method}(); "
                f"see {base.__name__}.{method} for its signature"
            )
    if cls.Config is None or not dataclasses.is_dataclass(cls.Config):
        raise RuleDefinitionError(
            f"rule '{name}' must set Config to a dataclass of its "
            f"hyperparameters, got {cls.Config!r}"
        )
    for f in dataclasses.fields(cls.Config):
        has_default = (
            f.default is not dataclasses.MISSING
            or f.default_factory is not dataclasses.MISSING
        )
        if not has_default:
            raise RuleDefinitionError(
                f"rule '{name}': hyperparameter '{f.name}' needs a default "
                "(the paper's value) so the rule can be used without it"
            )


def register_rule(name: str, *, replace: bool = False):
    """Class decorator that registers a rule under ``name``.

    Args:
        name: short name used in configs (``rule: {name: ...}``).
        replace: allow replacing a rule already registered under that name.

    Returns:
        The decorator, which returns the class unchanged.

    Raises:
        RuleDefinitionError: if the class breaks its kind's contract, or the
            name is taken and ``replace`` is false.
    """

    def decorator(cls: type[Rule]) -> type[Rule]:
        add_rule(name, cls, replace=replace)
        return cls

    return decorator


def add_rule(name: str, cls: type[Rule], *, replace: bool = False) -> None:
    """Register ``cls`` under ``name``; see :func:`register_rule`."""
    check_rule_class(cls, name)
    known = _REGISTRY.get(name)
    if known is not None and known is not cls and not replace:
        raise RuleDefinitionError(
            f"rule name '{name}' is already registered to "
            f"{known.__module__}.{known.__qualname__}; pick another name or "
            "pass replace=True"
        )
    cls.name = name
    _REGISTRY[name] = cls


def rule_modules() -> list[str]:
    """Modules that define the registered rules, for worker processes.

    A worker started with ``spawn`` imports these so that rules registered
    at run time (not through entry points) exist there too; rules defined in
    ``__main__`` cannot be re-imported and are left out.
    """
    return sorted(
        {cls.__module__ for cls in _REGISTRY.values() if cls.__module__ != "__main__"}
    )


def _load_entry_points() -> None:
    global _ENTRY_POINTS_LOADED
    if _ENTRY_POINTS_LOADED:
        return
    _ENTRY_POINTS_LOADED = True
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        if ep.name in _REGISTRY:
            continue
        try:
            add_rule(ep.name, ep.load())
        except Exception as err:  # a broken plugin must not hide the others
            _BROKEN[ep.name] = f"{ep.value}: {type(err).__name__}: {err}"
            log.warning("rule plugin '%s' could not be loaded (%s)", ep.name, err)
            continue
        log.debug("registered rule %s from %s", ep.name, ep.value)


def rule_names() -> list[str]:
    """Names of every registered rule, built-in and plugin, sorted."""
    _load_entry_points()
    return sorted(_REGISTRY)


def get_rule_class(name: str) -> type[Rule]:
    """The rule class registered under ``name``.

    Raises:
        UnknownNameError: listing the valid names.
    """
    _load_entry_points()
    if name in _BROKEN and name not in _REGISTRY:
        raise UnknownNameError(
            f"rule '{name}' is installed but failed to load: {_BROKEN[name]}"
        )
    if name not in _REGISTRY:
        raise UnknownNameError(
            f"unknown rule '{name}'; valid rules: {', '.join(rule_names())}"
        )
    return _REGISTRY[name]


def make_config(cls: type[Rule], options: Mapping[str, Any] | None) -> Any:
    """Build and type-check a rule's hyperparameter dataclass from a mapping.

    Unknown keys and values of the wrong type raise :class:`ConfigError`
    naming the rule, the key and the valid keys.
    """
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    options = dict(options or {})
    options.pop("name", None)
    valid = [f.name for f in dataclasses.fields(cls.Config)]
    for key in options:
        if key not in valid:
            raise ConfigError(
                f"rule '{cls.name}' has no hyperparameter '{key}'; valid: "
                f"{', '.join(valid)}"
            )
    try:
        schema = OmegaConf.structured(cls.Config)
        merged = OmegaConf.merge(schema, OmegaConf.create(options))
        return OmegaConf.to_object(merged)
    except OmegaConfBaseException as err:
        msg = str(err).splitlines()[0]
        raise ConfigError(f"rule '{cls.name}': {msg}") from None


def make_rule(name: str, options: Mapping[str, Any] | None = None) -> Rule:
    """Instantiate a registered rule from its name and hyperparameters.

    Args:
        name: registered rule name.
        options: hyperparameters; missing ones take the paper's defaults.

    Returns:
        The configured rule, validated.

    Raises:
        UnknownNameError: unknown rule name.
        ConfigError: unknown hyperparameter, wrong type or value out of range.
    """
    cls = get_rule_class(name)
    rule = cls(make_config(cls, options))
    rule.validate()
    return rule


def broken_rules() -> dict[str, str]:
    """Installed rule plugins that failed to load, with the reason."""
    _load_entry_points()
    return dict(_BROKEN)


def describe_rules() -> list[dict[str, Any]]:
    """Name, kind, label use and hyperparameters with defaults of every rule."""
    out = []
    for name in rule_names():
        cls = _REGISTRY[name]
        params = []
        for f in dataclasses.fields(cls.Config):
            default = (
                f.default
                if f.default is not dataclasses.MISSING
                else f.default_factory()  # type: ignore[misc]
            )
            type_name = f.type if isinstance(f.type, str) else f.type.__name__
            params.append({"name": f.name, "type": type_name, "default": default})
        doc = (cls.__doc__ or "").strip().splitlines()
        out.append(
            {
                "name": name,
                "kind": cls.kind,
                "needs_labels": cls.needs_labels,
                "summary": doc[0] if doc else "",
                "hyperparameters": params,
            }
        )
    return out


def require(condition: bool, rule: str, message: str) -> None:
    """Raise :class:`ConfigError` prefixed with the rule name unless true."""
    if not condition:
        raise ConfigError(f"rule '{rule}': {message}")
