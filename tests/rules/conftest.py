"""Shared set-up of the rule tests."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    # tiny tensors: a single thread avoids thread start-up and hand-off costs
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
