"""Linear CKA against its definition and its invariances."""

import pytest
import torch

from localearn.analysis import cka_matrix, linear_cka


def test_cka_matches_a_hand_computation():
    # x = (1, 2, 3) and y = (1, 3, 2) as single features: CKA is the squared
    # Pearson correlation, 0.5 ** 2 = 0.25
    x = torch.tensor([[1.0], [2.0], [3.0]])
    y = torch.tensor([[1.0], [3.0], [2.0]])
    assert linear_cka(x, y).item() == pytest.approx(0.25)


def test_cka_invariances():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 6, generator=g, dtype=torch.float64)
    q, _ = torch.linalg.qr(torch.randn(6, 6, generator=g, dtype=torch.float64))
    assert linear_cka(x, x @ q * 5.0 + 3.0).item() == pytest.approx(1.0)
    noise = torch.randn(200, 6, generator=g, dtype=torch.float64)
    assert linear_cka(x, noise).item() < 0.1


def test_cka_matrix_shape_and_diagonal():
    g = torch.Generator().manual_seed(1)
    feats = {"a": torch.randn(64, 5, generator=g), "b": torch.randn(64, 3, generator=g)}
    rows, cols, m = cka_matrix(feats, feats)
    assert rows == cols == ["a", "b"]
    assert torch.allclose(m.diagonal(), torch.ones(2, dtype=torch.float64))
    assert torch.allclose(m, m.T)


def test_cka_needs_the_same_samples():
    with pytest.raises(ValueError, match="same samples in both: got 3 and 4 rows"):
        linear_cka(torch.ones(3, 2), torch.ones(4, 2))
