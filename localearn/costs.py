"""What each training schedule costs: peak memory and time per step.

:func:`schedule_memory` takes the network of an experiment config and, on the
config's data, batch size and device, measures a few training steps under
every schedule, each on a fresh copy of the same initialisation:

* ``simultaneous``: one step trains every block (``block`` is ``all``);
* ``sequential``: one figure per block ``k``, training block ``k`` alone
  while the blocks below it run frozen under ``torch.no_grad``;
* ``cached``: one figure per block ``k``, training block ``k`` from the stored
  outputs of the frozen blocks below it;
* ``reference``: end-to-end backprop through the whole network.

What counts. The network's parameters and the data exist before the
measurement starts, so ``delta_mb`` is the memory a training step adds on top
of them: activations kept for the backward pass, gradients, optimizer state
and temporaries. ``peak_mb`` is the whole process (CPU) or the whole
allocator (CUDA) at its peak. For ``cached``, the cache is built before the
measurement starts, exactly as the cached scheduler builds it once before its
epochs, so ``delta_mb`` covers the training steps only; the cache itself is a
separate, one-off cost that can live on disk (``scheduler.cache: disk``) and
is reported on its own as ``cache_mb``. This is the fair comparison with
``sequential``, whose steps instead pay for recomputing the frozen blocks.

On the CPU each measurement runs single-threaded in a forked child
(:func:`localearn.memory.measure_peak`), so its peak is a resident-set size
and includes the library code the step touches for the first time; compare
schedules measured in the same call rather than absolute figures across
machines.

Example:
    >>> from localearn.config import load_config
    >>> cfg = load_config(None, [
    ...     "data.name=digits",
    ...     "network.layers=[{type: linear, out: 16}, {type: linear, out: 10}]",
    ...     "network.split=layer",
    ...     "network.rule.name=greedy_supervised",
    ...     "scheduler.batch_size=32",
    ... ])
    >>> out = schedule_memory(cfg, steps=1)
    >>> [(r["schedule"], r["block"]) for r in out["rows"]][:2]
    [('simultaneous', 'all'), ('sequential', 'block1')]
"""

from __future__ import annotations

import gc
import logging
from typing import Any

import torch
from omegaconf import DictConfig

from localearn.config import to_plain
from localearn.data import Dataset, load_dataset
from localearn.errors import ConfigError
from localearn.experiment import build_network, resolve_device, scheduler_config
from localearn.memory import measure_peak
from localearn.network import Network
from localearn.schedulers import Position, Trainer, check_network_schedule

log = logging.getLogger(__name__)

MEMORY_SCHEMA = "localearn.memory/1"
SCHEDULES = ("simultaneous", "sequential", "cached", "reference")


def schedule_memory(cfg: DictConfig, steps: int = 2) -> dict[str, Any]:
    """Peak training memory and time per step of every schedule.

    Args:
        cfg: an experiment config; its network, data, batch size, seed and
            device are used (``scheduler.mode`` and ``epochs`` are not).
        steps: training steps measured per schedule and block.

    Returns:
        ``{"schema", "name", "device", "batch_size", "steps", "rows",
        "parameters", "notes"}``. Each row has ``schedule``, ``block`` (a
        block name, or ``all``), ``peak_mb``, ``delta_mb``,
        ``seconds_per_step``, ``cache_mb`` (cached rows; else 0) and
        ``peak_ratio`` and ``delta_ratio`` to the reference row (None when
        the reference cannot run). ``parameters`` has, per block, the
        parameter count, ``param_mb`` and ``optimizer_mb`` (optimizer state
        after one step).

    Raises:
        ConfigError: ``steps`` below 1, or a bad config.
    """
    if steps < 1:
        raise ConfigError(f"steps must be >= 1 (training steps measured), got {steps}")
    if int(cfg.threads) > 0:
        torch.set_num_threads(int(cfg.threads))
    device = resolve_device(str(cfg.device))
    data = load_dataset(
        cfg.data.name,
        root=cfg.data.root,
        seed=int(cfg.seed),
        **to_plain(cfg.data.options),
    ).to(device)
    batches = _batches(len(data.y_train), int(cfg.scheduler.batch_size), steps, cfg)
    net = build_network(cfg, data)
    order = net.order
    plan = [("simultaneous", list(order))]
    plan += [("sequential", [name]) for name in order]
    plan += [("cached", [name]) for name in order]
    plan += [("reference", list(order))]

    rows, notes = [], []
    refused = {}
    for mode in SCHEDULES:
        try:
            check_network_schedule(net, mode)
        except (NotImplementedError, ConfigError) as err:
            refused[mode] = str(err)
            notes.append(f"{mode}: not measured ({err})")
            log.warning("%s: not measured: %s", mode, err)
    for mode, train in plan:
        if mode in refused:
            continue
        try:
            row = _measure(cfg, data, device, mode, train, batches)
        except NotImplementedError as err:
            notes.append(f"{mode}: not measured ({err})")
            log.warning("%s: not measured: %s", mode, err)
            continue
        rows.append(row)
        log.info(
            "%s %s: peak %.1f MiB, delta %.1f MiB",
            mode,
            row["block"],
            row["peak_mb"],
            row["delta_mb"],
        )
    _add_ratios(rows)
    return {
        "schema": MEMORY_SCHEMA,
        "name": str(cfg.name),
        "device": str(device),
        "batch_size": int(cfg.scheduler.batch_size),
        "steps": steps,
        "rows": rows,
        "parameters": _parameter_memory(cfg, data, device, batches[0]),
        "notes": notes,
    }


def _batches(n: int, batch_size: int, steps: int, cfg: DictConfig) -> list:
    """The same ``steps`` minibatches for every schedule (wrapping if needed)."""
    gen = torch.Generator().manual_seed(int(cfg.seed))
    perm = torch.randperm(n, generator=gen)
    need = steps * batch_size
    perm = perm.repeat(-(-need // n))[:need]
    return list(perm.split(batch_size))


def _trainer(
    cfg: DictConfig, data: Dataset, device: torch.device, mode: str
) -> Trainer:
    """A fresh network at the config's initialisation, in a trainer of ``mode``."""
    net = build_network(cfg, data).to(device)
    sched = scheduler_config(cfg, mode)
    if mode == "cached":
        sched.cache = "memory"
    return Trainer(net, sched, data.x_train, data.y_train, seed=int(cfg.seed))


def _measure(
    cfg: DictConfig,
    data: Dataset,
    device: torch.device,
    mode: str,
    train: list[str],
    batches: list,
) -> dict[str, Any]:
    """One schedule (and block): build, cache if cached, then measure the steps."""
    trainer = _trainer(cfg, data, device, mode)
    # train/eval modes of the stage, and the cache of the frozen blocks' output,
    # set up before the measurement as the scheduler does before its epochs
    inputs = trainer._stage_inputs(train)
    cache_mb = inputs.store.nbytes / 2**20 if inputs is not None else 0.0
    pos = Position()

    def work() -> None:
        for idx in batches:
            trainer.step(idx, train, inputs, False, pos)

    if device.type == "cuda":
        # the previous schedule's network must not count in this one's peak
        gc.collect()
        torch.cuda.empty_cache()
    out = measure_peak(work, device=str(device))
    return {
        "schedule": mode,
        "block": train[0] if mode in ("sequential", "cached") else "all",
        "peak_mb": out["peak_mb"],
        "delta_mb": out["delta_mb"],
        "seconds_per_step": out["seconds"] / len(batches),
        "cache_mb": cache_mb,
    }


def _add_ratios(rows: list[dict[str, Any]]) -> None:
    ref = next((r for r in rows if r["schedule"] == "reference"), None)
    for row in rows:
        for key in ("peak", "delta"):
            base = ref[f"{key}_mb"] if ref else 0.0
            row[f"{key}_ratio"] = row[f"{key}_mb"] / base if base > 0 else None


def _parameter_memory(
    cfg: DictConfig, data: Dataset, device: torch.device, idx: torch.Tensor
) -> list[dict[str, Any]]:
    """Parameters and optimizer state per block, after one simultaneous step."""
    trainer = _trainer(cfg, data, device, "simultaneous")
    net: Network = trainer.net
    trainer._stage_inputs(list(net.order))
    trainer.step(idx, list(net.order), None, False, Position())
    out = []
    for name, block in net.blocks.items():
        params = list(block.parameters())
        state = block.optimizer.state.values() if block.optimizer is not None else []
        opt_bytes = sum(
            t.numel() * t.element_size()
            for s in state
            for t in s.values()
            if isinstance(t, torch.Tensor)
        )
        out.append(
            {
                "block": name,
                "parameters": sum(p.numel() for p in params),
                "param_mb": sum(p.numel() * p.element_size() for p in params) / 2**20,
                "optimizer_mb": opt_bytes / 2**20,
            }
        )
    return out


def _ratio(value: float | None) -> str:
    return "" if value is None else f"{value:.2f}"


def memory_markdown(result: dict[str, Any]) -> str:
    """The result of :func:`schedule_memory` as Markdown tables.

    Args:
        result: what :func:`schedule_memory` returned (or its JSON).

    Returns:
        A table of schedules, a table of parameter memory per block, and notes.
    """
    lines = [
        f"Peak training memory of {result['steps']} step(s) at batch size "
        f"{result['batch_size']} on {result['device']}, each schedule from the "
        "same initialisation. 'delta' is the memory a step adds above the "
        "parameters and data (activations, gradients, optimizer state); the "
        "cached schedule's cache is built beforehand and listed on its own.",
        "",
        "| schedule | block | peak MiB | delta MiB | peak / reference "
        "| delta / reference | s / step | cache MiB |",
        "|" + " --- |" * 8,
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['schedule']} | {r['block']} | {r['peak_mb']:.1f} | "
            f"{r['delta_mb']:.1f} | {_ratio(r['peak_ratio'])} | "
            f"{_ratio(r['delta_ratio'])} | {r['seconds_per_step']:.4f} | "
            f"{r['cache_mb']:.1f} |"
        )
    if result.get("parameters"):
        lines += [
            "",
            "| block | parameters | parameter MiB | optimizer state MiB |",
            "| --- | --- | --- | --- |",
        ]
        for p in result["parameters"]:
            lines.append(
                f"| {p['block']} | {p['parameters']:,} | {p['param_mb']:.2f} | "
                f"{p['optimizer_mb']:.2f} |"
            )
    for note in result.get("notes", []):
        lines += ["", f"- {note}"]
    return "\n".join(lines)
