"""One training step of Greedy InfoMax at the paper's vision shapes.

Batch of 32 grayscale 64x64 crops, 16x16 patches with stride 8 (a 7x7 grid),
16 negatives, prediction steps limited by the grid, blocks at ResNet-50 stage
widths (pre-activation bottlenecks of 256, 512 and 1,024 channels, one unit
per stage to fit a CPU). The simultaneous schedule (each block's graph freed
before the next) is measured against the end-to-end reference (CPC: the last
block's InfoNCE differentiated through every block) in the same run; time by
pytest-benchmark, peak memory in a forked child, both in extra_info.

Run: pytest tests/benchmarks -m benchmark --benchmark-enable
"""

import pytest
import torch

from localearn.memory import measure_peak
from localearn.network import Network
from localearn.schedulers import Position, SchedulerConfig, Trainer

pytestmark = pytest.mark.benchmark

NET = {
    "patches": {"size": 16, "stride": 8},
    "layers": [
        {"type": "conv", "out": 64, "kernel": 5, "padding": 2},
        {"type": "residual", "out": 256, "bottleneck": True},
        {"type": "residual", "out": 512, "bottleneck": True, "stride": 2},
        {"type": "residual", "out": 1024, "bottleneck": True, "stride": 2},
    ],
    "split": [2, 3],
    "rule": {"name": "infonce", "steps": 5, "negatives": 16},
    "optimizer": {"name": "adam", "lr": 2e-4},
}


def _setup(mode):
    torch.manual_seed(0)
    net = Network.from_config(NET, (1, 64, 64), 10)
    x = torch.rand(32, 1, 64, 64)
    y = torch.zeros(32, dtype=torch.long)
    trainer = Trainer(
        net, SchedulerConfig(mode=mode, batch_size=32, audit_steps=0), x, y
    )
    idx = torch.arange(32)
    return lambda: trainer.step(idx, net.order, None, False, Position())


@pytest.fixture(scope="module")
def record():
    return {}


@pytest.mark.parametrize("mode", ["simultaneous", "reference"])
def test_infonce_step_time_and_memory(benchmark, mode, record):
    step = _setup(mode)
    step()  # warm-up: kernels chosen, optimizer state allocated
    benchmark.pedantic(step, rounds=3, iterations=1)
    mem = measure_peak(lambda: (step(), step()))
    record[mode] = {"seconds": benchmark.stats.stats.median, **mem}
    benchmark.extra_info.update(
        {"peak_rss_mb": round(mem["peak_mb"]), "step_delta_mb": round(mem["delta_mb"])}
    )
    if len(record) == 2:
        ratio_t = record["simultaneous"]["seconds"] / record["reference"]["seconds"]
        ratio_m = record["simultaneous"]["delta_mb"] / record["reference"]["delta_mb"]
        benchmark.extra_info.update(
            {
                "time_ratio_simultaneous_over_reference": round(ratio_t, 3),
                "memory_ratio_simultaneous_over_reference": round(ratio_m, 3),
            }
        )
