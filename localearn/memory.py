"""Peak memory of a piece of work, on the CPU or on a CUDA device.

PyTorch's CPU allocator keeps no statistics, so on the CPU the work runs in a
forked child process and the figure is the child's peak resident set size
above what it held when it started. On a CUDA device the allocator's own peak
(``torch.cuda.max_memory_allocated``) is used.

Example:
    >>> import torch
    >>> out = measure_peak(lambda: torch.ones(64, 1024, 1024).sum().item())
    >>> out["delta_mb"] > 200
    True
"""

from __future__ import annotations

import multiprocessing as mp
import resource
import time
from collections.abc import Callable
from typing import Any

import torch


def _rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        pages = int(fh.read().split()[1])
    return pages * resource.getpagesize() / 2**20


def _child(fn: Callable[[], Any], queue: Any) -> None:
    # an OpenMP pool inherited through fork can deadlock: run single-threaded
    torch.set_num_threads(1)
    try:
        start = _rss_mb()
        t0 = time.perf_counter()
        fn()
        seconds = time.perf_counter() - t0
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        queue.put({"peak_mb": peak, "delta_mb": peak - start, "seconds": seconds})
    except BaseException as err:  # report, never hang the parent
        queue.put({"error": f"{type(err).__name__}: {err}"})


def measure_peak(fn: Callable[[], Any], device: str = "cpu") -> dict[str, float]:
    """Run ``fn`` and return its peak memory in MiB and its wall time.

    Args:
        fn: the work; on the CPU it runs in a forked child, single-threaded,
            so its side effects do not reach the caller.
        device: ``cpu`` or a CUDA device string.

    Returns:
        ``peak_mb`` (peak resident or allocated memory), ``delta_mb`` (peak
        above the starting level) and ``seconds``.

    Raises:
        RuntimeError: if the work failed, with the child's error.
    """
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        start = torch.cuda.memory_allocated(device) / 2**20
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device) / 2**20
        return {
            "peak_mb": peak,
            "delta_mb": peak - start,
            "seconds": time.perf_counter() - t0,
        }
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child, args=(fn, queue))
    proc.start()
    result = queue.get()
    proc.join()
    if "error" in result:
        raise RuntimeError(f"memory measurement failed in the child: {result['error']}")
    return result
