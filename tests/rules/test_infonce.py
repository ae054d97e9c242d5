"""InfoNCE (Greedy InfoMax): the loss, negatives and geometry."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from localearn.errors import ConfigError, ShapeError
from localearn.network import Network
from localearn.rule import BlockContext, make_rule
from localearn.rules.infonce import info_nce, sample_negatives


def _rule(grid_len, channels=4, **options):
    rule = make_rule("infonce", {"skip": 0, **options})
    ctx = BlockContext("b", (channels, grid_len), (channels, grid_len))
    rule.setup(ctx, torch.nn.Identity())
    return rule


def test_uncorrelated_features_give_log_one_plus_negatives():
    rule = _rule(12, channels=32, steps=3, negatives=16)
    for head in rule.predictors:
        torch.nn.init.normal_(head.weight, std=0.01 / math.sqrt(32))
    y = torch.randn(64, 32, 12)
    assert rule.loss(None, y).item() == pytest.approx(math.log(17), abs=0.01)


def test_all_scores_equal_give_exactly_log_one_plus_negatives():
    rule = _rule(8, steps=2, negatives=7, negative_source="image")
    for head in rule.predictors:
        torch.nn.init.zeros_(head.weight)
    assert rule.loss(None, torch.randn(3, 4, 8)).item() == pytest.approx(math.log(8))


def test_tiny_sequence_matches_hand_computation():
    # z_0 = (1, 0), z_1 = (0, 1), z_2 = (1, 1); W = I; one step ahead; every
    # position of the sequence is a candidate. Worked by hand:
    #   t = 0: logits (1, 0, 1), positive z_1 -> log(1 + 2e)
    #   t = 1: logits (0, 1, 1), positive z_2 -> log(1 + 2e) - 1
    #   mean = log(1 + 2e) - 0.5 = 1.3619948
    rule = _rule(3, channels=2, steps=1, negatives=0)
    with torch.no_grad():
        rule.predictors[0].weight.copy_(torch.eye(2))
    y = torch.tensor([[[1.0, 0.0, 1.0], [0.0, 1.0, 1.0]]])
    assert rule.loss(None, y).item() == pytest.approx(1.3619948, abs=1e-6)


def test_sampled_negatives_match_a_direct_computation():
    pred = torch.randn(5, 3)
    pool = torch.randn(9, 3)
    pos = torch.tensor([0, 2, 4, 6, 8])
    neg = torch.tensor([[1, 2], [0, 3], [5, 5], [0, 1], [7, 2]])
    want = 0.0
    for m in range(5):
        scores = [float(pred[m] @ pool[pos[m]])] + [
            float(pred[m] @ pool[j]) for j in neg[m]
        ]
        want += -scores[0] + math.log(sum(math.exp(s) for s in scores))
    assert float(info_nce(pred, pool, pos, neg)) == pytest.approx(want / 5, rel=1e-5)


def test_loss_gradient_matches_autograd_of_a_direct_formula():
    pred = torch.randn(4, 3, dtype=torch.double, requires_grad=True)
    pool = torch.randn(6, 3, dtype=torch.double)
    pos = torch.tensor([1, 2, 3, 4])
    info_nce(pred, pool, pos, None).backward()
    soft = torch.softmax(pred.detach() @ pool.T, 1)
    onehot = torch.nn.functional.one_hot(pos, 6).double()
    assert torch.allclose(pred.grad, (soft - onehot) @ pool / 4)


@settings(max_examples=50, deadline=None)
@given(
    group=st.integers(2, 30),
    n=st.integers(1, 40),
    groups=st.integers(1, 4),
    seed=st.integers(0, 10_000),
)
def test_the_positive_is_never_a_negative(group, n, groups, seed):
    pos = torch.arange(groups * group)
    neg = sample_negatives(pos, n, group, torch.Generator().manual_seed(seed))
    assert not (neg == pos[:, None]).any()
    assert ((neg // group) == (pos // group)[:, None]).all()


def test_cosine_score_with_temperature():
    pred = torch.tensor([[2.0, 0.0]])
    pool = torch.tensor([[1.0, 0.0], [0.0, 3.0]])
    got = float(info_nce(pred, pool, torch.tensor([0]), None, "cosine", 0.5))
    assert got == pytest.approx(math.log(1 + math.exp(-2.0)), abs=1e-6)


IMAGE_NET = {
    "patches": {"size": 8, "stride": 4},
    "layers": [
        {"type": "conv", "out": 8},
        {"type": "relu"},
        {"type": "conv", "out": 8},
        {"type": "relu"},
    ],
    "split": [2],
    "rule": {
        "name": "infonce",
        "steps": 2,
        "negatives": 16,
        "directions": ["down", "up", "right", "left"],
    },
}


def test_patch_grid_and_automatic_skip():
    net = Network.from_config(IMAGE_NET, (1, 28, 28), 10)
    assert net.grid == (6, 6)
    assert net.blocks["block1"].rule.skip == 1  # 8x8 patches, stride 4


def test_batch_size_one_works_with_batch_negatives():
    net = Network.from_config(IMAGE_NET, (1, 28, 28), 10)
    outs = net(torch.rand(1, 1, 28, 28))
    loss = net.blocks["block1"].rule.loss(None, outs["block1"])
    assert math.isfinite(loss.item())


def test_too_few_negatives_is_a_clear_error():
    rule = _rule(4, steps=1, negatives=16, negative_source="image")
    with pytest.raises(
        ShapeError,
        match=r"16 negatives requested but a batch of 1 "
        r"on a 4x1 grid offers only 3 per positive",
    ):
        rule.loss(None, torch.randn(1, 4, 4))


def test_prediction_steps_beyond_the_grid_are_refused():
    cfg = dict(IMAGE_NET, rule={"name": "infonce", "steps": 5})
    with pytest.raises(
        ConfigError,
        match=r"prediction step 5 with skip 1 reaches 6 "
        r"positions down, but the grid has only 6",
    ):
        Network.from_config(cfg, (1, 28, 28), 10)


def test_sideways_directions_on_a_sequence_are_refused():
    with pytest.raises(
        ConfigError, match="include right/left but the grid is a sequence"
    ):
        _rule(10, directions=["right"])


def test_gru_context_on_a_sequence():
    rule = _rule(10, channels=4, steps=2, context="gru", context_dim=6)
    loss = rule.loss(None, torch.randn(3, 4, 10))
    loss.backward()
    assert rule.autoregressor.weight_ih_l0.grad is not None


def test_right_direction_predicts_the_next_column():
    # each position's feature is a one-hot code of its (row, column); W maps the
    # code of (i, j) to that of (i, j + 1): perfect to the right, wrong downward
    grid = torch.zeros(1, 25, 5, 5)
    shift = torch.zeros(25, 25)
    for i in range(5):
        for j in range(5):
            grid[0, i * 5 + j, i, j] = 10.0
            if j < 4:
                shift[i * 5 + j + 1, i * 5 + j] = 1.0
    losses = {}
    for direction in ("right", "down"):
        rule = make_rule(
            "infonce",
            {"skip": 0, "steps": 1, "negatives": 0, "directions": [direction]},
        )
        rule.setup(BlockContext("b", (25, 5, 5), (25, 5, 5)), torch.nn.Identity())
        with torch.no_grad():
            rule.predictors[0].weight.copy_(shift)
        losses[direction] = rule.loss(None, grid).item()
    assert losses["right"] < 1e-3
    assert losses["down"] > 10
