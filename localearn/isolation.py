"""The isolation audit: no local loss may reach another block's parameters.

The audit walks the autograd graph of a local loss (or energy) from its
``grad_fn`` down to the leaves and checks that every parameter it reaches
belongs to the block being trained (its body or its rule's heads). It also
checks the weight changes of plasticity rules name only the block's own
parameters. A leak raises :class:`IsolationError` naming the block, the rule
and the foreign parameter.

Example:
    >>> import torch
    >>> w = torch.nn.Parameter(torch.ones(2))
    >>> sorted(id(p) == id(w) for p in graph_leaves((w * 2).sum()))
    [True]
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from localearn.errors import IsolationError


def graph_leaves(loss: torch.Tensor) -> list[torch.Tensor]:
    """Every leaf tensor that ``loss``'s autograd graph accumulates into."""
    leaves: list[torch.Tensor] = []
    seen: set[int] = set()
    stack = [loss.grad_fn] if loss.grad_fn is not None else []
    while stack:
        fn = stack.pop()
        if fn is None or id(fn) in seen:
            continue
        seen.add(id(fn))
        variable = getattr(fn, "variable", None)
        if variable is not None:
            leaves.append(variable)
        stack.extend(nxt for nxt, _ in fn.next_functions)
    return leaves


def audit_graph(
    loss: torch.Tensor,
    block: str,
    rule: str,
    own: Iterable[torch.Tensor],
    owners: dict[int, tuple[str, str]],
    allowed: Iterable[torch.Tensor] = (),
) -> int:
    """Check that a local loss reaches only the block's own parameters.

    Args:
        loss: the local loss or energy, before ``backward``.
        block: name of the block being trained.
        rule: name of its rule.
        own: the block's parameters (body and rule heads).
        owners: ``id(param) -> (block, param name)`` for the whole network.
        allowed: other leaves the graph may reach (latent states of the block
            during inference, detached inputs that require grad).

    Returns:
        The number of parameters the graph reaches.

    Raises:
        IsolationError: naming the block, the rule and the foreign tensor.
    """
    own_ids = {id(p) for p in own}
    allowed_ids = {id(t) for t in allowed}
    reached = 0
    for leaf in graph_leaves(loss):
        if id(leaf) in own_ids:
            reached += 1
            continue
        if id(leaf) in allowed_ids:
            continue
        if id(leaf) in owners:
            other, pname = owners[id(leaf)]
            raise IsolationError(
                f"isolation broken: the local loss of block '{block}' (rule "
                f"'{rule}') reaches parameter '{pname}' of block '{other}'; "
                "detach every tensor that comes from another block"
            )
        raise IsolationError(
            f"isolation broken: the local loss of block '{block}' (rule '{rule}') "
            f"reaches a tensor of shape {tuple(leaf.shape)} that requires grad "
            "and belongs to no block; detach it or register it as a rule head"
        )
    return reached


def audit_update(
    names: Iterable[str], block: str, rule: str, own_names: Iterable[str]
) -> None:
    """Check that a plasticity rule's weight changes name only its own block.

    Raises:
        IsolationError: naming the block, the rule and the unknown parameter.
    """
    valid = set(own_names)
    for name in names:
        if name not in valid:
            raise IsolationError(
                f"isolation broken: plasticity rule '{rule}' of block '{block}' "
                f"returned a change for '{name}', which is not a parameter of the "
                f"block; valid names: {', '.join(sorted(valid))}"
            )
