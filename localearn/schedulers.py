"""Schedulers: when each block sees which batch and when it updates.

Modes (``scheduler.mode``):

* ``simultaneous``: each batch flows up once and every block updates on it,
  its graph freed before the next block runs (Greedy InfoMax's default).
* ``sequential``: block 1 trains for its epochs, then block 2 on block 1's
  frozen output, and so on; frozen blocks run in eval mode.
* ``cached``: sequential, but a frozen block's outputs are computed once and
  kept in memory or on disk instead of being recomputed every epoch.
* ``reference``: end-to-end backprop through every block on the same
  objective; the one mode in which gradients cross blocks.
* ``asynchronous``: each block in its own worker on stale outputs from below.

A scheduler walks a list of *stages* (one stage of all blocks, or one stage
per block) and, within each, epochs of minibatches. After every epoch it hands
its position to a callback that writes an atomic checkpoint, so an
interrupted run resumes at the last finished epoch and replays the same
batches.

Negative data: if any block's rule declares ``negatives = True`` (such as
Forward-Forward), every raw minibatch ``x`` is extended to ``[x; negatives]``
before the patch grid, labels to ``[labels; labels]``, in the simultaneous,
sequential and reference modes. The negatives are drawn from a generator
seeded by the trainer's seed, the stage, the epoch and the step, so a resumed
run sees the same ones. Cached mode refuses such rules.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from localearn.errors import ConfigError, DivergenceError, UnknownNameError
from localearn.isolation import audit_graph, audit_update
from localearn.negatives import make_negatives
from localearn.network import INPUT, Network
from localearn.rule import EnergyRule, ObjectiveRule, PlasticityRule

log = logging.getLogger(__name__)

MODES = ("simultaneous", "sequential", "cached", "reference", "asynchronous")


@dataclass
class SchedulerConfig:
    """Training schedule.

    Attributes:
        mode: one of :data:`MODES`.
        epochs: epochs of training; per block in sequential and cached modes.
        batch_size: minibatch size.
        cache: ``memory`` or ``disk``, where cached mode keeps frozen outputs.
        audit_steps: steps at the start of every stage in which the isolation
            audit runs; ``-1`` audits every step.
        reference_loss: in reference mode, ``last`` differentiates the last
            block's objective through the whole network (CPC end to end);
            ``all`` sums every block's objective, gradients crossing blocks.
        log_every: write per-step metrics every this many steps.
    """

    mode: str = "simultaneous"
    epochs: int = 6
    batch_size: int = 64
    cache: str = "memory"
    audit_steps: int = 10
    reference_loss: str = "last"
    log_every: int = 10


@dataclass
class Position:
    """Where training stands: stage, epoch in the stage, global step."""

    stage: int = 0
    epoch: int = 0
    step: int = 0
    done: bool = False
    history: list[dict[str, Any]] = field(default_factory=list)


def check_scheduler(cfg: SchedulerConfig) -> None:
    """Refuse an unknown mode or an out-of-range setting."""
    if cfg.mode not in MODES:
        raise UnknownNameError(
            f"unknown scheduler mode '{cfg.mode}'; valid modes: {', '.join(MODES)}"
        )
    if cfg.mode == "asynchronous":
        raise NotImplementedError(
            "scheduler.mode=asynchronous (Ray workers per block) is not available "
            "in this release; use simultaneous, sequential or cached"
        )
    if cfg.epochs < 0 or cfg.batch_size < 1:
        raise ConfigError(
            f"scheduler needs epochs >= 0 and batch_size >= 1, got "
            f"epochs={cfg.epochs}, batch_size={cfg.batch_size}"
        )
    if cfg.cache not in ("memory", "disk"):
        raise ConfigError(
            f"scheduler.cache must be 'memory' or 'disk', got {cfg.cache!r}"
        )
    if cfg.reference_loss not in ("last", "all"):
        raise ConfigError(
            "scheduler.reference_loss must be 'last' or 'all', got "
            f"{cfg.reference_loss!r}"
        )


def _finite_or_raise(
    value: torch.Tensor, block: str, rule: str, what: str, pos
) -> None:
    # min and max carry NaN and infinity through, at a fraction of isfinite's cost
    lo, hi = torch.aminmax(value.detach().reshape(-1))
    if not (math.isfinite(float(lo)) and math.isfinite(float(hi))):
        raise DivergenceError(
            f"block '{block}' (rule '{rule}') produced a non-finite {what} "
            f"({float(value.detach().flatten()[0]):.4g}) at stage {pos.stage}, "
            f"epoch {pos.epoch}, step {pos.step}; training stopped and the last "
            "good checkpoint is kept; lower the learning rate or check the inputs"
        )


class Trainer:
    """Runs a schedule over a network and a training set.

    Args:
        network: the network to train.
        cfg: the schedule.
        x: training inputs.
        y: training labels.
        seed: seed of the batch order.
        log_step: called with a metrics dict every ``log_every`` steps.
        on_epoch: called with the position after every finished epoch.
        progress: show tqdm progress bars.
        cache_dir: folder for the disk cache of cached mode.
    """

    def __init__(
        self,
        network: Network,
        cfg: SchedulerConfig,
        x: torch.Tensor,
        y: torch.Tensor,
        seed: int = 0,
        log_step: Callable[[dict], None] | None = None,
        on_epoch: Callable[[Position], None] | None = None,
        progress: bool = False,
        cache_dir: Path | None = None,
        model: str = "",
    ) -> None:
        check_scheduler(cfg)
        self.net = network
        self.cfg = cfg
        self.x = x
        self.y = y
        self.seed = seed
        self.log_step = log_step or (lambda record: None)
        self.on_epoch = on_epoch or (lambda pos: None)
        self.progress = progress
        self.cache_dir = cache_dir
        self.model = model
        self.owners = network.block_of_parameter()
        self.negatives = check_network_schedule(network, cfg.mode)

    # -- schedule -------------------------------------------------------------

    def stages(self) -> list[list[str]]:
        """Blocks trained in each stage."""
        if self.cfg.mode in ("sequential", "cached"):
            return [[name] for name in self.net.order]
        return [list(self.net.order)]

    def batches(self, stage: int, epoch: int, n: int) -> list[torch.Tensor]:
        """Shuffled minibatch indices, fixed by seed, stage and epoch."""
        gen = torch.Generator().manual_seed(
            self.seed * 1_000_003 + stage * 1009 + epoch
        )
        perm = torch.randperm(n, generator=gen)
        batches = list(perm.split(self.cfg.batch_size))
        if self.negatives is not None and len(batches) > 1 and len(batches[-1]) < 2:
            # negatives mix two different samples: a lone last sample joins
            # the batch before it
            batches[-2:] = [torch.cat(batches[-2:])]
        return batches

    def run(self, pos: Position | None = None) -> Position:
        """Train from ``pos`` (a fresh start if None) to the end.

        Returns:
            The final position, with ``done`` set.
        """
        pos = pos or Position()
        stages = self.stages()
        while pos.stage < len(stages) and not pos.done:
            train = stages[pos.stage]
            inputs = self._stage_inputs(train)
            while pos.epoch < self.cfg.epochs:
                summary = self._epoch(train, inputs, pos)
                pos.history.append(summary)
                pos.epoch += 1
                self.on_epoch(pos)
            pos.stage += 1
            pos.epoch = 0
        pos.done = True
        return pos

    # -- one epoch ------------------------------------------------------------

    def _epoch(self, train: list[str], inputs: Any, pos: Position) -> dict:
        n = len(self.x)
        batches = self.batches(pos.stage, pos.epoch, n)
        sums: dict[str, float] = {}
        label = (
            f"stage {pos.stage + 1} epoch {pos.epoch + 1}"
            if len(train) == 1
            else (f"epoch {pos.epoch + 1}")
        )
        if self.model:
            label = f"{self.model} {label}"
        bar = tqdm(
            batches,
            desc=f"{'+'.join(train)} {label}",
            disable=None if self.progress else True,
            leave=False,
        )
        for idx in bar:
            audit = self.cfg.audit_steps < 0 or (
                pos.epoch == 0 and bar.n < self.cfg.audit_steps
            )
            losses = self.step(idx, train, inputs, audit, pos)
            for k, v in losses.items():
                sums[k] = sums.get(k, 0.0) + v
            if pos.step % self.cfg.log_every == 0:
                self.log_step(
                    {
                        "event": "step",
                        "stage": pos.stage,
                        "epoch": pos.epoch,
                        "step": pos.step,
                        "loss": losses,
                    }
                )
            pos.step += 1
        means = {k: v / max(len(batches), 1) for k, v in sums.items()}
        diag = {name: self.net.blocks[name].rule.diagnostics() for name in train}
        record = {
            "event": "epoch",
            "stage": pos.stage,
            "epoch": pos.epoch,
            "step": pos.step,
            "loss": means,
            "diagnostics": diag,
        }
        self.log_step(record)
        log.info("%s: %s", label, ", ".join(f"{k} {v:.4f}" for k, v in means.items()))
        return record

    def step(
        self,
        idx: torch.Tensor,
        train: list[str],
        inputs: Any,
        audit: bool,
        pos: Position,
    ) -> dict[str, float]:
        """One training step on the minibatch ``idx``; returns losses per block."""
        idx = idx.to(self.x.device) if inputs is None else idx
        labels = self.y[idx.to(self.y.device)]
        if inputs is not None:
            rows = torch.as_tensor(inputs[idx.numpy()]).to(self.x.device)
            return self._local_step(rows, labels, train, audit, pos, start=train[0])
        x = self.x[idx]
        if self.negatives is not None:
            x, labels = self.with_negatives(x, labels, pos)
        if self.cfg.mode == "reference":
            return self._reference_step(x, labels, audit, pos)
        return self._local_step(x, labels, train, audit, pos)

    def with_negatives(
        self, x: torch.Tensor, labels: torch.Tensor, pos: Position
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """A raw minibatch followed by its negatives, labels repeated.

        Args:
            x: raw inputs of the minibatch (before the patch grid).
            labels: their labels.
            pos: where training stands; with the trainer's seed it seeds the
                negatives, so a resumed run draws the same ones.

        Returns:
            ``[x; negatives]`` and ``[labels; labels]``.
        """
        entropy = [self.seed % 2**64, pos.stage, pos.epoch, pos.step]
        state = np.random.SeedSequence(entropy).generate_state(2, np.uint32)
        gen = torch.Generator(device=x.device)
        gen.manual_seed(int(state[0]) << 31 | int(state[1]) >> 1)
        neg = make_negatives(x, gen, self.negatives)
        return torch.cat([x, neg]), torch.cat([labels, labels])

    # -- local training -------------------------------------------------------

    def _local_step(
        self,
        x: torch.Tensor,
        labels: torch.Tensor,
        train: list[str],
        audit: bool,
        pos: Position,
        start: str | None = None,
    ) -> dict[str, float]:
        net = self.net
        outputs: dict[str, torch.Tensor] = {}
        if start is None:
            outputs[INPUT] = net.prepare(x)
            order = net.order
        else:
            order = net.order[net.order.index(start) :]
        last = train[-1]
        losses: dict[str, float] = {}
        i = 0
        while i < len(order):
            name = order[i]
            block = net.blocks[name]
            inp = x if name == start else net.block_input(name, outputs).detach()
            if name not in train:
                with torch.no_grad():
                    outputs[name] = block.body(inp)
            elif isinstance(block.rule, EnergyRule):
                group = self._energy_group(order, i, train)
                from localearn.inference import relax_and_learn

                group_out, group_losses = relax_and_learn(
                    net, group, inp, labels, audit, self.owners, pos
                )
                outputs.update(group_out)
                losses.update(group_losses)
                i += len(group) - 1
                name = group[-1]
            else:
                outputs[name], losses[name] = self._train_block(
                    name, inp, labels, audit, pos
                )
            if name == last:
                break
            i += 1
        return losses

    def _energy_group(self, order: list[str], i: int, train: list[str]) -> list[str]:
        group = []
        for name in order[i:]:
            if name not in train or not isinstance(
                self.net.blocks[name].rule, EnergyRule
            ):
                break
            group.append(name)
        return group

    def _train_block(
        self, name: str, inp: torch.Tensor, labels: torch.Tensor, audit: bool, pos
    ) -> tuple[torch.Tensor, float]:
        block = self.net.blocks[name]
        rule = block.rule
        given = labels if rule.needs_labels_now() else None
        if isinstance(rule, ObjectiveRule):
            # local objective: autograd inside the block alone
            y = block.body(inp)
            loss = rule.loss(inp, y, given)
            _finite_or_raise(loss, name, rule.name, "loss", pos)
            if audit:
                audit_graph(loss, name, rule.name, block.parameters(), self.owners)
            if block.optimizer is not None:
                block.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                block.optimizer.step()
            return y.detach(), float(loss.detach())
        if isinstance(rule, PlasticityRule):
            # plasticity: weight changes without autograd, applied as -grad
            with torch.no_grad():
                post = rule.forward_train(block.body, inp)
                deltas = rule.update(block.body, inp, post, given)
                own = dict(block.body.named_parameters())
                own.update({f"rule.{k}": p for k, p in rule.named_parameters()})
                if audit:
                    audit_update(deltas, name, rule.name, own)
                for pname, delta in deltas.items():
                    _finite_or_raise(
                        delta, name, rule.name, f"update of '{pname}'", pos
                    )
                block.optimizer.zero_grad(set_to_none=True)
                for pname, delta in deltas.items():
                    own[pname].grad = -delta.to(own[pname].dtype)
                block.optimizer.step()
                for pname in deltas:
                    _finite_or_raise(
                        own[pname], name, rule.name, f"weight '{pname}'", pos
                    )
                out = block.body(inp)
            size = sum(float(d.norm()) for d in deltas.values())
            return out, size
        raise TypeError(f"block '{name}': unsupported rule kind {rule.kind!r}")

    # -- cached and sequential inputs ----------------------------------------

    def _stage_inputs(self, train: list[str]) -> Any:
        """Frozen inputs of the stage's block, computed once (cached mode)."""
        net = self.net
        frozen = net.order[: net.order.index(train[0])]
        for name in net.order:
            net.blocks[name].train(
                name not in frozen or self.cfg.mode == "simultaneous"
            )
        if self.cfg.mode != "cached" or not frozen:
            return None
        name = train[0]
        n_rows = len(self.x) * (math.prod(net.grid) if net.grid else 1)
        shape = (n_rows, *net.in_shapes[name])
        if self.cfg.cache == "disk":
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            path = self.cache_dir / f"{name}.input.npy"
            store = np.lib.format.open_memmap(
                path, mode="w+", dtype=np.float32, shape=shape
            )
        else:
            store = np.empty(shape, dtype=np.float32)
        rows = math.prod(net.grid) if net.grid else 1
        with torch.no_grad():
            for chunk in torch.arange(len(self.x)).split(256):
                outs = net(self.x[chunk], upto=frozen[-1])
                a, b = int(chunk[0]) * rows, (int(chunk[-1]) + 1) * rows
                store[a:b] = net.block_input(name, outs).cpu().numpy()
        log.info("cached the input of block '%s' (%s, %s)", name, shape, self.cfg.cache)
        if self.cfg.cache == "disk":
            store.flush()
            del store
            store = np.load(path, mmap_mode="r")
        return _RowView(store, rows)

    # -- reference ------------------------------------------------------------

    def _reference_step(self, x, labels, audit, pos) -> dict[str, float]:
        net = self.net
        outputs = net(x, detach=False)
        names = net.order if self.cfg.reference_loss == "all" else [net.order[-1]]
        total = 0.0
        losses = {}
        for name in names:
            rule = net.blocks[name].rule
            given = labels if rule.needs_labels_now() else None
            inp = net.block_input(name, outputs)
            if isinstance(rule, ObjectiveRule):
                loss = rule.loss(inp, outputs[name], given)
            else:
                loss = rule.reference_loss(outputs[name], given)
            _finite_or_raise(loss, name, rule.name, "reference loss", pos)
            losses[name] = float(loss.detach())
            total = total + loss
        for block in net.blocks.values():
            if block.optimizer is not None:
                block.optimizer.zero_grad(set_to_none=True)
        total.backward()
        for block in net.blocks.values():
            if block.optimizer is not None:
                block.optimizer.step()
        return losses


def check_network_schedule(network: Network, mode: str) -> str | None:
    """Refuse a schedule the network's rules cannot follow.

    Reference mode needs every block to have a differentiable objective (an
    objective rule, or a ``reference_loss``); cached mode cannot serve rules
    that draw fresh negative data every step.

    Returns:
        The kind of negative data the network needs (see :func:`negative_kind`).
    """
    negatives = negative_kind(network)
    if mode == "reference":
        for name in network.order:
            rule = network.blocks[name].rule
            if not (isinstance(rule, ObjectiveRule) or hasattr(rule, "reference_loss")):
                raise NotImplementedError(
                    f"reference mode differentiates a local objective end to end, but "
                    f"block '{name}' uses {rule.kind} rule '{rule.name}', which has "
                    "none; compare it against a reference built from an objective "
                    "rule (for example greedy_supervised) instead, or set "
                    "evaluate.reference: false"
                )
    if mode == "cached" and negatives is not None:
        users = [
            f"'{n}' (rule '{network.blocks[n].rule.name}')"
            for n in network.order
            if network.blocks[n].rule.negatives
        ]
        raise ConfigError(
            f"scheduler.mode=cached cannot train block {', '.join(users)}: "
            "the rule draws fresh negative data every step, but cached inputs "
            "hold one fixed input per sample; use scheduler.mode=sequential"
        )
    return negatives


def negative_kind(network: Network) -> str | None:
    """The kind of negative data the network's rules need, or None if none do.

    Raises:
        ConfigError: two blocks that ask for different kinds.
    """
    kinds: dict[str, str] = {}
    for name in network.order:
        rule = network.blocks[name].rule
        if rule.negatives:
            kinds[name] = getattr(rule.config, "negative", "hybrid")
    if len(set(kinds.values())) > 1:
        found = ", ".join(f"block '{n}' uses {k!r}" for n, k in kinds.items())
        raise ConfigError(
            "every block of a network trains on the same negative data, but "
            f"{found}; set the same 'negative' hyperparameter on all of them"
        )
    return next(iter(kinds.values()), None)


class _RowView:
    """Index a cached array by sample, each sample owning ``rows`` rows."""

    def __init__(self, store: np.ndarray, rows: int) -> None:
        self.store = store
        self.rows = rows

    def __getitem__(self, idx: np.ndarray) -> np.ndarray:
        rows = (idx[:, None] * self.rows + np.arange(self.rows)[None, :]).reshape(-1)
        return np.asarray(self.store[rows])
