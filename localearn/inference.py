"""Inference over a chain of energy blocks, then local weight updates.

The blocks of a group hold latent states ``z_1 .. z_L``; ``z_0`` is the
group's clamped input. Block ``i`` owns the energy ``E_i(z_{i-1}, z_i)``.
Each inference step lowers the total energy by gradient descent on the free
states, where the gradient on ``z_i`` is the block's own term ``dE_i/dz_i``
plus the one-hop message ``dE_{i+1}/dz_i`` that block ``i+1`` computes from
its own energy and sends down, detached. After the last step every block
updates its weights from its own energy alone, with its input detached
(Whittington and Bogacz, Neural Computation 2017).

Options are read from the rule's config when it has them:
``inference_steps`` (T), ``inference_lr`` (step size).
"""

from __future__ import annotations

import torch

from localearn.errors import DivergenceError
from localearn.isolation import audit_graph
from localearn.network import Network


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
        audit: run the isolation audit on each block's energy.
        owners: ``id(param) -> (block, name)`` for the audit.
        pos: scheduler position, for error messages.

    Returns:
        Feedforward outputs of the blocks (the messages sent up) and each
        block's energy after inference.
    """
    blocks = [net.blocks[n] for n in group]
    cfg = blocks[0].rule.config
    steps = int(getattr(cfg, "inference_steps", 20))
    lr = float(getattr(cfg, "inference_lr", 0.1))

    # feedforward initialisation of the latent states
    with torch.no_grad():
        states = []
        below = x
        for block in blocks:
            below = block.rule.init_state(block.body, below)
            states.append(below)
        top = blocks[-1].rule
        clamped = top.clamp(states[-1], labels if top.needs_labels_now() else None)
        if clamped is not None:
            states[-1] = clamped
    free = len(states) - (1 if clamped is not None else 0)

    # inference: states descend the total energy, messages one hop down
    for _ in range(steps):
        grads = _state_gradients(blocks, x, states)
        with torch.no_grad():
            for i in range(free):
                states[i] = states[i] - lr * grads[i]
        for i, z in enumerate(states):
            if not bool(torch.isfinite(z).all()):
                raise DivergenceError(
                    f"block '{group[i]}' (rule '{blocks[i].rule.name}'): latent "
                    f"state became non-finite during inference at step {pos.step}; "
                    "lower inference_lr"
                )

    # weight update: each block from its own energy and detached input
    energies = {}
    for i, block in enumerate(blocks):
        below = x if i == 0 else states[i - 1]
        energy = block.rule.energy(block.body, below.detach(), states[i].detach())
        if not bool(torch.isfinite(energy)):
            raise DivergenceError(
                f"block '{group[i]}' (rule '{block.rule.name}') has a non-finite "
                f"energy at step {pos.step}; lower the learning rate"
            )
        if audit:
            audit_graph(energy, group[i], block.rule.name, block.parameters(), owners)
        block.optimizer.zero_grad(set_to_none=True)
        energy.backward()
        block.optimizer.step()
        energies[group[i]] = float(energy.detach())

    with torch.no_grad():
        outputs = {}
        below = x
        for name, block in zip(group, blocks, strict=True):
            below = block.body(below)
            outputs[name] = below
    return outputs, energies


def _state_gradients(blocks, x, states) -> list[torch.Tensor]:
    """dE/dz_i for every state: own term plus the message from above."""
    own: list[torch.Tensor] = []
    down: list[torch.Tensor | None] = []
    for i, block in enumerate(blocks):
        below = (x if i == 0 else states[i - 1]).detach().requires_grad_(i > 0)
        z = states[i].detach().requires_grad_(True)
        energy = block.rule.energy(block.body, below, z)
        wrt = [z, below] if i > 0 else [z]
        grads = torch.autograd.grad(energy, wrt, allow_unused=True)
        own.append(grads[0] if grads[0] is not None else torch.zeros_like(z))
        down.append(grads[1] if i > 0 else None)
    total = []
    for i in range(len(blocks)):
        g = own[i]
        if i + 1 < len(blocks) and down[i + 1] is not None:
            g = g + down[i + 1]
        total.append(g.detach())
    return total
