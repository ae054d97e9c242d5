"""The claims made for Greedy InfoMax, as experiments with verdicts.

A claims folder (``experiments/claims``) holds base experiments
(``base_<data>.yaml``: one network, data set and protocol each) and claim
files (``c<N>_<topic>.yaml``). A claim file ``extends`` a base and holds a
``compare`` section whose ``claim`` states the claim and whose ``check``
names the test that decides it (one of :data:`CHECKS`, with its
parameters). :func:`run_claims` runs every claim on every base, sharing runs
that several claims ask for through one run pool, with several worker
processes if asked, then writes a Markdown page of verdicts and tables.

Every verdict comes from a rule stated in advance in the claim file (for
example "within 2 points"), applied to means over seeds; the tables carry
the standard deviations, so a reader can judge the margins.

Example:
    ``localearn claims experiments/claims --workers 2 --write docs/results.md``
"""

from __future__ import annotations

import json
import logging
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from localearn.compare import plan_runs, run_comparison, run_jobs, split_compare
from localearn.config import DEFAULTS, _check_keys, _read_yaml, load_config
from localearn.errors import ConfigError
from localearn.experiment import atomic_write_text

log = logging.getLogger(__name__)


# -- loading -------------------------------------------------------------------


def find_claims(folder: Path) -> tuple[dict[str, Path], list[Path]]:
    """The bases (by data name) and the claim files of a claims folder."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ConfigError(
            f"claims folder '{folder}' not found; the shipped claims are in "
            "experiments/claims"
        )
    bases = {
        p.stem.removeprefix("base_"): p for p in sorted(folder.glob("base_*.yaml"))
    }
    claims = sorted(folder.glob("c[0-9]*_*.yaml"), key=_claim_number)
    if not bases or not claims:
        raise ConfigError(
            f"claims folder '{folder}' needs base_<data>.yaml files and "
            f"c<N>_<topic>.yaml claim files; found {len(bases)} bases and "
            f"{len(claims)} claims"
        )
    return bases, claims


def _claim_number(path: Path) -> int:
    digits = path.stem[1:].split("_", 1)[0]
    return int(digits) if digits.isdigit() else 10**6


def claim_config(claim: Path, base: Path, overrides: list[str] = ()) -> DictConfig:
    """A claim file applied to a base in place of the one it extends."""
    layer = _read_yaml(claim)
    layer.pop("extends", None)
    _check_keys(layer, DEFAULTS, "")
    cfg = OmegaConf.merge(load_config(base), layer)
    if overrides:
        patch = OmegaConf.from_dotlist(list(overrides))
        _check_keys(patch, DEFAULTS, "")
        cfg = OmegaConf.merge(cfg, patch)
    _, spec = split_compare(cfg)
    check = spec.get("check") or {}
    if not spec.get("claim") or check.get("name") not in CHECKS:
        raise ConfigError(
            f"claim file '{claim}' needs compare.claim (the statement) and "
            f"compare.check.name, one of: {', '.join(CHECKS)}"
        )
    return cfg


# -- reading a comparison ------------------------------------------------------


@dataclass
class Evidence:
    """A finished comparison: its summary and every run's results by seed."""

    summary: dict[str, Any]
    results: dict[str, dict[int, dict]] = field(default_factory=dict)
    variants: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.variants:
            self.variants = list(self.results)

    def missing(self) -> list[str]:
        """Variants of the comparison without a single finished run."""
        return [v for v in self.variants if not self.results.get(v)]

    @classmethod
    def load(cls, folder: Path) -> Evidence:
        summary = json.loads((Path(folder) / "summary.json").read_text())
        results: dict[str, dict[int, dict]] = {}
        runs = json.loads((Path(folder) / "runs.json").read_text())
        variants = list(dict.fromkeys(run["variant"] for run in runs))
        for run in runs:
            path = Path(run["dir"]) / "results.json"
            if path.exists():
                results.setdefault(run["variant"], {})[run["seed"]] = json.loads(
                    path.read_text()
                )
        return cls(summary, results, variants)

    def blocks(self, variant: str) -> list[str]:
        """Block names of a variant's network, input side first."""
        runs = self.results.get(variant) or {}
        if not runs:
            raise ConfigError(f"no finished run of variant '{variant}'")
        return [b["name"] for b in next(iter(runs.values()))["blocks"]]

    def budgets(self, variant: str) -> list[str]:
        runs = next(iter(self.results[variant].values()))
        return list(dict.fromkeys(r["budget"] for r in runs["probe"]))

    def per_seed(
        self, variant: str, block: str, budget: str, model: str = "trained"
    ) -> dict[int, float]:
        """Probe accuracy (percent) by seed."""
        out = {}
        for seed, res in (self.results.get(variant) or {}).items():
            for row in res["probe"]:
                if (row["block"], row["budget"], row["model"]) == (
                    block,
                    budget,
                    model,
                ):
                    out[seed] = 100 * row["accuracy"]
        return out

    def stat(
        self, variant: str, block: str, budget: str, model: str = "trained"
    ) -> tuple[float, float]:
        """Mean and sample standard deviation (percent) over seeds."""
        vals = list(self.per_seed(variant, block, budget, model).values())
        if not vals:
            return float("nan"), float("nan")
        arr = np.asarray(vals)
        return float(arr.mean()), float(arr.std(ddof=1)) if len(arr) > 1 else 0.0


def _pm(mean: float, std: float) -> str:
    return "n/a" if np.isnan(mean) else f"{mean:.1f} ± {std:.1f}"


def _table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _paired(a: dict[int, float], b: dict[int, float]) -> tuple[float, float | None]:
    """Mean paired difference a - b and the paired t-test's p-value."""
    from scipy import stats

    seeds = sorted(set(a) & set(b))
    diff = float(np.mean([a[s] - b[s] for s in seeds])) if seeds else float("nan")
    if len(seeds) < 2:
        return diff, None
    p = stats.ttest_rel([a[s] for s in seeds], [b[s] for s in seeds]).pvalue
    return diff, None if np.isnan(p) else float(p)


def _p(p: float | None) -> str:
    return "n/a" if p is None else f"{p:.3f}"


# -- checks --------------------------------------------------------------------


ALPHA = 0.05  # level of the paired t-tests behind directional claims


@dataclass
class Verdict:
    """Whether a claim held, why, and the numbers behind it.

    ``significant`` is set by checks of a direction (one setting better than
    another): True when the paired t-tests over seeds behind it are below
    :data:`ALPHA`. A direction that is right but not significant makes the
    claim ``inconclusive`` rather than ``held``.
    """

    held: bool | None
    reason: str
    table: str
    significant: bool | None = None

    @property
    def status(self) -> str:
        """``held``, ``did not hold``, ``inconclusive`` or ``not judged``."""
        if self.held is None:
            return "not judged"
        if not self.held:
            return "did not hold"
        return "inconclusive" if self.significant is False else "held"


def _significance_note(ps: list[float | None]) -> tuple[bool, str]:
    known = [p for p in ps if p is not None]
    ok = bool(known) and len(known) == len(ps) and all(p < ALPHA for p in known)
    worst = max(known) if known else float("nan")
    note = (
        f"; the paired t-tests behind it are significant (largest p {worst:.3f})"
        if ok
        else f"; not significant at p < {ALPHA:g} (largest p "
        + (f"{worst:.3f})" if known else "n/a: too few seeds)")
    )
    return ok, note


def check_local_vs_global(ev: Evidence, variant: str, tolerance: float) -> Verdict:
    """Local within ``tolerance`` points of (or above) end to end, last block."""
    last = ev.blocks(variant)[-1]
    if not ev.per_seed(variant, last, ev.budgets(variant)[0], "reference"):
        return Verdict(
            None, f"variant '{variant}' has no end-to-end reference to compare with", ""
        )
    rows, ok = [], True
    for budget in ev.budgets(variant):
        local = ev.per_seed(variant, last, budget)
        ref = ev.per_seed(variant, last, budget, "reference")
        diff, p = _paired(local, ref)
        ok &= diff >= -tolerance
        rows.append(
            [
                budget,
                _pm(*ev.stat(variant, last, budget)),
                _pm(*ev.stat(variant, last, budget, "reference")),
                _pm(*ev.stat(variant, last, budget, "random")),
                f"{diff:+.1f}",
                _p(p),
            ]
        )
    head = ["labels/class", "local", "end to end", "random twin", "local - e2e", "p"]
    below = [
        b
        for b in ev.budgets(variant)
        if ev.stat(variant, last, b)[0] < ev.stat(variant, last, b, "random")[0]
    ]
    caveat = (
        f"; but at {', '.join(below)} labels per class the local network is below "
        "its random twin, so this compares networks that learned little"
        if below
        else ""
    )
    reason = (
        f"at the last block ({last}) the local network is "
        f"{'within' if ok else 'more than'} {tolerance:g} points "
        f"{'of or above' if ok else 'below'} the end-to-end one at every budget"
        if ok
        else f"at the last block ({last}) the local network falls more than "
        f"{tolerance:g} points below the end-to-end one at some budget"
    ) + caveat
    return Verdict(ok, reason, _table(head, rows))


def check_seed_variance(ev: Evidence, variant: str) -> Verdict:
    """Local standard deviation over seeds below end to end in most cases."""
    rows, smaller, total = [], 0, 0
    first = ev.blocks(variant)[0], ev.budgets(variant)[0]
    n_local = len(ev.per_seed(variant, *first))
    n_ref = len(ev.per_seed(variant, *first, "reference"))
    if min(n_local, n_ref) < 2:
        return Verdict(
            None,
            f"a spread over seeds needs at least two seeds of both networks; got "
            f"{n_local} local and {n_ref} end-to-end runs",
            "",
        )
    for block in ev.blocks(variant):
        for budget in ev.budgets(variant):
            _, s_local = ev.stat(variant, block, budget)
            _, s_ref = ev.stat(variant, block, budget, "reference")
            smaller += s_local < s_ref
            total += 1
            rows.append([block, budget, f"{s_local:.2f}", f"{s_ref:.2f}"])
    held = smaller > total / 2
    reason = (
        f"the local network's standard deviation over seeds is smaller in "
        f"{smaller} of {total} block/budget cases (the claim needs a majority)"
    )
    head = ["block", "labels/class", "std local (points)", "std end to end (points)"]
    return Verdict(held, reason, _table(head, rows))


def check_depth(ev: Evidence, variant: str) -> Verdict:
    """Mean probe accuracy rises from block to block at every budget."""
    blocks = ev.blocks(variant)
    if len(blocks) < 2:
        return Verdict(None, "the network has a single block", "")
    rows, held, falls, ps = [], True, [], []
    for budget in ev.budgets(variant):
        means = [ev.stat(variant, b, budget)[0] for b in blocks]
        if budget == ev.budgets(variant)[0]:
            ps += [
                _paired(
                    ev.per_seed(variant, blocks[i], budget),
                    ev.per_seed(variant, blocks[i - 1], budget),
                )[1]
                for i in range(1, len(blocks))
            ]
        for i in range(1, len(blocks)):
            if not means[i] > means[i - 1]:
                held = False
                falls.append(f"{blocks[i]} at {budget}")
        for b in blocks:
            rows.append(
                [
                    b,
                    budget,
                    _pm(*ev.stat(variant, b, budget)),
                    _pm(*ev.stat(variant, b, budget, "random")),
                ]
            )
    reason = (
        "every block's mean accuracy is above the block below it at every budget"
        if held
        else "not every block improves on the one below: " + ", ".join(falls)
    )
    significant, note = _significance_note(ps)
    if held:
        reason += (
            f" (block against block below, at {ev.budgets(variant)[0]}/class{note})"
        )
    head = ["block", "labels/class", "local", "random twin"]
    return Verdict(held, reason, _table(head, rows), significant)


def _cka_mean(ev: Evidence, variant: str, pair: str) -> tuple[list, list, np.ndarray]:
    mats, rows, cols = [], [], []
    for res in (ev.results.get(variant) or {}).values():
        cka = (res.get("cka") or {}).get(pair)
        if cka:
            rows, cols = cka["rows"], cka["cols"]
            mats.append(np.asarray(cka["values"], dtype=float))
    if not mats:
        raise ConfigError(
            f"variant '{variant}' has no CKA '{pair}' in its results; it needs "
            "evaluate.reference: true and evaluate.cka: true"
        )
    return rows, cols, np.mean(mats, axis=0)


def check_similarity(ev: Evidence, variant: str, minimum: float) -> Verdict:
    """Same-block CKA with end to end above the random twin's and ``minimum``."""
    rows_t, cols, trained = _cka_mean(ev, variant, "trained_vs_reference")
    _, _, random = _cka_mean(ev, variant, "random_vs_reference")
    rows, held = [], True
    for i, block in enumerate(rows_t):
        j = cols.index(block) if block in cols else i
        t, r = trained[i, j], random[i, j]
        held &= bool(t > r)
        rows.append([block, f"{t:.3f}", f"{r:.3f}", f"{trained[i].max():.3f}"])
    last = trained[-1, cols.index(rows_t[-1]) if rows_t[-1] in cols else -1]
    held &= bool(last >= minimum)
    reason = (
        f"same-block CKA between local and end-to-end networks is "
        f"{'above' if held else 'not above'} the random twin's at every block "
        f"and {last:.2f} at the last block (the claim needs >= {minimum:g})"
    )
    head = [
        "block",
        "CKA local vs e2e (same block)",
        "CKA random vs e2e",
        "best CKA with any e2e block",
    ]
    return Verdict(held, reason, _table(head, rows))


def check_memory(ev: Evidence, ratio: float) -> Verdict:
    """Largest one-block peak at most ``ratio`` of the end-to-end peak."""
    table = ev.summary.get("memory") or {}
    rows_in = table.get("rows", table if isinstance(table, list) else [])
    if not rows_in:
        raise ConfigError("the comparison has no memory table; set compare.memory")
    ref = [r for r in rows_in if r["schedule"] == "reference"]
    ref_mb = max((r["delta_mb"] for r in ref), default=0.0)
    if ref_mb <= 0:
        return Verdict(None, "no positive end-to-end memory figure to compare", "")
    worst = max(
        (r["delta_mb"] for r in rows_in if r["schedule"] == "sequential"), default=0.0
    )
    held = worst <= ratio * ref_mb
    rows = [
        [
            r["schedule"],
            r["block"],
            f"{r['delta_mb']:.1f}",
            f"{r['delta_mb'] / ref_mb:.2f}",
        ]
        for r in rows_in
    ]
    reason = (
        f"the largest one-block (sequential) peak is {worst:.1f} MiB against "
        f"{ref_mb:.1f} MiB end to end, a ratio of {worst / ref_mb:.2f} (the "
        f"claim needs <= {ratio:g})"
    )
    head = ["schedule", "block", "peak above start (MiB)", "ratio to end to end"]
    return Verdict(held, reason, _table(head, rows))


def check_schedule(ev: Evidence, together: str, one_by_one: str) -> Verdict:
    """One block after another below all together at the last block."""
    if (gap := _not_judged_if_missing(ev)) is not None:
        return gap
    last = ev.blocks(together)[-1]
    rows, held, ps = [], True, []
    for budget in ev.budgets(together):
        a = ev.per_seed(one_by_one, last, budget)
        b = ev.per_seed(together, last, budget)
        diff, p = _paired(a, b)
        held &= diff < 0
        ps.append(p)
        rows.append(
            [
                budget,
                _pm(*ev.stat(together, last, budget)),
                _pm(*ev.stat(one_by_one, last, budget)),
                f"{diff:+.1f}",
                _p(p),
            ]
        )
    reason = (
        f"at the last block ({last}) training blocks one after another is "
        f"{'below' if held else 'not below'} training them together at every "
        "budget"
    )
    significant, note = _significance_note(ps[:1])
    if held:
        reason += f" (at {ev.budgets(together)[0]}/class{note})"
    head = ["labels/class", "together", "one after another", "difference", "p"]
    return Verdict(held, reason, _table(head, rows), significant)


def _not_judged_if_missing(ev: Evidence) -> Verdict | None:
    missing = ev.missing()
    if missing:
        return Verdict(
            None, f"no finished runs for variant(s): {', '.join(missing)}", ""
        )
    return None


def check_split(ev: Evidence, baseline: str, tolerance: float) -> Verdict:
    """Every split's last block within ``tolerance`` points of the baseline's."""
    if (gap := _not_judged_if_missing(ev)) is not None:
        return gap
    rows, held = [], True
    for variant in ev.results:
        last = ev.blocks(variant)[-1]
        for budget in ev.budgets(variant):
            base = ev.per_seed(baseline, ev.blocks(baseline)[-1], budget)
            diff, p = _paired(ev.per_seed(variant, last, budget), base)
            if variant != baseline:
                held &= abs(diff) <= tolerance
            rows.append(
                [
                    variant,
                    len(ev.blocks(variant)),
                    budget,
                    _pm(*ev.stat(variant, last, budget)),
                    "" if variant == baseline else f"{diff:+.1f}",
                    "" if variant == baseline else _p(p),
                ]
            )
    reason = (
        f"every split's last block is within {tolerance:g} points of the "
        f"'{baseline}' split at every budget"
        if held
        else f"some split's last block differs by more than {tolerance:g} points "
        f"from the '{baseline}' split"
    )
    head = ["split", "blocks", "labels/class", "last block", "vs baseline", "p"]
    return Verdict(held, reason, _table(head, rows))


def _best(ev: Evidence, variant: str, budget: str) -> tuple[str, float, float]:
    best = max(ev.blocks(variant), key=lambda b: ev.stat(variant, b, budget)[0])
    return (best, *ev.stat(variant, best, budget))


def check_rules(
    ev: Evidence, objective: str, unsupervised: list[str], supervised: list[str]
) -> Verdict:
    """The objective's best block above every unsupervised rule's best block."""
    budgets = ev.budgets(objective)
    rows, held, missing, ps = [], True, [], []
    for variant in [objective, *unsupervised, *supervised]:
        if variant not in ev.results:
            missing.append(variant)
            continue
        cells = []
        for budget in budgets:
            block, mean, std = _best(ev, variant, budget)
            last = ev.blocks(variant)[-1]
            cells += [
                _pm(mean, std) + f" ({block})",
                _pm(*ev.stat(variant, last, budget)),
            ]
            if variant in unsupervised and budget == budgets[0]:
                top = _best(ev, objective, budget)[0]
                held &= mean < ev.stat(objective, top, budget)[0]
                ps.append(
                    _paired(
                        ev.per_seed(objective, top, budget),
                        ev.per_seed(variant, block, budget),
                    )[1]
                )
        cost = (ev.summary.get("cost") or {}).get(variant, {}).get("epoch_s")
        cells.append(f"{cost['mean']:.1f}" if cost else "n/a")
        rows.append([variant, *cells])
    twin = ["random twin"]
    for budget in budgets:
        block = _best(ev, objective, budget)[0]
        last = ev.blocks(objective)[-1]
        twin += [
            _pm(*ev.stat(objective, block, budget, "random")) + f" ({block})",
            _pm(*ev.stat(objective, last, budget, "random")),
        ]
    rows.append([*twin, ""])
    head = ["rule"]
    for budget in budgets:
        head += [f"best block, {budget}/class", f"last block, {budget}/class"]
    head.append("s per epoch")
    reason = (
        f"at {budgets[0]} labels per class {objective}'s best block is "
        f"{'above' if held else 'not above'} the best block of every "
        f"unsupervised rule that ran"
    )
    significant, note = _significance_note(ps)
    if held:
        reason += f" (paired by seed{note})"
    if missing:
        held = None if held else held
        reason += f"; no finished runs for: {', '.join(missing)}"
    return Verdict(held, reason, _table(head, rows), significant)


def check_gain_source(ev: Evidence, tolerance: float) -> Verdict:
    """Local minus end to end within ``tolerance`` for both objectives."""
    if (gap := _not_judged_if_missing(ev)) is not None:
        return gap
    rows, held = [], True
    for variant in ev.results:
        last = ev.blocks(variant)[-1]
        rule = next(iter(ev.results[variant].values()))["blocks"][-1]["rule"]
        for budget in ev.budgets(variant):
            diff, p = _paired(
                ev.per_seed(variant, last, budget),
                ev.per_seed(variant, last, budget, "reference"),
            )
            held &= abs(diff) <= tolerance
            rows.append(
                [
                    rule,
                    budget,
                    _pm(*ev.stat(variant, last, budget)),
                    _pm(*ev.stat(variant, last, budget, "reference")),
                    f"{diff:+.1f}",
                    _p(p),
                ]
            )
    reason = (
        f"for every objective, local and end-to-end training of the last block "
        f"are {'within' if held else 'not all within'} {tolerance:g} points at "
        "every budget"
    )
    head = ["objective", "labels/class", "local", "end to end", "local - e2e", "p"]
    return Verdict(held, reason, _table(head, rows))


CHECKS: dict[str, Callable[..., Verdict]] = {
    "local_vs_global": check_local_vs_global,
    "seed_variance": check_seed_variance,
    "depth": check_depth,
    "similarity": check_similarity,
    "memory": check_memory,
    "schedule": check_schedule,
    "split": check_split,
    "rules": check_rules,
    "gain_source": check_gain_source,
}


def judge(ev: Evidence, check: dict[str, Any]) -> Verdict:
    """Apply a claim's check to its evidence."""
    params = dict(check)
    fn = CHECKS[params.pop("name")]
    try:
        return fn(ev, **params)
    except TypeError as err:
        raise ConfigError(f"check '{check['name']}': bad parameters ({err})") from None


# -- the suite -----------------------------------------------------------------


def run_claims(
    folder: Path,
    out: Path,
    workers: int = 1,
    only: list[str] | None = None,
    data: list[str] | None = None,
    overrides: list[str] = (),
) -> dict[str, Any]:
    """Run every claim on every base and judge it.

    Args:
        folder: the claims folder.
        out: output folder (``pool/`` of shared runs, one folder per data set
            and claim, ``claims.json``).
        workers: runs at the same time, each in its own process.
        only: claim file stems or prefixes (``c1``) to run; None runs all.
        data: base names (``mnist``, ``mnist1d``) to run; None runs all.
        overrides: ``key=value`` applied to every claim (e.g. seeds, epochs).

    Returns:
        The record also written to ``out/claims.json``.
    """
    start = time.perf_counter()
    bases, claims = find_claims(folder)
    if only:
        claims = [
            c
            for c in claims
            if any(c.stem.split("_")[0] == o or c.stem == o for o in only)
        ]
    if data:
        unknown = set(data) - set(bases)
        if unknown:
            raise ConfigError(
                f"unknown claims data set(s) {sorted(unknown)}; bases: "
                f"{', '.join(bases)}"
            )
        bases = {k: v for k, v in bases.items() if k in data}
    out = Path(out)
    pool = out / "pool"
    plans = []
    for data_name, base in bases.items():
        for claim in claims:
            cfg = claim_config(claim, base, list(overrides))
            where = out / data_name / claim.stem
            plans.append((data_name, claim, cfg, where, plan_runs(cfg, where, pool)))
    jobs = [(c, w) for *_, runs in plans for _, _, c, w in runs]
    log.info(
        "claims: %d claims x %d data sets, %d distinct runs",
        len(claims),
        len(bases),
        len({w for _, w in jobs}),
    )
    distinct = {Path(w) for _, w in jobs}
    to_train = sum(not (w / "results.json").exists() for w in distinct)
    t0 = time.perf_counter()
    finished = run_jobs(jobs, workers)
    runs_s = time.perf_counter() - t0
    record: dict[str, Any] = {"claims": [], "data": list(bases)}
    for data_name, claim, cfg, where, _ in plans:
        summary = run_comparison(cfg, where, pool=pool, finished=finished)
        _, spec = split_compare(cfg)
        ev = Evidence.load(where)
        try:
            verdict = judge(ev, spec["check"])
        except Exception as err:  # a verdict that fails must not stop the suite
            verdict = Verdict(
                None, f"could not be judged: {type(err).__name__}: {err}", ""
            )
        record["claims"].append(
            {
                "claim": claim.stem,
                "data": data_name,
                "statement": " ".join(str(spec["claim"]).split()),
                "held": verdict.held,
                "status": verdict.status,
                "reason": verdict.reason,
                "table": verdict.table,
                "failures": summary.get("failures", []),
                "seeds": list(spec["seeds"]),
                "dir": str(where),
            }
        )
    record["wall_seconds"] = time.perf_counter() - start
    record["runs_seconds"] = runs_s
    record["runs"] = len(distinct)
    record["trained_runs"] = to_train
    record["run_seconds_sum"] = sum(
        json.loads((w / "results.json").read_text())["timing"]["total_s"]
        for w in distinct
        if (w / "results.json").exists()
    )
    # the suite's time: this call's if it trained everything; added to the
    # earlier calls' if it finished a suite they started; theirs if it only
    # re-judged finished runs
    previous = out / "claims.json"
    before = json.loads(previous.read_text()) if previous.exists() else {}
    earlier = before.get("suite_seconds", before.get("wall_seconds"))
    if to_train == len(distinct) or earlier is None:
        record["suite_seconds"] = record["wall_seconds"]
        record["suite_workers"] = workers
    elif to_train:
        record["suite_seconds"] = earlier + record["wall_seconds"]
        record["suite_workers"] = workers
    else:
        record["suite_seconds"] = earlier
        record["suite_workers"] = before.get(
            "suite_workers", before.get("workers", workers)
        )
    record["workers"] = workers
    record["machine"] = _machine()
    atomic_write_text(json.dumps(record, indent=2), out / "claims.json")
    return record


def _machine() -> str:
    import os

    return (
        f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"Python {platform.python_version()}"
    )


DATA_TITLES = {"mnist": "MNIST subset", "mnist1d": "MNIST-1D"}


def _mark(claim: dict[str, Any]) -> str:
    if "status" in claim:
        return claim["status"]
    return {True: "held", False: "did not hold", None: "not judged"}[claim["held"]]


STATUSES = ("held", "did not hold", "inconclusive", "not judged")


def results_page(record: dict[str, Any], command: str) -> str:
    """The Markdown page of claims, verdicts and tables."""
    data = record["data"]
    by = {(c["claim"], c["data"]): c for c in record["claims"]}
    names = list(dict.fromkeys(c["claim"] for c in record["claims"]))
    lines = [
        "# Results: the Greedy InfoMax claims",
        "",
        "Each claim made for Greedy InfoMax (Löwe, O'Connor and Veeling, "
        "NeurIPS 2019) is an experiment in `experiments/claims/`, run on the "
        "embedded MNIST subset and on MNIST-1D at sizes that fit two CPU cores. "
        "A claim holds when the test written in its file (`compare.check`) "
        "passes on the means over seeds. A claim that one setting beats another "
        "(depth, schedule, rules) also needs its paired t-tests over seeds "
        "below p = 0.05; when the direction is right but the tests are not "
        "significant it is *inconclusive*. Claims of equivalence (within a "
        "tolerance) and of smaller spread are judged on the means and "
        "standard deviations alone. Tables give mean ± standard deviation over "
        "seeds (percent test accuracy of a linear probe unless stated) and "
        "paired t-test p-values over the same seeds. These are small networks "
        "trained for a few epochs on small data: a verdict says what happened "
        "at this size, not what the paper found at its own.",
        "",
        "Regenerate this page (every number on it) with:",
        "",
        "```",
        command,
        "```",
        "",
        f"Measured on {record['machine']}: the whole suite ({record['runs']} "
        f"distinct runs, shared between claims) took "
        f"{record.get('suite_seconds', record['wall_seconds']) / 60:.1f} minutes "
        f"of wall time with {record.get('suite_workers', record['workers'])} "
        f"worker process(es), each run single-threaded; the runs themselves "
        f"add up to {record.get('run_seconds_sum', 0) / 60:.1f} minutes.",
        "",
        "## Summary",
        "",
    ]
    head = ["claim", *[DATA_TITLES.get(d, d) for d in data]]
    rows = []
    for name in names:
        first = next(by[(name, d)] for d in data if (name, d) in by)
        rows.append(
            [f"{name.split('_')[0][1:]}. {first['statement']}"]
            + [_mark(by[(name, d)]) if (name, d) in by else "" for d in data]
        )
    lines += [_table(head, rows), ""]
    for name in names:
        first = next(by[(name, d)] for d in data if (name, d) in by)
        lines += [
            f"## {name.split('_')[0][1:]}. {first['statement']}",
            "",
            f"Experiment: `experiments/claims/{name}.yaml`.",
            "",
        ]
        for d in data:
            c = by.get((name, d))
            if c is None:
                continue
            lines += [
                f"**{DATA_TITLES.get(d, d)}: {_mark(c)}**: {c['reason']} "
                f"({len(c['seeds'])} seeds).",
                "",
                c["table"],
                "",
            ]
            for f in c["failures"]:
                lines += [
                    f"- run failed: variant {f['variant']} seed {f['seed']}: "
                    f"{f['error'].splitlines()[0]}",
                ]
            if c["failures"]:
                lines.append("")
    return "\n".join(lines).rstrip() + "\n"
