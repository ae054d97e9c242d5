"""Peak-memory measurement in a forked child."""

import pytest
import torch

from localearn.memory import measure_peak


def test_peak_memory_of_a_large_allocation_after_parallel_work():
    torch.randn(512, 512) @ torch.randn(512, 512)  # start the thread pool first
    out = measure_peak(lambda: torch.ones(32, 1024, 1024).add_(1).sum().item())
    assert 100 < out["delta_mb"] < 1000  # 128 MiB tensor


def test_an_error_in_the_work_is_reported():
    def fail():
        raise ValueError("boom")

    with pytest.raises(RuntimeError, match="ValueError: boom"):
        measure_peak(fail)
