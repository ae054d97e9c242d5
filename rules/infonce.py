"""InfoNCE for Greedy InfoMax: each block predicts its own future patches.

Greedy InfoMax (Löwe, O'Connor and Veeling, NeurIPS 2019) trains every block
on its own with the InfoNCE objective of Contrastive Predictive Coding (van den
Oord et al., 2018, eq. 4). For a block whose output lies on a grid (image
patches, or time steps) with encodings ``z`` and context ``c``, and each
prediction step ``k``, a bilinear map ``W_k`` scores the encoding ``o = k +
skip`` positions ahead against ``N`` negatives:

    f_k(z, c) = z^T W_k c
    L_k = -E[ log( exp f_k(z_pos, c) / (exp f_k(z_pos, c) + sum_j exp f_k(z_j, c)) ) ]

and the block minimises the mean of ``L_k`` over steps and directions. The
positive is never drawn as a negative. ``skip`` rows are left between the
context patch and the first predicted patch so that they do not overlap
(with patches of size ``s`` and stride ``t``, ``skip = ceil(s / t) - 1``),
as the paper's vision model does. On images the encodings themselves serve as
context; on sequences an optional GRU gives the autoregressive context of the
paper's audio model. ``score: cosine`` with a ``temperature`` replaces the
raw dot product by a scaled cosine similarity.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn import functional as F

from localearn.errors import ConfigError, ShapeError
from localearn.layers import to_grid
from localearn.rule import BlockContext, ObjectiveRule, require

DIRECTIONS = ("down", "up", "right", "left")
CHUNK_FLOATS = 1 << 20  # candidate scores computed in pieces of this size


def sample_negatives(
    pos: torch.Tensor, n: int, group: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Draw ``n`` negatives for each positive from its group, never itself.

    The pool is split into consecutive groups of ``group`` entries (one group
    per image for ``negative_source: image``, one for the whole batch
    otherwise); each positive's negatives come from its own group.

    Args:
        pos: ``(M,)`` pool index of each positive.
        n: negatives per positive.
        group: size of each group of the pool.
        generator: random generator (the global one if None).

    Returns:
        ``(M, n)`` pool indices of the negatives, drawn with replacement.
    """
    start = (pos // group) * group
    r = torch.randint(
        0, group - 1, (len(pos), n), generator=generator, device=pos.device
    )
    # shift draws at or past the positive by one, so the positive never appears
    r = r + (r >= (pos - start)[:, None]).long()
    return start[:, None] + r


def info_nce(
    pred: torch.Tensor,
    pool: torch.Tensor,
    pos: torch.Tensor,
    neg: torch.Tensor | None,
    score: str = "dot",
    temperature: float = 1.0,
    weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """InfoNCE loss of predictions against a pool of encodings.

    Args:
        pred: ``(M, C)`` predictions ``W_k c``.
        pool: ``(P, C)`` candidate encodings.
        pos: ``(M,)`` index in ``pool`` of each prediction's positive.
        neg: ``(M, N)`` indices of the negatives, or None to score against
            the whole pool (every other entry is a negative).
        score: ``dot`` (bilinear, as in the paper) or ``cosine``.
        temperature: divides the scores.
        weight: ``(M,)`` weight of each prediction's term (summed); None
            averages the terms.

    Returns:
        Cross-entropy of picking the positive, averaged or weighted.

    Example:
        >>> pred = torch.zeros(2, 3); pool = torch.randn(4, 3)
        >>> round(float(info_nce(pred, pool, torch.tensor([0, 1]), None)), 4)
        1.3863
    """
    if score == "cosine":
        pred = F.normalize(pred, dim=-1)
        pool = F.normalize(pool, dim=-1)
    if neg is None:
        logits = pred @ pool.T
        target = pos
    else:
        cand = torch.cat([pos[:, None], neg], dim=1)
        # index_select's backward is an index_add, much cheaper on CPUs than the
        # scattered accumulate behind advanced indexing
        # in chunks that stay in cache: one pass over M x (N+1) x C is memory-bound
        step = max(1, CHUNK_FLOATS // (cand.shape[1] * pool.shape[1]))
        logits = torch.cat(
            [
                (
                    pool.index_select(0, cand[i : i + step].reshape(-1)).view(
                        -1, cand.shape[1], pool.shape[1]
                    )
                    * pred[i : i + step, None, :]
                ).sum(-1)
                for i in range(0, len(cand), step)
            ]
        )
        target = torch.zeros(len(pred), dtype=torch.long, device=pred.device)
    if weight is None:
        return F.cross_entropy(logits / temperature, target)
    terms = F.cross_entropy(logits / temperature, target, reduction="none")
    return (terms * weight).sum()


@dataclass
class InfoNCEConfig:
    """Hyperparameters of :class:`InfoNCE` (defaults: Greedy InfoMax vision).

    Attributes:
        steps: prediction steps ``k = 1..steps`` (paper: 5 vision, 12 audio).
        skip: positions left between context and the first prediction; -1
            picks the smallest skip with no patch overlap.
        negatives: negatives per positive (paper: 16); 0 scores against every
            other position of the source.
        negative_source: ``batch`` (any position of any sample) or ``image``
            (other positions of the same sample).
        directions: prediction directions on an image grid, from ``down``,
            ``up``, ``right``, ``left``; on a sequence ``down`` is forward in
            time and ``up`` backward.
        score: ``dot`` (bilinear) or ``cosine``.
        temperature: divides the scores.
        context: ``none`` (encodings are the context) or ``gru``
            (autoregressive context over a sequence, as in the audio model).
        context_dim: GRU width; 0 uses the encoding width.
    """

    steps: int = 5
    skip: int = -1
    negatives: int = 16
    negative_source: str = "batch"
    directions: list[str] = field(default_factory=lambda: ["down"])
    score: str = "dot"
    temperature: float = 1.0
    context: str = "none"
    context_dim: int = 0


class InfoNCE(ObjectiveRule):
    """Greedy InfoMax: InfoNCE on the block's own grid of patches or steps."""

    Config = InfoNCEConfig
    example = {
        "in_shape": (1, 16, 16),
        "network": {
            "patches": {"size": 4, "stride": 2},
            "layers": [
                {"type": "conv", "out": 6},
                {"type": "relu"},
                {"type": "conv", "out": 6},
                {"type": "relu"},
            ],
            "split": [2],
        },
        "rule": {"steps": 2},
    }
    invalid = [
        {"steps": 0},
        {"negatives": -1},
        {"negative_source": "dataset"},
        {"directions": ["diagonal"]},
        {"score": "l2"},
        {"temperature": 0.0},
        {"context": "lstm"},
    ]

    def validate(self) -> None:
        c = self.config
        require(c.steps >= 1, "infonce", f"steps must be >= 1, got {c.steps}")
        require(
            c.skip >= -1, "infonce", f"skip must be >= 0 or -1 (auto), got {c.skip}"
        )
        require(
            c.negatives >= 0, "infonce", f"negatives must be >= 0, got {c.negatives}"
        )
        require(
            c.negative_source in ("batch", "image"),
            "infonce",
            f"negative_source must be 'batch' or 'image', got {c.negative_source!r}",
        )
        bad = [d for d in c.directions if d not in DIRECTIONS]
        require(
            bool(c.directions) and not bad,
            "infonce",
            f"directions must be a non-empty list from {DIRECTIONS}, "
            f"got {c.directions}",
        )
        require(
            c.score in ("dot", "cosine"),
            "infonce",
            f"score must be 'dot' or 'cosine', got {c.score!r}",
        )
        require(
            c.temperature > 0,
            "infonce",
            f"temperature must be > 0, got {c.temperature}",
        )
        require(
            c.context in ("none", "gru"),
            "infonce",
            f"context must be 'none' or 'gru', got {c.context!r}",
        )
        require(
            c.context_dim >= 0,
            "infonce",
            f"context_dim must be >= 0, got {c.context_dim}",
        )

    def setup(self, context: BlockContext, body: nn.Module) -> None:
        super().setup(context, body)
        c = self.config
        grid = context.grid or context.out_shape[1:]
        if len(grid) not in (1, 2):
            raise ShapeError(
                f"rule 'infonce' of block '{context.name}' needs an output on a 1-D "
                f"or 2-D grid (patches, or a conv output), but the block outputs "
                f"per-sample shape {context.out_shape} with no patch grid; set "
                "network.patches or end the block with a conv layer"
            )
        self.sequence = len(grid) == 1
        if self.sequence and any(d in ("right", "left") for d in c.directions):
            raise ConfigError(
                f"rule 'infonce' of block '{context.name}': directions {c.directions} "
                "include right/left but the grid is a sequence; use down and/or up"
            )
        if c.context == "gru" and not self.sequence:
            raise NotImplementedError(
                f"rule 'infonce' of block '{context.name}': context 'gru' is for "
                "sequences; on an image grid use context 'none' (the encodings)"
            )
        self.skip = c.skip if c.skip >= 0 else self._auto_skip(context)
        for d in c.directions:
            length = grid[0] if (self.sequence or d in ("down", "up")) else grid[1]
            reach = c.steps + self.skip
            if length - 1 - self.skip < 1:
                raise ConfigError(
                    f"rule 'infonce' of block '{context.name}': the grid has only "
                    f"{length} positions {d} (grid {tuple(grid)}), too few for any "
                    f"prediction step with skip {self.skip}; use smaller patches or "
                    "a smaller stride (network.patches) so the grid has at least "
                    f"{self.skip + 2} positions"
                )
            if reach >= length:
                raise ConfigError(
                    f"rule 'infonce' of block '{context.name}': prediction step "
                    f"{c.steps} with skip {self.skip} reaches {reach} positions "
                    f"{d}, but the grid has only {length} positions that way "
                    f"(grid {tuple(grid)}); use steps <= {length - 1 - self.skip}"
                )
        dim = context.out_shape[0]
        ctx_dim = dim
        if c.context == "gru":
            ctx_dim = c.context_dim or dim
            self.autoregressor = nn.GRU(dim, ctx_dim, batch_first=True)
        self.predictors = nn.ModuleList(
            nn.Linear(ctx_dim, dim, bias=False)
            for _ in range(len(c.directions) * c.steps)
        )

    @staticmethod
    def _auto_skip(context: BlockContext) -> int:
        size = context.extra.get("patch_size")
        stride = context.extra.get("patch_stride")
        if not size or not stride:
            return 0
        return max(math.ceil(size / stride) - 1, 0)

    def loss(
        self, x: torch.Tensor, y: torch.Tensor, labels: torch.Tensor | None = None
    ) -> torch.Tensor:
        c = self.config
        grid = to_grid(y, self.context.grid)
        if self.sequence:
            grid = grid.unsqueeze(-1)  # (B, C, T, 1)
        b, ch, h, w = grid.shape
        pool = grid.permute(0, 2, 3, 1).reshape(-1, ch)

        # predictions W_k c for every direction and step, in one product each
        preds, targets, weights = [], [], []
        n_pairs = len(c.directions) * c.steps
        for d_index, direction in enumerate(c.directions):
            ctx = (
                self._context(grid, direction)
                .permute(0, 2, 3, 1)
                .reshape(b * h * w, -1)
            )
            heads = self.predictors[d_index * c.steps : (d_index + 1) * c.steps]
            stacked = torch.cat([head.weight for head in heads], dim=0)
            all_pred = (ctx @ stacked.T).view(-1, ch)  # (B*H*W*steps, C)
            for k in range(1, c.steps + 1):
                src, dst = _pairs(b, h, w, direction, k + self.skip, grid.device)
                preds.append(all_pred.index_select(0, src * c.steps + k - 1))
                targets.append(dst)
                weights.append(
                    torch.full(
                        (len(src),), 1.0 / (len(src) * n_pairs), device=grid.device
                    )
                )
        pred = torch.cat(preds)
        pos = torch.cat(targets)
        weight = torch.cat(weights)

        # negatives from the same image or the whole batch, never the positive
        group = h * w if c.negative_source == "image" else b * h * w
        if c.negatives == 0:
            neg = _all_in_group(pos, group) if c.negative_source == "image" else None
        else:
            self._check_negatives(b, h, w, group)
            neg = sample_negatives(pos, c.negatives, group)
        return info_nce(pred, pool, pos, neg, c.score, c.temperature, weight)

    def _check_negatives(self, b: int, h: int, w: int, group: int) -> None:
        c = self.config
        if group - 1 < max(c.negatives, 1):
            raise ShapeError(
                f"rule 'infonce' of block '{self.context.name}': {c.negatives} "
                f"negatives requested but a batch of {b} on a {h}x{w} grid offers only "
                f"{group - 1} per positive from the {c.negative_source}; raise "
                "scheduler.batch_size, lower negatives, or use negative_source 'batch'"
            )

    def _context(self, grid: torch.Tensor, direction: str) -> torch.Tensor:
        if self.config.context == "none":
            return grid
        # autoregressive context: a GRU running along time in the direction of
        # prediction (forward for down, backward for up), on a (B, C, T, 1) grid
        seq = grid.squeeze(-1).transpose(1, 2)
        if direction == "up":
            seq = seq.flip(1)
        out, _ = self.autoregressor(seq)
        if direction == "up":
            out = out.flip(1)
        return out.transpose(1, 2).unsqueeze(-1)


_PAIRS: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}


def _pairs(
    b: int, h: int, w: int, direction: str, offset: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Flat indices of (context, target) positions ``offset`` apart.

    Positions are flattened as ``(sample * h + row) * w + column``.
    """
    key = (b, h, w, direction, offset, str(device))
    if key not in _PAIRS:
        bi, ri, ci = torch.meshgrid(
            torch.arange(b), torch.arange(h), torch.arange(w), indexing="ij"
        )
        dr, dc = {
            "down": (offset, 0),
            "up": (-offset, 0),
            "right": (0, offset),
            "left": (0, -offset),
        }[direction]
        tr, tc = ri + dr, ci + dc
        ok = (tr >= 0) & (tr < h) & (tc >= 0) & (tc < w)
        src = (bi * h + ri) * w + ci
        dst = (bi * h + tr) * w + tc
        _PAIRS[key] = (src[ok].to(device), dst[ok].to(device))
        if len(_PAIRS) > 256:
            _PAIRS.pop(next(iter(_PAIRS)))
    return _PAIRS[key]


def _all_in_group(pos: torch.Tensor, group: int) -> torch.Tensor:
    """Every other index of each positive's group, as explicit negatives."""
    start = (pos // group) * group
    r = torch.arange(group - 1, device=pos.device)[None, :].expand(len(pos), -1)
    r = r + (r >= (pos - start)[:, None]).long()
    return start[:, None] + r
