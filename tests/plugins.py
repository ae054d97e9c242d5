"""Tiny rules of each kind, registered the way a third-party package would.

They are deliberately small so the tests can check the framework's contracts
(registration, isolation, scheduling, checkpoints) independently of the
built-in rules.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from localearn.rule import (
    EnergyRule,
    ObjectiveRule,
    PlasticityRule,
    register_rule,
    require,
)


@dataclass
class DecorrelateConfig:
    weight: float = 1.0


@register_rule("test_decorrelate", replace=True)
class Decorrelate(ObjectiveRule):
    """Objective: unit-variance, decorrelated outputs (a whitening loss)."""

    Config = DecorrelateConfig

    def validate(self) -> None:
        require(
            self.config.weight > 0,
            self.name or "test_decorrelate",
            f"weight must be > 0, got {self.config.weight}",
        )

    def loss(self, x, y, labels=None):
        y = y.flatten(1)
        y = y - y.mean(0)
        cov = y.T @ y / max(len(y) - 1, 1)
        eye = torch.eye(cov.shape[0])
        return self.config.weight * (cov - eye).pow(2).mean()


@dataclass
class HeadConfig:
    pass


@register_rule("test_supervised_head", replace=True)
class SupervisedHead(ObjectiveRule):
    """Objective with its own head and labels (greedy supervised learning)."""

    Config = HeadConfig
    needs_labels = True

    def setup(self, context, body):
        super().setup(context, body)
        import math

        self.head = nn.Linear(math.prod(context.out_shape), context.n_classes)

    def loss(self, x, y, labels=None):
        return F.cross_entropy(self.head(y.flatten(1)), labels)


@dataclass
class TinyHebbConfig:
    decay: float = 0.1


@register_rule("test_hebb", replace=True)
class TinyHebb(PlasticityRule):
    """Plasticity: Hebbian outer product with weight decay, on a Linear body."""

    Config = TinyHebbConfig

    def update(self, body, x, y, labels=None):
        name, layer = next(
            (n, m) for n, m in body.named_modules() if isinstance(m, nn.Linear)
        )
        x = x.flatten(1)
        y = layer(x)
        return {f"{name}.weight": y.T @ x / len(x) - self.config.decay * layer.weight}


@dataclass
class TinyEnergyConfig:
    inference_steps: int = 10
    inference_lr: float = 0.1


@register_rule("test_energy", replace=True)
class TinyEnergy(EnergyRule):
    """Energy: squared prediction error of the latent state from below."""

    Config = TinyEnergyConfig
    needs_labels = True

    def energy(self, body, x, z):
        return 0.5 * (z - body(x)).pow(2).sum() / len(z)

    def clamp(self, z, labels):
        if not self.context.is_last or labels is None:
            return None
        return F.one_hot(labels, z.shape[1]).to(z.dtype)


@dataclass
class LeakConfig:
    pass


@register_rule("test_leak", replace=True)
class Leak(ObjectiveRule):
    """Objective that (wrongly) reaches a tensor of another block."""

    Config = LeakConfig

    def loss(self, x, y, labels=None):
        foreign = self.__dict__.get("foreign")
        loss = y.pow(2).mean()
        if foreign is not None:
            loss = loss + 0.0 * foreign.sum()
        return loss


@dataclass
class ExplodeConfig:
    nan_after: int = 3


@register_rule("test_explode", replace=True)
class Explode(ObjectiveRule):
    """Objective whose loss turns NaN after a number of calls."""

    Config = ExplodeConfig

    def loss(self, x, y, labels=None):
        self.__dict__["calls"] = self.__dict__.get("calls", 0) + 1
        loss = y.pow(2).mean()
        if self.__dict__["calls"] > self.config.nan_after:
            loss = loss * float("nan")
        return loss


def tiny_mlp(name: str) -> list[str]:
    """Overrides for a two-block run on the digits that takes seconds."""
    return [
        f"name={name}",
        "threads=1",
        "data.name=digits",
        "network.layers=[{type: linear, out: 16}, {type: relu}, "
        "{type: linear, out: 10}]",
        "network.split=[2]",
        "network.rule.name=test_supervised_head",
        "scheduler.epochs=1",
        "scheduler.batch_size=256",
        "evaluate.budgets=[all]",
        "evaluate.random_twin=false",
        "evaluate.probe.max_iter=30",
    ]


def plasticity_network(rule, layers, in_shape, lr=0.01, split=None, **options):
    """A network of ``layers`` learning by ``rule`` with plain SGD."""
    from localearn.network import Network

    spec = {
        "layers": layers,
        "rule": {"name": rule, **options},
        "optimizer": {"name": "sgd", "lr": lr},
    }
    if split:
        spec["split"] = split
    return Network.from_config(spec, in_shape=in_shape, n_classes=10)
