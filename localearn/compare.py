"""Comparisons: several rules or settings, across seeds, on equal terms.

A comparison is an experiment config with a ``compare`` section::

    compare:
      seeds: [0, 1, 2, 3, 4]
      variants:                      # name -> overrides of the base config
        greedy: {}
        end_to_end: {scheduler.mode: reference}
      baseline: end_to_end           # variant every other is tested against

Every variant runs with every seed, so all see the same data split, the same
initialisation (for the same network) and the same probe subsets. Each run
has its own directory under the comparison's directory; a finished run is
reused when the comparison is restarted, an unfinished one is resumed, and a
failed one is reported without losing the others.

The summary gives, per variant, block, label budget and model, the mean, the
standard deviation and a 95% confidence interval (Student's t) over seeds,
and a paired t-test of each variant against the baseline on the same seeds
(the seeds fix the data and the probe subsets, so the runs pair up). It also
gives each variant's cost (seconds per epoch, training and whole-run time)
and, when the runs trained a reference, the CKA matrices against it averaged
over seeds; ``compare.memory: true`` adds the memory of every schedule on the
base network (:func:`localearn.costs.schedule_memory`).
"""

from __future__ import annotations

import hashlib
import importlib
import json
import logging
import math
import multiprocessing as mp
import traceback
from collections import defaultdict
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf
from scipy import stats

from localearn.config import DEFAULTS, _check_keys, to_plain
from localearn.errors import ConfigError, LocalearnError
from localearn.experiment import Experiment, atomic_write_text

log = logging.getLogger(__name__)
SUMMARY_SCHEMA = "localearn.comparison/1"
# claim and check describe a claim (localearn.claims); compare ignores them
COMPARE_KEYS = ("seeds", "variants", "baseline", "memory", "claim", "check")


def split_compare(cfg: DictConfig) -> tuple[DictConfig, dict[str, Any]]:
    """Separate the ``compare`` section from the base experiment config."""
    if "compare" not in cfg:
        raise ConfigError(
            "the config has no 'compare' section; add compare.seeds and "
            "compare.variants (see experiments/compare_mnist.yaml)"
        )
    spec = to_plain(cfg.compare)
    base = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "compare"])
    unknown = set(spec) - set(COMPARE_KEYS)
    if unknown:
        raise ConfigError(
            f"unknown key(s) compare.{', compare.'.join(sorted(unknown))}; valid "
            f"keys: {', '.join(COMPARE_KEYS)}"
        )
    if not isinstance(spec.setdefault("memory", False), bool | dict):
        raise ConfigError(
            "compare.memory must be true, false or a mapping of overrides for the "
            f"measurement (e.g. {{scheduler.batch_size: 256}}), got {spec['memory']!r}"
        )
    spec.setdefault("seeds", [0, 1, 2, 3, 4])
    spec.setdefault("variants", {"default": {}})
    if not spec["variants"]:
        raise ConfigError("compare.variants is empty; give at least one variant")
    baseline = spec.get("baseline")
    if baseline is not None and baseline not in spec["variants"]:
        raise ConfigError(
            f"compare.baseline '{baseline}' is not a variant; variants: "
            f"{', '.join(spec['variants'])}"
        )
    return base, spec


def variant_config(base: DictConfig, overrides: dict, seed: int) -> DictConfig:
    """The base config with a variant's overrides and a seed applied.

    A dotted key with a plain value changes that one value
    (``scheduler.mode: sequential``); a mapping replaces the whole section it
    names, so ``network.rule: {name: softhebb}`` swaps the rule without
    keeping the old rule's settings.
    """
    cfg = OmegaConf.create(OmegaConf.to_container(base))
    for key, value in (overrides or {}).items():
        patch = OmegaConf.from_dotlist([f"{key}={json.dumps(value)}"])
        _check_keys(patch, DEFAULTS, "")
        if isinstance(value, dict):
            OmegaConf.update(cfg, key, value, merge=False)
        else:
            cfg = OmegaConf.merge(cfg, patch)
    cfg = OmegaConf.merge(OmegaConf.create(DEFAULTS), cfg)
    cfg.seed = seed
    return cfg


def run_key(cfg: DictConfig) -> str:
    """A short hash of everything in a run's config that shapes its results.

    Two comparisons that ask for the same run (same config and seed) share it
    through a run pool; the name and output settings do not count.
    """
    plain = to_plain(cfg)
    for key in ("name", "output", "compare"):
        plain.pop(key, None)
    text = json.dumps(plain, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def plan_runs(
    cfg: DictConfig, out: Path, pool: Path | None = None
) -> list[tuple[str, int, DictConfig, Path]]:
    """Every (variant, seed) of a comparison with its config and run directory.

    Without a pool, runs live in ``out/<variant>/seed<N>``; with one, in
    ``pool/<run_key>`` so that comparisons asking for the same run share it.
    Every config is checked before any run starts.
    """
    base, spec = split_compare(cfg)
    jobs = []
    for name, overrides in spec["variants"].items():
        for seed in spec["seeds"]:
            try:
                run_cfg = variant_config(base, overrides, int(seed))
            except ConfigError as err:
                raise ConfigError(f"compare variant '{name}': {err}") from None
            where = (
                Path(pool) / run_key(run_cfg)
                if pool is not None
                else Path(out) / name / f"seed{seed}"
            )
            jobs.append((name, int(seed), run_cfg, where))
    return jobs


def run_jobs(
    jobs: list[tuple[DictConfig, Path]], workers: int = 1, progress: bool = False
) -> dict[Path, dict | dict[str, str]]:
    """Run (or reuse, or resume) each distinct run directory once.

    Args:
        jobs: (config, run directory) pairs; repeated directories run once.
        workers: runs at the same time, each in its own process (1 runs them
            here, one after another). Give each run ``threads`` so that the
            workers do not oversubscribe the cores.
        progress: show progress bars (only with one worker).

    Returns:
        Per run directory, its results, or ``{"error": ..., "traceback": ...}``.
    """
    unique: dict[Path, DictConfig] = {}
    for run_cfg, where in jobs:
        unique.setdefault(Path(where), run_cfg)
    done: dict[Path, dict] = {}
    if workers <= 1:
        for where, run_cfg in unique.items():
            done[where] = _guarded_run(
                OmegaConf.to_yaml(run_cfg, resolve=True), str(where), progress
            )
        return done
    from localearn.rule import rule_modules

    # spawn, not fork: a forked OpenMP thread pool can deadlock the child
    ctx = mp.get_context("spawn")
    with ProcessPoolExecutor(
        max_workers=workers,
        mp_context=ctx,
        initializer=_import_all,
        initargs=(rule_modules(),),
    ) as ex:
        futures = {
            ex.submit(
                _guarded_run, OmegaConf.to_yaml(c, resolve=True), str(w), False
            ): w
            for w, c in unique.items()
        }
        for fut in as_completed(futures):
            where = futures[fut]
            try:
                done[where] = fut.result()
            except Exception as err:  # a worker that died: report, keep the rest
                done[where] = {
                    "error": f"{type(err).__name__}: {err}",
                    "traceback": traceback.format_exc(limit=3),
                }
    return done


def _import_all(modules: list[str]) -> None:
    """Worker start-up: import the modules that register rules in the parent."""
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError as err:
            log.warning("worker could not import rule module %s: %s", name, err)


def _guarded_run(cfg_yaml: str, where: str, progress: bool) -> dict:
    """One run in a (possibly separate) process; errors come back as data."""
    run_dir = Path(where)
    try:
        return _one_run(OmegaConf.create(cfg_yaml), run_dir, progress)
    except Exception as err:  # one failed run must not lose the others
        log.error("run %s failed: %s", run_dir, err)
        return {
            "error": f"{type(err).__name__}: {err}",
            "traceback": traceback.format_exc(limit=3),
        }


def run_comparison(
    cfg: DictConfig,
    out: Path,
    progress: bool = False,
    workers: int = 1,
    pool: Path | None = None,
    finished: dict[Path, dict] | None = None,
) -> dict[str, Any]:
    """Run (or finish) every variant with every seed, then summarise.

    Args:
        cfg: experiment config with a ``compare`` section.
        out: the comparison's directory.
        progress: show progress bars.
        workers: runs at the same time, each in its own process.
        pool: folder of runs shared between comparisons (see :func:`plan_runs`);
            None keeps every run under ``out``.
        finished: outcomes of :func:`run_jobs` already at hand, by run
            directory (a failed run is then reported, not retried).

    Returns:
        The summary also written to ``out/summary.json``.
    """
    base, spec = split_compare(cfg)
    out = Path(out)
    jobs = plan_runs(cfg, out, pool)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(OmegaConf.to_yaml(cfg, resolve=True), out / "comparison.yaml")
    known = dict(finished or {})
    todo = [(c, w) for _, _, c, w in jobs if Path(w) not in known]
    known.update(run_jobs(todo, workers, progress))
    finished = known
    results: dict[str, dict[int, dict]] = defaultdict(dict)
    failures = []
    runs = []
    for name, seed, _, where in jobs:
        res = finished[where]
        runs.append({"variant": name, "seed": seed, "dir": str(where)})
        if "error" in res:
            failures.append({"variant": name, "seed": seed, **res})
        else:
            results[name][seed] = res
    atomic_write_text(json.dumps(runs, indent=2), out / "runs.json")
    summary = summarize(results, spec.get("baseline"))
    summary["failures"] = failures
    summary["seeds"] = list(spec["seeds"])
    if spec["memory"]:
        try:
            summary["memory"] = _comparison_memory(
                base, spec["seeds"][0], out, spec["memory"]
            )
        except (LocalearnError, NotImplementedError, RuntimeError) as err:
            log.error("memory per schedule failed: %s", err)
            failures.append(
                {
                    "variant": "(memory per schedule)",
                    "seed": spec["seeds"][0],
                    "error": f"{type(err).__name__}: {err}",
                    "traceback": traceback.format_exc(limit=3),
                }
            )
    atomic_write_text(json.dumps(summary, indent=2), out / "summary.json")
    from localearn.report import write_comparison_report

    write_comparison_report(out, summary, results)
    return summary


def _one_run(cfg: DictConfig, run_dir: Path, progress: bool) -> dict:
    done = run_dir / "results.json"
    saved = run_dir / "config.yaml"
    if saved.exists() and run_key(OmegaConf.load(saved)) != run_key(cfg):
        raise ConfigError(
            f"run directory '{run_dir}' holds a run of a different config (the "
            "comparison's settings changed since it ran); delete that directory "
            "to run it again, or give the comparison another --out"
        )
    if done.exists():
        log.info("reusing finished run %s", run_dir)
        return json.loads(done.read_text())
    if (run_dir / "config.yaml").exists():
        log.info("resuming %s", run_dir)
        return Experiment.resume(run_dir, progress).run()
    return Experiment.create(cfg, run_dir, progress).run()


def _comparison_memory(
    base: DictConfig, seed: int, out: Path, spec: bool | dict
) -> dict[str, Any]:
    """Memory per schedule of the base config, measured once, reused on restart.

    ``spec`` is True, or a mapping of overrides applied for the measurement
    only (a larger batch makes activations, not code, dominate the peak).
    """
    from localearn.costs import schedule_memory

    path = out / "memory.json"
    if path.exists():
        log.info("reusing %s", path)
        return json.loads(path.read_text())
    cfg = variant_config(base, spec if isinstance(spec, dict) else {}, seed)
    result = schedule_memory(cfg)
    atomic_write_text(json.dumps(result, indent=2), path)
    return result


def mean_ci(values: list[float], level: float = 0.95) -> dict[str, float]:
    """Mean, sample standard deviation and a Student-t confidence interval.

    Example:
        >>> out = mean_ci([1.0, 2.0, 3.0])
        >>> round(out["mean"], 3), round(out["std"], 3), round(out["ci_low"], 3)
        (2.0, 1.0, -0.484)
    """
    arr = np.asarray(values, dtype=float)
    n = len(arr)
    mean = float(arr.mean())
    std = float(arr.std(ddof=1)) if n > 1 else 0.0
    half = (
        float(stats.t.ppf(0.5 + level / 2, n - 1) * std / math.sqrt(n))
        if n > 1
        else 0.0
    )
    return {
        "mean": mean,
        "std": std,
        "ci_low": mean - half,
        "ci_high": mean + half,
        "n": n,
    }


def summarize(
    results: dict[str, dict[int, dict]], baseline: str | None
) -> dict[str, Any]:
    """Statistics per variant, block, budget and model; tests against baseline."""
    table: dict[tuple, dict[int, float]] = defaultdict(dict)
    for variant, by_seed in results.items():
        for seed, res in by_seed.items():
            for row in res["probe"]:
                key = (variant, row["block"], row["budget"], row["model"])
                table[key][seed] = row["accuracy"]
            for model, acc in res.get("readout", {}).items():
                table[(variant, "readout", "all", model)][seed] = acc
    rows = []
    for (variant, block, budget, model), by_seed in table.items():
        row = {
            "variant": variant,
            "block": block,
            "budget": budget,
            "model": model,
            **mean_ci(list(by_seed.values())),
        }
        base = table.get((baseline, block, budget, "trained")) if baseline else None
        if base and variant != baseline and model == "trained":
            row["baseline"] = baseline
            row["diff_mean"], row["p_value"] = paired_test(by_seed, base)
        # the same variant's end-to-end reference, trained in the same runs
        ref = table.get((variant, block, budget, "reference"))
        if ref and model == "trained":
            row["reference_diff_mean"], row["reference_p_value"] = paired_test(
                by_seed, ref
            )
        rows.append(row)
    timing = {
        v: mean_ci([r["timing"]["train_s"] for r in by_seed.values()])["mean"]
        for v, by_seed in results.items()
        if by_seed
    }
    return {
        "schema": SUMMARY_SCHEMA,
        "baseline": baseline,
        "rows": rows,
        "train_seconds": timing,
        "cost": summarize_cost(results),
        "cka": summarize_cka(results),
    }


def paired_test(a: dict[int, float], b: dict[int, float]) -> tuple[float, float | None]:
    """Mean of ``a - b`` over shared seeds and the paired t-test's p-value.

    The p-value is None with fewer than two shared seeds or no variance.
    """
    seeds = sorted(set(a) & set(b))
    diff = float(np.mean([a[s] - b[s] for s in seeds])) if seeds else float("nan")
    if len(seeds) < 2:
        return diff, None
    test = stats.ttest_rel([a[s] for s in seeds], [b[s] for s in seeds])
    return diff, None if math.isnan(test.pvalue) else float(test.pvalue)


def summarize_cost(results: dict[str, dict[int, dict]]) -> dict[str, Any]:
    """Wall time per variant: seconds per epoch, training and whole run.

    Per variant, each a :func:`mean_ci` over seeds: ``epoch_s`` (training
    seconds over passes through the training set, every stage of a
    sequential or cached schedule counted), ``reference_epoch_s`` when the
    runs trained a reference, ``train_s`` and ``total_s``. Runs that do not
    record their epochs are left out of the per-epoch figures.
    """
    out: dict[str, Any] = {}
    for variant, by_seed in results.items():
        runs = list(by_seed.values())
        if not runs:
            continue
        series: dict[str, list[float]] = defaultdict(list)
        for res in runs:
            timing, epochs = res.get("timing", {}), res.get("epochs", {})
            for key in ("train_s", "total_s"):
                if key in timing:
                    series[key].append(timing[key])
            if epochs.get("trained") and "train_s" in timing:
                series["epoch_s"].append(timing["train_s"] / epochs["trained"])
            if epochs.get("reference") and "reference_s" in timing:
                series["reference_epoch_s"].append(
                    timing["reference_s"] / epochs["reference"]
                )
        out[variant] = {k: mean_ci(v) for k, v in series.items() if v}
    return out


def summarize_cka(results: dict[str, dict[int, dict]]) -> dict[str, Any]:
    """Element-wise mean and standard deviation of CKA matrices over seeds.

    Per variant and pair (``trained_vs_reference``, ``random_vs_reference``):
    ``rows``, ``cols``, ``mean``, ``std`` (sample, 0 for one seed) and ``n``.
    Runs without CKA are skipped; runs whose block names differ from the
    first run's are refused.
    """
    out: dict[str, Any] = {}
    for variant, by_seed in results.items():
        stacks: dict[str, list] = defaultdict(list)
        names: dict[str, tuple] = {}
        for seed, res in sorted(by_seed.items()):
            for pair, table in (res.get("cka") or {}).items():
                key = (table["rows"], table["cols"])
                if names.setdefault(pair, key) != key:
                    raise ConfigError(
                        f"variant '{variant}' seed {seed}: CKA {pair} has blocks "
                        f"{key}, but an earlier seed has {names[pair]}; the seeds "
                        "of one variant must share the network"
                    )
                stacks[pair].append(np.asarray(table["values"], dtype=float))
        if stacks:
            out[variant] = {
                pair: {
                    "rows": names[pair][0],
                    "cols": names[pair][1],
                    "mean": np.mean(mats, axis=0).tolist(),
                    "std": (
                        np.std(mats, axis=0, ddof=1)
                        if len(mats) > 1
                        else np.zeros_like(mats[0])
                    ).tolist(),
                    "n": len(mats),
                }
                for pair, mats in stacks.items()
            }
    return out
