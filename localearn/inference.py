"""Inference over a chain of energy blocks, then local weight updates.

The blocks of a group hold latent states ``z_1 .. z_L``; ``z_0`` is the
group's clamped input (and ``z_L`` is clamped too when the top rule's
:meth:`~localearn.rule.EnergyRule.clamp` says so). Block ``i`` owns the energy
``E_i(z_{i-1}, z_i)``. Each inference step lowers the total energy by
gradient descent on the free states, where the gradient on ``z_i`` is the
block's own term ``dE_i/dz_i`` plus the one-hop message ``dE_{i+1}/dz_i``
that block ``i+1`` computes from its own energy and sends down, detached.
After the last step every block updates its weights from its own energy
alone, with its input detached (Whittington and Bogacz, Neural Computation
2017). In the incremental variant the weights are updated at every inference
step instead (Salvatori et al., ICLR 2024, "iPC").

Two kinds of energy rule are relaxed here:

* Gaussian rules, such as predictive coding, define ``predict(body, x)``,
  the prediction ``mu`` of the block's state from its input, and optionally
  ``predict_input(z)``, a top-down prediction of the input from the state.
  Their energy is half the squared prediction errors summed over units and
  averaged over the batch (:func:`gaussian_energy`). Inference uses the
  errors directly, so autograd runs only through the predictions, all blocks
  in one backward call per step; a prediction that cannot change during
  inference (from the clamped input, weights fixed) is computed once.
  Each sample's state descends its own energy, so the step size does not
  depend on the batch size.
* Any other energy rule is relaxed by autograd on its ``energy(body, x, z)``,
  exactly as the rule returns it.

Options are read from the rule's config when it has them (the defaults in
brackets apply otherwise): ``inference_steps`` (T) [20], ``inference_lr``
(step size) [0.1], ``inference_momentum`` [0], ``inference_tolerance``
(stop once a step lowers the total energy by less than this fraction) [0],
``inference_backoff`` (undo a step that raises the total energy and multiply
the step size by this factor) [1, off], ``max_energy_ratio`` (divergence
threshold) [inf], ``incremental`` [False] and ``fixed_prediction`` [False]
(predictions and their Jacobians held at the feedforward pass, Millidge,
Tschantz and Buckley 2020, "Predictive coding approximates backprop along
arbitrary computation graphs"). Every block of a group must agree on them.

A rule may define ``observe(record)`` to receive its block's
:class:`InferenceRecord` after every batch (energies per inference step).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any

import torch

from localearn.errors import ConfigError, DivergenceError
from localearn.isolation import audit_graph
from localearn.network import Network

# a step "raises" the energy only past this relative margin (float32 noise)
_RISE = 1e-5


def gaussian_energy(
    z: torch.Tensor,
    mu: torch.Tensor,
    x: torch.Tensor | None = None,
    x_hat: torch.Tensor | None = None,
) -> torch.Tensor:
    """Energy of a Gaussian block: half its squared prediction errors.

    ``E = 1/(2B) sum_b (||z_b - mu_b||^2 + ||x_b - x_hat_b||^2)``, summed over
    units and averaged over the ``B`` entries of the leading (batch) axis, the
    second term only when a top-down prediction ``x_hat`` is given.

    Args:
        z: the block's latent state.
        mu: its prediction from the input (bottom-up).
        x: the block's input state.
        x_hat: the top-down prediction of ``x`` from ``z``, or None.

    Returns:
        The scalar energy.

    Example:
        >>> float(gaussian_energy(torch.ones(2, 3), torch.zeros(2, 3)))
        1.5
    """
    e = (z - mu).flatten()
    energy = torch.dot(e, e)
    if x_hat is not None:
        d = (x - x_hat).flatten()
        energy = energy + torch.dot(d, d)
    return energy * (0.5 / z.shape[0])


@dataclass(frozen=True)
class InferenceOptions:
    """How the latent states of a group are relaxed; see the module docstring."""

    inference_steps: int = 20
    inference_lr: float = 0.1
    inference_momentum: float = 0.0
    inference_tolerance: float = 0.0
    inference_backoff: float = 1.0
    max_energy_ratio: float = math.inf
    incremental: bool = False
    fixed_prediction: bool = False

    @classmethod
    def of(cls, config: Any) -> InferenceOptions:
        """Options set in a rule's config, defaults for the others."""
        values = {f.name: getattr(config, f.name, f.default) for f in fields(cls)}
        return cls(**values)


@dataclass
class InferenceRecord:
    """What one block went through during the inference of one batch.

    Attributes:
        energy: the block's energy at each accepted inference step; the last
            entry is the energy after inference, the one its weights learn
            from (in the incremental variant, the energy of the last step).
        steps: inference steps taken (fewer than T when stopped early).
        lr: the state step size at the end (lower after back-offs).
        backoffs: steps undone because they raised the total energy.
    """

    energy: list[float]
    steps: int
    lr: float
    backoffs: int


def relax_and_learn(
    net: Network,
    group: list[str],
    x: torch.Tensor,
    labels: torch.Tensor,
    audit: bool,
    owners: dict,
    pos,
) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """Relax the latent states of ``group``, then update each block's weights.

    Args:
        net: the network.
        group: consecutive energy blocks, lowest first.
        x: detached input of the lowest block (clamped).
        labels: labels of the batch.
        audit: run the isolation audit on every graph built for this batch.
        owners: ``id(param) -> (block, name)`` for the audit.
        pos: scheduler position (``step``, ``epoch``), for error messages.

    Returns:
        Feedforward outputs of the blocks before the update (the messages
        sent up) and each block's energy after inference.

    Raises:
        DivergenceError: an energy turned non-finite or grew past
            ``max_energy_ratio``, naming the block and the step.
        ConfigError: blocks of the group disagree on inference options.
    """
    chain = _Chain(net, group, x, audit, owners, pos)
    outputs, states = chain.start(labels)
    states, trace, info = _relax(chain, states)
    if not chain.opts.incremental:
        final = chain.learn(states, trace, info)
        trace.append(final)
    energies = torch.stack(trace).tolist()
    for i, (name, block) in enumerate(zip(group, chain.blocks, strict=True)):
        observe = getattr(block.rule, "observe", None)
        if observe is not None:
            curve = [row[i] for row in energies]
            observe(InferenceRecord(curve, info["steps"], info["lr"], info["backoffs"]))
    last = energies[-1]
    return dict(zip(group, outputs, strict=True)), dict(zip(group, last, strict=True))


class _Chain:
    """The blocks of one group, their cached predictions and their gradients."""

    def __init__(self, net: Network, group: list[str], x, audit: bool, owners, pos):
        self.names = list(group)
        self.blocks = [net.blocks[n] for n in group]
        self.rules = [b.rule for b in self.blocks]
        self.x = x
        self.audit = audit
        self.owners = owners
        self.pos = pos
        self.opts = _group_options(self.names, self.rules)
        self.gaussian = all(callable(getattr(r, "predict", None)) for r in self.rules)
        self.params = [[p for p in b.parameters() if p.requires_grad] for b in self.blocks]
        self.cache: list[tuple[torch.Tensor, torch.Tensor | None] | None] = []
        self.free = len(self.blocks)
        if self.opts.fixed_prediction and not self.gaussian:
            plain = next(r for r in self.rules if not callable(getattr(r, "predict", None)))
            raise NotImplementedError(
                f"fixed_prediction needs energy rules that define predict(body, x); "
                f"rule '{plain.name}' does not"
            )

    # -- feedforward start ----------------------------------------------------

    def start(self, labels) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Feedforward pass: the messages sent up and the initial states."""
        fixed = self.opts.fixed_prediction
        keep = self.gaussian and not self.opts.incremental
        outputs, states = [], []
        below = self.x
        for i, block in enumerate(self.blocks):
            rule = block.rule
            if keep and (i == 0 or fixed):
                # prediction kept (with its graph) for inference and the update
                leaf = below.detach().requires_grad_(i > 0)
                mu = rule.predict(block.body, leaf)
                self.cache.append((mu, leaf if i > 0 else None))
                out = state = mu.detach()
            else:
                self.cache.append(None)
                with torch.no_grad():
                    if self.gaussian:
                        out = state = rule.predict(block.body, below)
                    else:
                        out = state = block.body(below)
                        if _own_init(rule):
                            state = rule.init_state(block.body, below)
            outputs.append(out)
            states.append(state)
            below = out

        # clamp the top state (the label, in supervised predictive coding)
        top = self.rules[-1]
        clamped = top.clamp(states[-1], labels if top.needs_labels_now() else None)
        if clamped is not None:
            states[-1] = clamped.detach()
            self.free = len(states) - 1
        return outputs, states

    # -- state gradients ------------------------------------------------------

    def gradients(self, states) -> tuple[torch.Tensor, list[torch.Tensor | None]]:
        """Energy of every block and the gradient on every free state.

        In the incremental variant this also writes each block's weight
        gradient into ``.grad``.
        """
        if self.gaussian:
            return self._gaussian_gradients(states)
        return self._autograd_gradients(states)

    def _gaussian_gradients(self, states):
        incremental = self.opts.incremental
        grads: list[torch.Tensor | None] = [None] * self.free
        squares, outs, cots, leaves, receivers = [], [], [], [], []
        for i, block in enumerate(self.blocks):
            rule = block.rule
            below = self.x if i == 0 else states[i - 1]
            z = states[i]

            # prediction of the state from below (kept, or made afresh)
            cached = self.cache[i]
            if cached is not None:
                mu, leaf = cached
            else:
                leaf = below.detach().requires_grad_() if i > 0 else None
                mu = rule.predict(block.body, leaf if leaf is not None else below)

            # prediction error: its own gradient, and the message sent down
            e = z - mu.detach()
            squares.append(_square(e))
            if i < self.free:
                _accumulate(grads, i, e)
            if leaf is not None or incremental:
                outs.append(mu)
                cots.append(-e)
            if leaf is not None:
                leaves.append(leaf)
                receivers.append(i - 1)
            if self.audit:
                allowed = [leaf] if leaf is not None else []
                self._audit(mu, i, allowed)

            # top-down prediction of the input (generative blocks)
            if callable(getattr(rule, "predict_input", None)):
                free = i < self.free
                z_leaf = z.detach().requires_grad_(free)
                x_hat = rule.predict_input(z_leaf)
                if x_hat is not None:
                    d = below - x_hat.detach()
                    squares[-1] = squares[-1] + _square(d)
                    if i > 0:
                        _accumulate(grads, i - 1, d)
                    if free or incremental:
                        outs.append(x_hat)
                        cots.append(-d)
                    if free:
                        leaves.append(z_leaf)
                        receivers.append(i)
                    if self.audit:
                        self._audit(x_hat, i, [z_leaf])

        # one backward call for every block's vector-Jacobian products
        params = [p for ps in self.params for p in ps] if incremental else []
        if outs:
            vjps = torch.autograd.grad(
                outs, leaves + params, cots,
                retain_graph=self.opts.fixed_prediction, allow_unused=True,
            )
            for j, g in zip(receivers, vjps[: len(leaves)], strict=True):
                if g is not None:
                    _accumulate(grads, j, g)
            if incremental:
                self._write_weight_grads(vjps[len(leaves):], 1.0 / self.x.shape[0])
        energies = torch.stack(squares) * (0.5 / self.x.shape[0])
        return energies, grads

    def _autograd_gradients(self, states):
        grads: list[torch.Tensor | None] = [None] * self.free
        energies, leaves, receivers = [], [], []
        for i, block in enumerate(self.blocks):
            below = self.x
            if i > 0:
                below = states[i - 1].detach().requires_grad_()
                leaves.append(below)
                receivers.append(i - 1)
            z = states[i].detach().requires_grad_(i < self.free)
            if i < self.free:
                leaves.append(z)
                receivers.append(i)
            energy = block.rule.energy(block.body, below, z)
            if self.audit:
                self._audit(energy, i, [below, z])
            energies.append(energy)
        params = [p for ps in self.params for p in ps] if self.opts.incremental else []
        if not leaves and not params:
            return torch.stack([e.detach() for e in energies]), grads
        found = torch.autograd.grad(energies, leaves + params, allow_unused=True)
        for j, g in zip(receivers, found[: len(leaves)], strict=True):
            if g is not None:
                _accumulate(grads, j, g)
        if self.opts.incremental:
            self._write_weight_grads(found[len(leaves):], 1.0)
        return torch.stack([e.detach() for e in energies]), grads

    def _write_weight_grads(self, grads, scale: float) -> None:
        it = iter(grads)
        for ps in self.params:
            for p in ps:
                g = next(it)
                p.grad = None if g is None else g.mul_(scale)

    # -- weight updates -------------------------------------------------------

    def step_weights(self) -> None:
        """Step every block's own optimizer on the gradients in ``.grad``."""
        for block in self.blocks:
            if block.optimizer is not None:
                block.optimizer.step()

    def final_energies(self, states) -> list[torch.Tensor]:
        """Each block's energy at ``states``, with the graph of its weights."""
        energies = []
        for i, block in enumerate(self.blocks):
            rule = block.rule
            below = self.x if i == 0 else states[i - 1].detach()
            z = states[i].detach()
            if not self.gaussian:
                energies.append(rule.energy(block.body, below, z))
                continue
            cached = self.cache[i]
            mu = cached[0] if cached is not None else rule.predict(block.body, below)
            x_hat = None
            if callable(getattr(rule, "predict_input", None)):
                x_hat = rule.predict_input(z)
            energies.append(gaussian_energy(z, mu, below, x_hat))
        return energies

    def learn(self, states, trace, info) -> torch.Tensor:
        """Update every block's weights from its own energy at ``states``.

        The energies are checked first; if the last inference step raised
        them and back-off is on, that step is undone.
        """
        energies = self.final_energies(states)
        values = torch.stack([e.detach() for e in energies])
        if info["watch"] and trace:
            total = float(values.sum())
            self.check(values, total, trace, info["steps"], info["lr"])
            prev = float(trace[-1].sum())
            if total > prev + _RISE * abs(prev) and self.opts.inference_backoff < 1:
                info["backoffs"] += 1
                energies = self.final_energies(info["prev_states"])
                values = torch.stack([e.detach() for e in energies])
        else:
            self.check_trace([*trace, values], info["lr"])
        if self.audit:
            for i, energy in enumerate(energies):
                leaf = self.cache[i][1] if self.cache[i] is not None else None
                self._audit(energy, i, [leaf] if leaf is not None else [])

        # weight update: each block's parameters from its own energy alone
        for block in self.blocks:
            if block.optimizer is not None:
                block.optimizer.zero_grad(set_to_none=True)
        params = [p for ps in self.params for p in ps]
        graphs = [e for e in energies if e.requires_grad]
        if params and graphs:
            torch.autograd.backward(graphs, inputs=params)
        self.step_weights()
        return values

    # -- checks ---------------------------------------------------------------

    def _audit(self, tensor: torch.Tensor, i: int, allowed) -> None:
        block = self.blocks[i]
        audit_graph(tensor, self.names[i], block.rule.name, block.parameters(),
                    self.owners, allowed=allowed)

    def check(self, values, total: float, trace, step: int, lr: float) -> None:
        """Raise if the energies at inference step ``step`` diverged."""
        if not math.isfinite(total):
            i = int((~torch.isfinite(values)).nonzero()[0, 0])
            raise self._nonfinite(i, float(values[i]), step, lr)
        if trace:
            first = trace[0]
            start = float(first.sum())
            if start > 0 and total > self.opts.max_energy_ratio * start:
                raise self._rise(values, first, total, start, step, lr)

    def check_trace(self, trace, lr: float) -> None:
        """Check a whole trace at once (one synchronisation per batch)."""
        table = torch.stack(trace)
        totals = table.sum(1)
        start = float(totals[0])
        limit = self.opts.max_energy_ratio * start if start > 0 else math.inf
        bad = ~torch.isfinite(totals) | (totals > limit)
        if not bool(bad.any()):
            return
        step = int(bad.nonzero()[0, 0])
        values = table[step]
        total = float(totals[step])
        if not math.isfinite(total):
            i = int((~torch.isfinite(values)).nonzero()[0, 0])
            raise self._nonfinite(i, float(values[i]), step, lr)
        raise self._rise(values, table[0], total, start, step, lr)

    def _where(self, step: int) -> str:
        pos = self.pos
        return (
            f"inference step {step} of training step {getattr(pos, 'step', '?')} "
            f"(epoch {getattr(pos, 'epoch', '?')})"
        )

    def _nonfinite(self, i: int, value: float, step: int, lr: float) -> DivergenceError:
        return DivergenceError(
            f"block '{self.names[i]}' (rule '{self.rules[i].name}'): the energy "
            f"became {value} at {self._where(step)}; a latent state or weight is no "
            f"longer finite: lower inference_lr (now {lr:g}) or the learning rate"
        )

    def _rise(self, values, first, total, start, step: int, lr: float):
        i = int((values - first).argmax())
        return DivergenceError(
            f"block '{self.names[i]}' (rule '{self.rules[i].name}'): inference "
            f"diverged at {self._where(step)}: the total energy rose from "
            f"{start:.4g} to {total:.4g}, past max_energy_ratio="
            f"{self.opts.max_energy_ratio:g} times its initial value; lower "
            f"inference_lr (now {lr:g}) or set inference_backoff below 1"
        )


def _relax(chain: _Chain, states):
    """Inference: descend the total energy on the free states.

    Returns:
        The final states, the accepted energies per step (tensors of one
        entry per block) and a dict with ``steps``, ``lr``, ``backoffs``,
        ``watch`` (energies were checked at every step) and ``prev_states``
        (the states before the last step, to undo it).
    """
    opts = chain.opts
    lr = opts.inference_lr
    backoff = opts.inference_backoff < 1
    watch = backoff or opts.inference_tolerance > 0
    velocity: list[torch.Tensor | None] = [None] * chain.free
    trace: list[torch.Tensor] = []
    prev = None
    info = {"steps": 0, "backoffs": 0, "watch": watch}
    budget = opts.inference_steps if chain.free or opts.incremental else 0
    for t in range(budget):
        if opts.incremental:
            for block in chain.blocks:
                if block.optimizer is not None:
                    block.optimizer.zero_grad(set_to_none=True)
        energies, grads = chain.gradients(states)
        total = float(energies.sum()) if watch else 0.0
        rose = False
        if watch:
            chain.check(energies, total, trace, t, lr)
            rose = prev is not None and total > prev[2] + _RISE * abs(prev[2])
        if rose and backoff:
            # back off: smaller steps, momentum reset, the step undone unless
            # the weights have moved with it (incremental)
            lr *= opts.inference_backoff
            velocity = [None] * chain.free
            info["backoffs"] += 1
            if not opts.incremental:
                states, grads, total = prev
        if not (rose and backoff and not opts.incremental):
            trace.append(energies)
        tol = opts.inference_tolerance
        if tol > 0 and prev is not None and not rose and prev[2] - total <= tol * abs(
            prev[2]
        ):
            if not opts.incremental:
                trace.pop()  # the update re-evaluates this state
            break
        if opts.incremental:
            chain.step_weights()
        prev = (states, grads, total)
        states = _descend(states, grads, velocity, lr, opts.inference_momentum, chain.free)
        info["steps"] += 1

    info["lr"] = lr
    info["prev_states"] = prev[0] if prev is not None else states
    if opts.incremental and not watch:
        chain.check_trace(trace, lr)
    return states, trace, info


def _descend(states, grads, velocity, lr: float, momentum: float, free: int) -> list:
    """One inference step: heavy-ball gradient descent on the free states."""
    new = list(states)
    for j in range(free):
        g = grads[j]
        if g is None:
            continue
        if momentum:
            if velocity[j] is not None:
                g = velocity[j].mul(momentum).add_(g)
            velocity[j] = g
        new[j] = states[j].sub(g, alpha=lr)
    return new


def _square(e: torch.Tensor) -> torch.Tensor:
    flat = e.flatten()
    return torch.dot(flat, flat)


def _accumulate(grads: list, j: int, g: torch.Tensor) -> None:
    if j < len(grads):
        grads[j] = g if grads[j] is None else grads[j] + g


def _own_init(rule) -> bool:
    from localearn.rule import EnergyRule

    return type(rule).init_state is not EnergyRule.init_state


def _group_options(names: list[str], rules) -> InferenceOptions:
    """The group's inference options; every block must set the same."""
    opts = [InferenceOptions.of(r.config) for r in rules]
    for name, other in zip(names[1:], opts[1:], strict=True):
        if other != opts[0]:
            diff = [
                f"{f.name} {getattr(opts[0], f.name)!r} vs {getattr(other, f.name)!r}"
                for f in fields(InferenceOptions)
                if getattr(opts[0], f.name) != getattr(other, f.name)
            ]
            raise ConfigError(
                f"blocks '{names[0]}' and '{name}' relax together but set different "
                f"inference options ({', '.join(diff)}); give every block of the "
                "chain the same inference options"
            )
    return opts[0]
