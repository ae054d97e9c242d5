"""Bugs the rest of the suite misses (each test fails until its bug is fixed).

Small and fast: tiny networks on ``digits`` or synthetic numbers.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from omegaconf import OmegaConf
from plugins import tiny_mlp

from localearn import rule as rule_module
from localearn.analysis import linear_cka
from localearn.claims import Evidence, judge, run_claims
from localearn.compare import plan_runs, run_jobs
from localearn.config import load_config
from localearn.costs import schedule_memory
from localearn.data import load_dataset
from localearn.errors import ConfigError
from localearn.experiment import Experiment, build_network, scheduler_config
from localearn.rule import ObjectiveRule
from localearn.schedulers import Trainer

TINY = [*tiny_mlp("tiny_blindspot")]

FF_NET = [
    "data.name=digits",
    "threads=1",
    "network.layers=[{type: flatten}, {type: linear, out: 16}, {type: relu}, "
    "{type: l2norm}, {type: linear, out: 16}, {type: relu}]",
    "network.split=[3]",
    "network.rule.name=ff",
]


def _result(acc, blocks=("b1", "b2")):
    return {
        "blocks": [{"name": b, "rule": "infonce"} for b in blocks],
        "probe": [
            {"model": m, "block": b, "budget": g, "accuracy": a}
            for (m, b, g), a in acc.items()
        ],
    }


# -- claims: a verdict must not "hold" on evidence that is missing ----------------


def test_split_and_gain_source_do_not_hold_when_a_variant_never_ran(tmp_path):
    """claims.check_split / check_gain_source iterate only over the variants that
    finished; a variant whose every run failed silently drops out and the claim
    is reported as held (check_rules, by contrast, answers None)."""
    folder = tmp_path / "claims"
    folder.mkdir()
    (folder / "base_digits.yaml").write_text(OmegaConf.to_yaml(load_config(None, TINY)))
    (folder / "c7_split.yaml").write_text(
        "extends: base_digits.yaml\n"
        "compare:\n"
        "  claim: The split does not matter.\n"
        "  check: {name: split, baseline: base, tolerance: 2.0}\n"
        "  seeds: [0]\n"
        "  variants:\n"
        "    base: {}\n"
        "    broken: {network.rule.name: no_such_rule}\n"
    )
    (folder / "c9_gain.yaml").write_text(
        "extends: base_digits.yaml\n"
        "evaluate: {reference: true}\n"
        "compare:\n"
        "  claim: Locality changes little.\n"
        "  check: {name: gain_source, tolerance: 100.0}\n"
        "  seeds: [0]\n"
        "  variants:\n"
        "    gim: {}\n"
        "    broken: {network.rule.name: no_such_rule}\n"
    )
    record = run_claims(folder, tmp_path / "out")
    by = {c["claim"]: c for c in record["claims"]}
    # the broken variant failed (and is listed as failed) ...
    assert by["c7_split"]["failures"] and by["c9_gain"]["failures"]
    # ... so the claims cannot have been shown to hold
    assert by["c7_split"]["held"] is not True, by["c7_split"]["reason"]
    assert by["c9_gain"]["held"] is not True, by["c9_gain"]["reason"]


def test_local_vs_global_without_a_reference_is_not_judged():
    """claims.check_local_vs_global: with no end-to-end rows the difference is
    NaN, and the verdict is 'did not hold' with a reason that says the local
    network fell more than the tolerance below an end-to-end network that was
    never trained. check_similarity answers None (not judged) in that case."""
    runs = {
        s: _result({("trained", "b1", "10"): 0.7, ("trained", "b2", "10"): 0.8})
        for s in (0, 1, 2)
    }
    ev = Evidence(summary={}, results={"gim": runs})
    v = judge(ev, {"name": "local_vs_global", "variant": "gim", "tolerance": 2.0})
    assert v.held is None, v.reason


def test_seed_variance_with_one_seed_is_not_judged():
    """claims.check_seed_variance: with one seed both standard deviations are
    set to 0.0, 0 < 0 is False, and the claim is reported as 'did not hold'
    although nothing about variance over seeds was measured."""
    ev = Evidence(
        summary={},
        results={
            "gim": {
                0: _result(
                    {
                        ("trained", "b1", "10"): 0.7,
                        ("trained", "b2", "10"): 0.8,
                        ("reference", "b1", "10"): 0.6,
                        ("reference", "b2", "10"): 0.9,
                    }
                )
            }
        },
    )
    v = judge(ev, {"name": "seed_variance", "variant": "gim"})
    assert v.held is None, v.reason


def test_memory_check_with_a_zero_reference_delta_does_not_crash():
    """claims.check_memory divides by the reference's delta_mb without a guard
    (costs._add_ratios has one); a ZeroDivisionError is not among the errors
    run_claims turns into 'not judged', so it would abort the whole suite."""
    rows = [
        {"schedule": "reference", "block": "all", "delta_mb": 0.0},
        {"schedule": "sequential", "block": "b1", "delta_mb": 0.0},
    ]
    ev = Evidence(summary={"memory": {"rows": rows}})
    try:
        v = judge(ev, {"name": "memory", "ratio": 0.6})
    except (ConfigError, KeyError, ValueError):
        return  # handled by run_claims as "could not be judged"
    assert v.held is not True


# -- compare: a failed run is reported, whatever the exception ---------------------


@dataclass
class _BrokenConfig:
    pass


class _BrokenLoss(ObjectiveRule):
    """A plugin whose loss raises an ordinary Python exception."""

    name = "test_blindspot_broken"
    Config = _BrokenConfig

    def loss(self, x, y, labels=None):
        raise ValueError("plugin bug")


def test_one_worker_reports_a_run_that_raises_valueerror(tmp_path, monkeypatch):
    """compare._guarded_run catches only LocalearnError, NotImplementedError and
    RuntimeError. With workers=2 a ValueError from a run comes back as an error
    row; with workers=1 (the default, and how run_claims re-runs failed runs in
    run_comparison) it escapes and takes every other run down with it."""
    monkeypatch.setitem(rule_module._REGISTRY, _BrokenLoss.name, _BrokenLoss)
    cfg = load_config(
        None,
        [
            *TINY,
            "compare.seeds=[0]",
            "compare.variants={broken: {network.rule.name: test_blindspot_broken}, "
            "ok: {}}",
        ],
    )
    jobs = [(c, w) for _, _, c, w in plan_runs(cfg, tmp_path, tmp_path / "pool")]
    done = run_jobs(jobs, workers=1)
    assert sum("error" in r for r in done.values()) == 1
    assert sum("probe" in r for r in done.values()) == 1


# -- Forward-Forward ----------------------------------------------------------------


def test_ff_trains_when_the_last_minibatch_holds_one_sample():
    """schedulers.Trainer.with_negatives -> negatives.derangement: digits has
    1,437 training images, so batch_size=718 leaves a last minibatch of one
    sample and hybrid negatives raise ShapeError mid-training (after earlier
    epochs' work). Either preflight should refuse the config up front or the
    run should train."""
    cfg = load_config(None, [*FF_NET, "scheduler.batch_size=718", "scheduler.epochs=1"])
    try:
        Experiment.preflight(cfg)
    except ConfigError:
        return  # refused before any work: acceptable
    data = load_dataset("digits", seed=0)
    assert len(data.y_train) % 718 == 1
    net = build_network(cfg, data)
    trainer = Trainer(net, scheduler_config(cfg), data.x_train, data.y_train, seed=0)
    pos = trainer.run()
    assert pos.done


def test_memory_per_schedule_of_a_forward_forward_network():
    """costs.schedule_memory skips a schedule that raises NotImplementedError,
    but the cached schedule refuses rules with fresh negatives with a
    ConfigError, so the memory of an FF network (``localearn memory
    experiments/ff_mnist.yaml``, compare.memory) cannot be measured at all."""
    cfg = load_config(None, [*FF_NET, "scheduler.batch_size=32"])
    out = schedule_memory(cfg, steps=1)
    schedules = {r["schedule"] for r in out["rows"]}
    assert {"simultaneous", "sequential", "reference"} <= schedules


# -- CKA --------------------------------------------------------------------------


def test_linear_cka_is_invariant_to_isotropic_scaling_of_small_features():
    """analysis.linear_cka clamps the product of the two Gram-matrix norms at an
    absolute 1e-30, which scales as the fourth power of the features: the CKA
    of a representation with itself drops from 1 to ~3e-5 at a scale of 1e-10
    (a nearly silent block), although the docstring promises invariance to
    isotropic scaling."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 8, generator=g, dtype=torch.float64)
    assert float(linear_cka(x, x)) == pytest.approx(1.0)
    assert float(linear_cka(1e-10 * x, 1e-10 * x)) == pytest.approx(1.0, abs=1e-6)
