"""One epoch of Krotov-Hopfield learning at the paper's MNIST setting.

2,000 hidden units, p = 3, k = 7, Delta = 0.4, batch 100 (Krotov and
Hopfield, PNAS 2019), one epoch of the 4,000 training images of the embedded
MNIST subset, through the scheduler exactly as an experiment trains it
(finiteness checks and optimizer step included). For comparison the same
epoch is also run as a plain numpy minibatch loop of the paper's algorithm
(full ranking by argsort, a dense learning-activation matrix), each round
just before a localearn epoch so both see the same machine load. Samples per
second of both, and the ratio, go in extra_info; the authors' own numpy loop
does about 3,800 samples/s on a 2-core machine.

Run: pytest tests/benchmarks -m benchmark --benchmark-enable
"""

import statistics
import time

import numpy as np
import pytest
import torch

from localearn.data import load_dataset
from localearn.network import Network
from localearn.schedulers import SchedulerConfig, Trainer

pytestmark = pytest.mark.benchmark

UNITS, P, K, DELTA, LR, BATCH = 2000, 3.0, 7, 0.4, 0.04, 100
NET = {
    "layers": [
        {"type": "linear", "out": UNITS, "bias": False},
        {"type": "relu"},
        {"type": "power", "n": 4.5},
    ],
    "rule": {"name": "krotov", "p": P, "k": K, "delta": DELTA},
    "optimizer": {"name": "sgd", "lr": LR},
}


def numpy_epoch(w: np.ndarray, x: np.ndarray) -> None:
    """The paper's minibatch algorithm in numpy, updating ``w`` in place."""
    for start in range(0, len(x), BATCH):
        v = x[start : start + BATCH].T
        currents = (np.sign(w) * np.abs(w) ** (P - 1)) @ v
        order = np.argsort(currents, axis=0)
        g = np.zeros_like(currents)
        cols = np.arange(v.shape[1])
        g[order[-1], cols] = 1.0
        g[order[-K], cols] = -DELTA
        change = g @ v.T - (g * currents).sum(1)[:, None] * w
        w += LR * change / max(np.abs(change).max(), 1e-30)


@pytest.fixture(scope="module")
def mnist():
    data = load_dataset("mnist_subset")
    return data.x_train, data.y_train


def test_krotov_epoch_samples_per_second(benchmark, mnist):
    x, y = mnist
    torch.manual_seed(0)
    net = Network.from_config(NET, tuple(x.shape[1:]), 10)
    trainer = Trainer(
        net, SchedulerConfig(epochs=1, batch_size=BATCH, audit_steps=0), x, y
    )
    flat = x.flatten(1).numpy().astype(np.float64)
    w = np.random.default_rng(0).normal(size=(UNITS, flat.shape[1]))
    numpy_seconds = []

    def setup():
        start = time.perf_counter()
        numpy_epoch(w, flat)
        numpy_seconds.append(time.perf_counter() - start)

    trainer.run()  # warm-up
    benchmark.pedantic(trainer.run, setup=setup, rounds=3, iterations=1)
    ours = len(x) / benchmark.stats.stats.median
    theirs = len(x) / statistics.median(numpy_seconds)
    benchmark.extra_info.update(
        {
            "samples_per_s": round(ours),
            "numpy_loop_samples_per_s": round(theirs),
            "speedup_over_numpy_loop": round(ours / theirs, 2),
            "threads": torch.get_num_threads(),
        }
    )
    assert np.isfinite(w).all()
    assert all(torch.isfinite(p).all() for p in net.parameters())
