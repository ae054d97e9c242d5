import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
import plugins  # noqa: E402,F401  (registers the test rules)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="session")
def digits():
    from localearn.data import load_dataset

    return load_dataset("digits")
