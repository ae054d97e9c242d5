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

* Gaussian rules, such as predictive coding, define ``predictor(body)``, the
  module that predicts the block's state from its input, and
  ``input_predictor()``, a module that predicts the input from the state
  (top-down), or None. Their energy is half the squared prediction errors
  summed over units and averaged over the batch (:func:`gaussian_energy`);
  each sample's state descends its own energy, so the step size does not
  depend on the batch size. Inference uses the errors directly and needs
  only vector-Jacobian products of the predictors; for predictors built of
  linear layers, flattening and pointwise activations these are written out
  by hand (:class:`Path`), without the autograd engine. The prediction from
  the clamped input is computed once per batch (its weights do not move
  during inference), and the first step reuses the feedforward pass, where
  every unclamped error is zero.
* Any other energy rule is relaxed by autograd on its ``energy(body, x, z)``,
  exactly as the rule returns it.

A supervised block trained without the blocks above it (sequential mode)
would see no label; its chain then extends through the energy blocks above,
up to the network's last block, which relax their states with it but keep
their weights.

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
from torch import nn
from torch.nn import functional as F

from localearn.errors import ConfigError, DivergenceError
from localearn.isolation import audit_graph
from localearn.network import Network
from localearn.rule import EnergyRule

# a step raises the energy only past this relative margin (float32 noise)
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
    energy = _square(z - mu)
    if x_hat is not None:
        energy = energy + _square(x - x_hat)
    return energy * (0.5 / z.shape[0])


def is_gaussian(rule: Any) -> bool:
    """Whether a rule follows the Gaussian protocol (``predictor``)."""
    return callable(getattr(rule, "predictor", None))


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
            from (in the incremental variant, the energy at the last step).
        steps: inference steps taken (fewer than T when stopped early).
        lr: the state step size at the end (lower after back-offs).
        backoffs: steps undone because they raised the total energy.
    """

    energy: list[float]
    steps: int
    lr: float
    backoffs: int


# -- predictions and their vector-Jacobian products ---------------------------

_POINTWISE = (nn.GELU, nn.ReLU, nn.Tanh, nn.Sigmoid)
_RESHAPE = (nn.Flatten, nn.Unflatten, nn.Identity)


def _layers(module: nn.Module) -> list[nn.Module] | None:
    """The layers of a (nested) ``nn.Sequential`` if each has a written-out
    vector-Jacobian product, else None."""
    if type(module) is nn.Sequential:
        out = []
        for layer in module:
            inner = _layers(layer)
            if inner is None:
                return None
            out.extend(inner)
        return out
    if type(module) in (nn.Linear, *_POINTWISE, *_RESHAPE):
        return [module]
    return None


class Path:
    """A prediction module with its vector-Jacobian product.

    For a module made of linear layers, flattening and GELU, ReLU, tanh or
    sigmoid activations, the forward pass keeps what the backward pass needs
    and :meth:`vjp` applies the transposed Jacobian layer by layer (``g W``
    for a linear layer, ``g * phi'(a)`` for an activation) with no autograd
    graph. Any other module goes through autograd.

    Args:
        module: maps a batch of inputs to a batch of predictions.

    Example:
        >>> path = Path(nn.Sequential(nn.Linear(3, 2), nn.Tanh()))
        >>> y, saved = path.forward(torch.randn(4, 3))
        >>> path.vjp(saved, torch.ones_like(y)).shape
        torch.Size([4, 3])
    """

    def __init__(self, module: nn.Module) -> None:
        self.module = module
        self.layers = _layers(module)

    @property
    def written_out(self) -> bool:
        """Whether the vector-Jacobian product runs without autograd."""
        return self.layers is not None

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, Any]:
        """Prediction (detached) and what :meth:`vjp` needs."""
        if self.layers is None:
            leaf = x.detach().requires_grad_()
            with torch.enable_grad():
                y = self.module(leaf)
            return y.detach(), (leaf, y)
        if torch.is_grad_enabled():
            with torch.no_grad():
                return self._written_forward(x)
        return self._written_forward(x)

    def vjp(self, saved: Any, g: torch.Tensor, keep: bool = False) -> torch.Tensor:
        """``J^T g``, with ``J`` the Jacobian at the input of :meth:`forward`.

        Args:
            saved: the second output of :meth:`forward`.
            g: a cotangent shaped like the prediction.
            keep: keep the autograd graph for another product (autograd only).
        """
        if self.layers is None:
            leaf, y = saved
            (out,) = torch.autograd.grad(
                y, leaf, g, retain_graph=keep, allow_unused=True
            )
            return out if out is not None else torch.zeros_like(leaf)
        if torch.is_grad_enabled():
            with torch.no_grad():
                return self._written_vjp(saved, g)
        return self._written_vjp(saved, g)

    def _written_forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list]:
        saved = []
        for layer in self.layers:
            kind = type(layer)
            if kind is nn.Linear:
                saved.append(layer.weight)
                x = F.linear(x, layer.weight, layer.bias)
            elif kind is nn.GELU:
                saved.append(x)
                x = F.gelu(x, approximate=layer.approximate)
            elif kind in _POINTWISE:
                x = layer(x)
                saved.append(x)
            else:
                saved.append(x.shape)
                x = layer(x)
        return x, saved

    def _written_vjp(self, saved: Any, g: torch.Tensor) -> torch.Tensor:
        aten = torch.ops.aten
        for layer, s in zip(reversed(self.layers), reversed(saved), strict=True):
            kind = type(layer)
            if kind is nn.Linear:
                g = g.matmul(s)
            elif kind is nn.GELU:
                g = aten.gelu_backward(g, s, approximate=layer.approximate)
            elif kind is nn.ReLU:
                g = aten.threshold_backward(g, s, 0)
            elif kind is nn.Tanh:
                g = aten.tanh_backward(g, s)
            elif kind is nn.Sigmoid:
                g = aten.sigmoid_backward(g, s)
            else:
                g = g.reshape(s)
        return g


# -- the scheduler's entry point ----------------------------------------------


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
    chain = _Chain(net, _inference_chain(net, group), len(group), x, audit, owners, pos)
    outputs, states = chain.start(labels)
    states, trace, info = _relax(chain, states)
    if not chain.opts.incremental:
        trace.append(chain.learn(states, trace, info))
    energies = torch.stack(trace).tolist()
    for i, block in enumerate(chain.blocks[: len(group)]):
        observe = getattr(block.rule, "observe", None)
        if observe is not None:
            curve = [row[i] for row in energies]
            observe(InferenceRecord(curve, info["steps"], info["lr"], info["backoffs"]))
    final = dict(zip(group, energies[-1], strict=False))
    return dict(zip(group, outputs, strict=False)), final


def _inference_chain(net: Network, group: list[str]) -> list[str]:
    """The blocks that relax together with ``group``.

    A group whose top block needs labels but is not the network's last block
    (a supervised block trained on its own, as in sequential mode) gets the
    energy blocks above it, up to the last, so that inference carries the
    label's error down to it; those blocks relax their states but keep their
    weights.
    """
    names = list(group)
    top = net.blocks[names[-1]].rule
    if not top.needs_labels_now() or top.context is None or top.context.is_last:
        return names
    order = net.order
    for name in order[order.index(names[-1]) + 1 :]:
        block = net.blocks[name]
        if not isinstance(block.rule, EnergyRule) or list(block.inputs) != [names[-1]]:
            break
        names.append(name)
        if block.rule.context.is_last:
            break
    return names


class _Chain:
    """The blocks of one group: their predictions, gradients and updates."""

    def __init__(
        self, net: Network, names: list[str], learners: int, x, audit: bool, owners, pos
    ):
        self.names = list(names)
        self.blocks = [net.blocks[n] for n in names]
        self.learners = self.blocks[:learners]
        self.rules = [b.rule for b in self.blocks]
        self.x = x
        self.audit = audit
        self.owners = owners
        self.pos = pos
        self.opts = _group_options(self.names, self.rules)
        self.gaussian = all(is_gaussian(r) for r in self.rules)
        self.params = [
            [p for p in b.parameters() if p.requires_grad] for b in self.learners
        ]
        self.free = len(self.blocks)
        self.up: list[Path] = []
        self.down: list[Path | None] = []
        self.cache: list[Any] = [None] * len(self.blocks)
        self._begin: float | None = None
        if self.gaussian:
            for block in self.blocks:
                self.up.append(Path(block.rule.predictor(block.body)))
                head = block.rule.input_predictor()
                self.down.append(Path(head) if head is not None else None)
        elif self.opts.fixed_prediction:
            plain = next(r for r in self.rules if not is_gaussian(r))
            raise NotImplementedError(
                f"fixed_prediction needs Gaussian energy rules (with predictor()); "
                f"rule '{plain.name}' has none"
            )

    # -- feedforward start ----------------------------------------------------

    def start(self, labels) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Feedforward pass: the messages sent up and the initial states."""
        fast = self.gaussian and not self.opts.incremental
        outputs, states = [], []
        below = self.x
        for i, block in enumerate(self.blocks):
            rule = block.rule
            if fast and i == 0:
                # the prediction from the clamped input, kept with its graph
                mu = self.up[0].module(below)
                self.cache[0] = mu
                out = state = mu.detach()
            elif fast:
                # kept for the first inference step (and every step with
                # fixed predictions): the prediction and its Jacobian
                out, saved = self.up[i].forward(below)
                if self.audit and not self.up[i].written_out:
                    self._audit(saved[1], i, [saved[0]])
                self.cache[i] = (out, saved, below)
                state = out
            else:
                with torch.no_grad():
                    if self.gaussian:
                        out = state = self.up[i].module(below)
                    else:
                        out = state = block.body(below)
                        if type(rule).init_state is not EnergyRule.init_state:
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

    def gradients(
        self, states, first: bool = False
    ) -> tuple[torch.Tensor, list[torch.Tensor | None]]:
        """Energy of every block and the gradient on every free state.

        Args:
            states: the latent states.
            first: ``states`` are the initial ones (Gaussian rules then reuse
                the feedforward pass, where every unclamped error is zero).

        In the incremental variant this also writes each block's weight
        gradient into ``.grad``.
        """
        if self.gaussian and not self.opts.incremental:
            with torch.no_grad():
                return self._gaussian_gradients(states, first)
        return self._autograd_gradients(states)

    def _gaussian_gradients(self, states, first: bool):
        fixed, free, cache = self.opts.fixed_prediction, self.free, self.cache
        grads: list[torch.Tensor | None] = [None] * free
        squares = []
        for i, (up, down) in enumerate(zip(self.up, self.down, strict=True)):
            below = self.x if i == 0 else states[i - 1]
            z = states[i]

            # prediction error: its own gradient, and J^T e sent down
            if i == 0:
                mu = cache[0].detach()
            elif fixed or first:
                mu, saved, _ = cache[i]
            else:
                mu, saved = up.forward(below)
                if self.audit and not up.written_out:
                    self._audit(saved[1], i, [saved[0]])
            e = z - mu
            square = _square(e)
            if i < free:
                grads[i] = e
            if i > 0 and not (first and i < free):
                _deduct(grads, i - 1, up.vjp(saved, e, keep=fixed))

            # top-down prediction error of the input (generative blocks)
            if down is not None:
                x_hat, saved = down.forward(z)
                d = below - x_hat
                square = square + _square(d)
                if i > 0:
                    _accumulate(grads, i - 1, d)
                if self.audit and not down.written_out:
                    self._audit(saved[1], i, [saved[0]])
                if i < free:
                    _deduct(grads, i, down.vjp(saved, d))
            squares.append(square)
        energies = torch.stack(squares).mul_(0.5 / self.x.shape[0])
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
        values = torch.stack([e.detach() for e in energies])
        params = [p for ps in self.params for p in ps] if self.opts.incremental else []
        if not leaves and not params:
            return values, grads
        found = torch.autograd.grad(energies, leaves + params, allow_unused=True)

        # Gaussian energies are batch means; each sample descends its own
        scale = self.x.shape[0] if self.gaussian else 1
        for j, g in zip(receivers, found[: len(leaves)], strict=True):
            if g is not None:
                _accumulate(grads, j, g.mul_(scale) if scale != 1 else g)
        rest = iter(found[len(leaves) :])
        for ps in self.params if params else []:
            for p in ps:
                p.grad = next(rest)
        return values, grads

    # -- weight updates -------------------------------------------------------

    def zero_weight_grads(self) -> None:
        """Clear the weight gradients of every learning block (set to None)."""
        for ps in self.params:
            for p in ps:
                p.grad = None

    def step_weights(self) -> None:
        """Step every learning block's own optimizer on its ``.grad``."""
        for block in self.learners:
            if block.optimizer is not None:
                block.optimizer.step()

    def energies_to_learn(self, states) -> list[torch.Tensor]:
        """Each block's energy at ``states``, with the graph of its weights."""
        energies = []
        for i, block in enumerate(self.blocks):
            rule = block.rule
            below = self.x if i == 0 else states[i - 1].detach()
            z = states[i].detach()
            if not self.gaussian:
                energies.append(rule.energy(block.body, below, z))
                continue
            if i == 0:
                mu = self.cache[0]
            elif self.opts.fixed_prediction:
                mu = self.up[i].module(self.cache[i][2])
            else:
                mu = self.up[i].module(below)
            down = self.down[i]
            x_hat = down.module(z) if down is not None else None
            energies.append(gaussian_energy(z, mu, below, x_hat))
        return energies

    def learn(self, states, trace, info) -> torch.Tensor:
        """Update every block's weights from its own energy at ``states``.

        The energies are checked first; if the last inference step raised
        them and back-off is on, that step is undone.
        """
        energies = self.energies_to_learn(states)
        values = torch.stack([e.detach() for e in energies])
        if info["watch"] and trace:
            total = float(values.sum())
            self.check(values, total, trace[0], info["steps"], info["lr"])
            prev = float(trace[-1].sum())
            if total > prev + _RISE * abs(prev) and info["backoff"]:
                info["backoffs"] += 1
                energies = self.energies_to_learn(info["prev_states"])
                values = torch.stack([e.detach() for e in energies])
        else:
            self.check_trace([*trace, values], info["lr"])
        if self.audit:
            for i, energy in enumerate(energies):
                self._audit(energy, i, [])

        # weight update: each block's parameters from its own energy alone
        self.zero_weight_grads()
        params = [p for ps in self.params for p in ps]
        graphs = [e for e in energies[: len(self.learners)] if e.requires_grad]
        if params and graphs:
            torch.autograd.backward(graphs, inputs=params)
        self.step_weights()
        return values

    # -- checks ---------------------------------------------------------------

    def _audit(self, tensor: torch.Tensor, i: int, allowed) -> None:
        block = self.blocks[i]
        audit_graph(
            tensor,
            self.names[i],
            block.rule.name,
            block.parameters(),
            self.owners,
            allowed=allowed,
        )

    def check(self, values, total: float, start, step: int, lr: float) -> None:
        """Raise if the energies at inference step ``step`` diverged.

        Args:
            values: the energy of every block at that step.
            total: their sum.
            start: the energies at the start of inference, or None.
            step: the inference step, for the message.
            lr: the current step size, for the message.
        """
        if not math.isfinite(total):
            i = int((~torch.isfinite(values)).nonzero()[0, 0])
            raise self._nonfinite(i, float(values[i]), step, lr)
        if start is not None:
            if self._begin is None:
                self._begin = float(start.sum())
            begin = self._begin
            if begin > 0 and total > self.opts.max_energy_ratio * begin:
                raise self._rise(values, start, total, begin, step, lr)

    def check_trace(self, trace, lr: float) -> None:
        """Check a whole trace at once (one synchronisation per batch)."""
        table = torch.stack(trace)
        totals = table.sum(1)
        begin = float(totals[0])
        limit = self.opts.max_energy_ratio * begin if begin > 0 else math.inf
        bad = ~torch.isfinite(totals) | (totals > limit)
        if bool(bad.any()):
            step = int(bad.nonzero()[0, 0])
            self.check(table[step], float(totals[step]), table[0], step, lr)

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
    # with fixed predictions the states descend no energy: nothing to back off
    backoff = opts.inference_backoff < 1 and not opts.fixed_prediction
    watch = backoff or opts.inference_tolerance > 0
    velocity: list[torch.Tensor | None] = [None] * chain.free
    trace: list[torch.Tensor] = []
    prev = None
    info: dict[str, Any] = {
        "steps": 0,
        "backoffs": 0,
        "watch": watch,
        "backoff": backoff,
    }
    budget = opts.inference_steps if chain.free or opts.incremental else 0
    for t in range(budget):
        if opts.incremental:
            chain.zero_weight_grads()
        energies, grads = chain.gradients(states, first=t == 0)
        total = float(energies.sum()) if watch else 0.0
        rose = False
        if watch:
            chain.check(energies, total, trace[0] if trace else None, t, lr)
            rose = prev is not None and total > prev[2] + _RISE * abs(prev[2])
        undo = rose and backoff and not opts.incremental
        if rose and backoff:
            # back off: smaller steps and momentum reset; the step is undone
            # unless the weights moved with it (incremental)
            lr *= opts.inference_backoff
            velocity = [None] * chain.free
            info["backoffs"] += 1
            if undo:
                states, grads, total = prev
        if not undo:
            trace.append(energies)
        tol = opts.inference_tolerance
        if (
            tol > 0
            and prev is not None
            and not rose
            and (prev[2] - total <= tol * abs(prev[2]))
        ):
            if not opts.incremental:
                trace.pop()  # the weight update evaluates this state again
            break
        if opts.incremental:
            chain.step_weights()
        prev = (states, grads, total)
        states = _descend(states, grads, velocity, lr, opts.inference_momentum)
        info["steps"] += 1

    info["lr"] = lr
    info["prev_states"] = prev[0] if prev is not None else states
    if opts.incremental and not watch:
        chain.check_trace(trace, lr)
    return states, trace, info


def _descend(states, grads, velocity, lr: float, momentum: float) -> list:
    """One inference step: heavy-ball gradient descent on the free states."""
    new = list(states)
    for j, g in enumerate(grads):
        if g is None:
            continue
        if momentum:
            if velocity[j] is not None:
                g = velocity[j].mul(momentum).add_(g)
            velocity[j] = g
        new[j] = states[j].sub(g, alpha=lr)
    return new


def _square(e: torch.Tensor) -> torch.Tensor:
    flat = e.reshape(-1)
    return torch.dot(flat, flat)


def _accumulate(grads: list, j: int, g: torch.Tensor) -> None:
    """``grads[j] += g``, for a free state ``j``."""
    if j < len(grads):
        grads[j] = g if grads[j] is None else grads[j] + g


def _deduct(grads: list, j: int, g: torch.Tensor) -> None:
    """``grads[j] -= g``, for a free state ``j``."""
    if j < len(grads):
        grads[j] = -g if grads[j] is None else grads[j] - g


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
