"""The claims suite: config inheritance, shared runs, workers and verdicts."""

import json
import math
from pathlib import Path

import pytest
from omegaconf import OmegaConf
from plugins import tiny_mlp

from localearn import claims
from localearn.claims import Evidence, judge, results_page, run_claims
from localearn.compare import plan_runs, run_jobs, run_key, variant_config
from localearn.config import load_config
from localearn.errors import ConfigError

# -- config files that extend a base --------------------------------------------


def test_a_config_file_extends_a_base_relative_to_its_folder(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "base.yaml").write_text(
        "name: base\nnetwork: {layers: [{type: linear, out: 4}], "
        "rule: {name: infonce, steps: 2}}\nscheduler: {epochs: 7}\n"
    )
    (tmp_path / "sub" / "child.yaml").write_text(
        "extends: ../base.yaml\nname: child\nnetwork: {rule: {steps: 3}}\n"
    )
    cfg = load_config(tmp_path / "sub" / "child.yaml", ["seed=4"])
    assert cfg.name == "child"
    assert cfg.scheduler.epochs == 7  # from the base
    assert cfg.network.rule.name == "infonce"  # mappings merge key by key
    assert cfg.network.rule.steps == 3
    assert cfg.seed == 4
    assert "extends" not in cfg


def test_extends_cycles_and_missing_bases_are_named(tmp_path):
    (tmp_path / "a.yaml").write_text("extends: b.yaml\n")
    (tmp_path / "b.yaml").write_text("extends: a.yaml\n")
    with pytest.raises(ConfigError, match="extend each other in a cycle"):
        load_config(tmp_path / "a.yaml")
    (tmp_path / "c.yaml").write_text("extends: nowhere.yaml\n")
    with pytest.raises(ConfigError, match="nowhere.yaml' not found"):
        load_config(tmp_path / "c.yaml")
    (tmp_path / "d.yaml").write_text("extends: [a.yaml]\n")
    with pytest.raises(ConfigError, match="must be the path of one YAML file"):
        load_config(tmp_path / "d.yaml")


# -- variants and the run pool ---------------------------------------------------

TINY = [*tiny_mlp("tiny_claims")]


def test_a_mapping_override_replaces_its_section_a_dotted_one_changes_a_value():
    base = load_config(None, [*TINY, "network.rule.hidden=8"])
    swapped = variant_config(base, {"network.rule": {"name": "infonce"}}, 3)
    assert OmegaConf.to_container(swapped.network.rule) == {"name": "infonce"}
    tweaked = variant_config(base, {"network.rule.hidden": 4}, 3)
    assert tweaked.network.rule.name == "test_supervised_head"
    assert tweaked.network.rule.hidden == 4
    assert swapped.seed == tweaked.seed == 3
    # sections outside the network keep their defaults when replaced
    ev = variant_config(base, {"evaluate": {"budgets": [10]}}, 0)
    assert list(ev.evaluate.budgets) == [10] and ev.evaluate.pool == 2
    with pytest.raises(ConfigError, match="schedular"):
        variant_config(base, {"schedular.epochs": 2}, 0)


def test_run_key_ignores_name_and_output_but_not_seed_or_settings():
    cfg = load_config(None, TINY)
    key = run_key(cfg)
    assert run_key(variant_config(cfg, {"name": "other", "output.dir": "x"}, 0)) == key
    assert run_key(variant_config(cfg, {}, 1)) != key
    assert run_key(variant_config(cfg, {"scheduler.epochs": 2}, 0)) != key


def test_comparisons_share_identical_runs_through_the_pool(tmp_path):
    one = load_config(
        None,
        [*TINY, "compare.seeds=[0, 1]", "compare.variants={a: {}, b: {seed: 9}}"],
    )
    two = load_config(None, [*TINY, "compare.seeds=[1]", "compare.variants={z: {}}"])
    pool = tmp_path / "pool"
    plans = plan_runs(one, tmp_path / "one", pool) + plan_runs(
        two, tmp_path / "two", pool
    )
    dirs = [w for *_, w in plans]
    # a.seed1, b.seed1 (the seed override loses to the comparison's seed) and
    # z.seed1 are the same run; a.seed0 and b.seed0 are another
    assert len(dirs) == 5 and len(set(dirs)) == 2
    assert all(Path(d).parent == pool for d in dirs)


def test_runs_in_worker_processes_equal_runs_in_this_process(tmp_path):
    cfg = load_config(None, [*TINY, "compare.seeds=[0, 1]"])
    jobs = [(c, w) for _, _, c, w in plan_runs(cfg, tmp_path, tmp_path / "serial")]
    serial = run_jobs(jobs, workers=1)
    jobs = [(c, w) for _, _, c, w in plan_runs(cfg, tmp_path, tmp_path / "parallel")]
    parallel = run_jobs(jobs, workers=2)
    assert len(serial) == len(parallel) == 2
    for (ws, rs), (wp, rp) in zip(
        sorted(serial.items()), sorted(parallel.items()), strict=True
    ):
        assert ws.name == wp.name  # the same run key
        assert rs["probe"] == rp["probe"]
        assert rs["final_loss"] == rp["final_loss"]


def test_a_failed_run_in_a_worker_comes_back_as_an_error(tmp_path):
    cfg = load_config(
        None,
        [
            *TINY,
            "compare.seeds=[0]",
            "compare.variants={ok: {}, broken: {network.rule.name: no_such_rule}}",
        ],
    )
    jobs = [(c, w) for _, _, c, w in plan_runs(cfg, tmp_path, tmp_path / "pool")]
    done = run_jobs(jobs, workers=2)
    errors = [r for r in done.values() if "error" in r]
    assert len(errors) == 1 and "unknown rule 'no_such_rule'" in errors[0]["error"]
    assert sum("probe" in r for r in done.values()) == 1


# -- verdicts, on evidence whose numbers are worked out by hand ---------------------


def _result(acc: dict[tuple[str, str, str], float], blocks=("b1", "b2")) -> dict:
    return {
        "blocks": [{"name": b, "rule": "infonce"} for b in blocks],
        "probe": [
            {"model": m, "block": b, "budget": g, "accuracy": a}
            for (m, b, g), a in acc.items()
        ],
    }


def _evidence(table: dict[str, dict[int, dict]]) -> Evidence:
    return Evidence(summary={}, results=table)


def _gim(trained: list[float], reference: list[float], random=0.5) -> Evidence:
    """Two blocks, one budget; block b2 gets the listed accuracies by seed."""
    runs = {}
    for seed, (t, r) in enumerate(zip(trained, reference, strict=True)):
        runs[seed] = _result(
            {
                ("trained", "b1", "10"): t - 0.05,
                ("trained", "b2", "10"): t,
                ("reference", "b1", "10"): r - 0.01,
                ("reference", "b2", "10"): r,
                ("random", "b1", "10"): random,
                ("random", "b2", "10"): random,
            }
        )
    return _evidence({"gim": runs})


def test_local_vs_global_uses_the_paired_difference_at_the_last_block():
    # differences -1.0, -3.0, -2.5 points: mean -2.1667
    ev = _gim([0.80, 0.78, 0.795], [0.81, 0.81, 0.82])
    v = judge(ev, {"name": "local_vs_global", "variant": "gim", "tolerance": 2.0})
    assert v.held is False and "-2.2" in v.table
    v = judge(ev, {"name": "local_vs_global", "variant": "gim", "tolerance": 2.2})
    assert v.held is True
    diffs = [-1.0, -3.0, -2.5]
    m = sum(diffs) / 3
    sd = math.sqrt(sum((d - m) ** 2 for d in diffs) / 2)
    t = m / (sd / math.sqrt(3))
    from scipy import stats

    assert f"{2 * stats.t.sf(abs(t), 2):.3f}" in v.table


def test_seed_variance_counts_block_budget_cases():
    # b2: local 80, 80, 80 (std 0) vs reference 70, 80, 90 (std 10); b1 the same
    ev = _gim([0.80, 0.80, 0.80], [0.70, 0.80, 0.90])
    v = judge(ev, {"name": "seed_variance", "variant": "gim"})
    assert v.held is True and "2 of 2" in v.reason
    ev = _gim([0.70, 0.80, 0.90], [0.80, 0.80, 0.80])
    assert judge(ev, {"name": "seed_variance", "variant": "gim"}).held is False


def test_depth_fails_when_a_block_is_not_above_the_one_below():
    ev = _gim([0.80, 0.80], [0.8, 0.8])  # b2 = b1 + 5 points
    assert judge(ev, {"name": "depth", "variant": "gim"}).held is True
    for run in ev.results["gim"].values():
        for row in run["probe"]:
            if row["model"] == "trained" and row["block"] == "b2":
                row["accuracy"] = 0.70
    v = judge(ev, {"name": "depth", "variant": "gim"})
    assert v.held is False and "b2 at 10" in v.reason


def test_similarity_needs_cka_above_the_random_twin_and_a_floor():
    def run(t, r):
        return {
            "cka": {
                "trained_vs_reference": {
                    "rows": ["b1", "b2"],
                    "cols": ["b1", "b2"],
                    "values": [[t, 0.1], [0.2, t]],
                },
                "random_vs_reference": {
                    "rows": ["b1", "b2"],
                    "cols": ["b1", "b2"],
                    "values": [[r, 0.1], [0.1, r]],
                },
            }
        }

    ev = _evidence({"gim": {0: run(0.7, 0.4), 1: run(0.5, 0.4)}})  # mean 0.6
    v = judge(ev, {"name": "similarity", "variant": "gim", "minimum": 0.5})
    assert v.held is True and "0.600" in v.table
    v = judge(ev, {"name": "similarity", "variant": "gim", "minimum": 0.65})
    assert v.held is False
    ev = _evidence({"gim": {0: run(0.3, 0.4)}})
    assert (
        judge(ev, {"name": "similarity", "variant": "gim", "minimum": 0}).held is False
    )


def test_memory_compares_the_largest_one_block_peak_with_end_to_end():
    rows = [
        {"schedule": "reference", "block": "all", "delta_mb": 100.0},
        {"schedule": "sequential", "block": "b1", "delta_mb": 30.0},
        {"schedule": "sequential", "block": "b2", "delta_mb": 55.0},
        {"schedule": "cached", "block": "b2", "delta_mb": 20.0},
    ]
    ev = Evidence(summary={"memory": {"rows": rows}})
    v = judge(ev, {"name": "memory", "ratio": 0.6})
    assert v.held is True and "0.55" in v.reason
    assert judge(ev, {"name": "memory", "ratio": 0.5}).held is False
    with pytest.raises(ConfigError, match="compare.memory"):
        judge(Evidence(summary={}), {"name": "memory", "ratio": 0.5})


def _two(values_a, values_b, blocks_b=("b1", "b2")):
    a = {s: _result({("trained", "b2", "10"): v}) for s, v in enumerate(values_a)}
    b = {
        s: _result({("trained", blocks_b[-1], "10"): v}, blocks_b)
        for s, v in enumerate(values_b)
    }
    return a, b


def test_schedule_and_split_checks():
    together, one_by_one = _two([0.80, 0.82], [0.78, 0.81])
    ev = _evidence({"sim": together, "seq": one_by_one})
    check = {"name": "schedule", "together": "sim", "one_by_one": "seq"}
    assert judge(ev, check).held is True
    ev = _evidence({"sim": one_by_one, "seq": together})
    assert judge(ev, check).held is False

    base, per_layer = _two([0.80, 0.82], [0.79, 0.80], ("b1", "b2", "b3"))
    ev = _evidence({"three": base, "per_layer": per_layer})
    check = {"name": "split", "baseline": "three", "tolerance": 2.0}
    v = judge(ev, check)
    assert v.held is True and "-1.5" in v.table  # (-1 - 2) / 2 points
    assert judge(ev, {**check, "tolerance": 1.0}).held is False


def test_rules_check_and_a_missing_rule():
    infonce = {s: _result({("trained", "b1", "10"): 0.8}) for s in (0, 1)}
    hebb = {s: _result({("trained", "b1", "10"): 0.7}) for s in (0, 1)}
    ev = _evidence({"infonce": infonce, "hebb": hebb})
    check = {
        "name": "rules",
        "objective": "infonce",
        "unsupervised": ["hebb"],
        "supervised": [],
    }
    assert judge(ev, check).held is True
    v = judge(ev, {**check, "unsupervised": ["hebb", "ff"]})
    assert v.held is None and "ff" in v.reason
    ev = _evidence({"infonce": hebb, "hebb": infonce})
    assert judge(ev, check).held is False


def test_bad_check_parameters_are_named():
    ev = _gim([0.8], [0.8])
    with pytest.raises(ConfigError, match="check 'depth': bad parameters"):
        judge(ev, {"name": "depth", "variant": "gim", "tolerance": 1})


# -- the whole suite on a tiny folder --------------------------------------------


def test_claims_suite_runs_shares_runs_and_writes_a_page(tmp_path):
    folder = tmp_path / "claims"
    folder.mkdir()
    base = load_config(None, [*TINY, "evaluate.reference=true"])
    (folder / "base_digits.yaml").write_text(OmegaConf.to_yaml(base))
    body = (
        "extends: base_digits.yaml\n"
        "compare:\n"
        "  claim: {claim}\n"
        "  check: {check}\n"
        "  seeds: [0, 1]\n"
        "  variants: {{gim: {{}}}}\n"
    )
    (folder / "c1_local.yaml").write_text(
        body.format(
            claim="Local is close to global.",
            check="{name: local_vs_global, variant: gim, tolerance: 100.0}",
        )
    )
    (folder / "c2_variance.yaml").write_text(
        body.format(
            claim="Local varies less.", check="{name: seed_variance, variant: gim}"
        )
    )
    (folder / "notes.yaml").write_text("ignored: true\n")
    record = run_claims(folder, tmp_path / "out")
    # two claims asked for the same two runs: two runs in the pool
    assert len(list((tmp_path / "out" / "pool").iterdir())) == 2
    assert [c["claim"] for c in record["claims"]] == ["c1_local", "c2_variance"]
    assert record["claims"][0]["held"] is True
    assert record["claims"][1]["held"] in (True, False)
    saved = json.loads((tmp_path / "out" / "claims.json").read_text())
    assert saved["wall_seconds"] > 0
    assert record["trained_runs"] == record["runs"] == 2
    assert record["suite_seconds"] == record["wall_seconds"]
    # judging again reuses every run and keeps the suite's measured time
    again = run_claims(folder, tmp_path / "out")
    assert again["trained_runs"] == 0
    assert again["suite_seconds"] == record["suite_seconds"]
    assert [c["held"] for c in again["claims"]] == [c["held"] for c in record["claims"]]
    page = results_page(record, "localearn claims X")
    assert "2 distinct runs" in page
    assert "localearn claims X" in page
    assert "| 1. Local is close to global. | held |" in page
    assert "## 2. Local varies less." in page


def test_claims_folder_errors(tmp_path):
    with pytest.raises(ConfigError, match="claims folder"):
        claims.find_claims(tmp_path / "missing")
    with pytest.raises(ConfigError, match="needs base_<data>.yaml"):
        claims.find_claims(tmp_path)
    (tmp_path / "base_x.yaml").write_text(OmegaConf.to_yaml(load_config(None, TINY)))
    (tmp_path / "c1_bad.yaml").write_text(
        "extends: base_x.yaml\ncompare: {claim: x, check: {name: nope}}\n"
    )
    with pytest.raises(ConfigError, match="compare.check.name, one of"):
        claims.claim_config(tmp_path / "c1_bad.yaml", tmp_path / "base_x.yaml")
    with pytest.raises(ConfigError, match="unknown claims data set"):
        run_claims(tmp_path, tmp_path / "out", data=["cifar"])


def test_shipped_claims_load_and_pass_preflight_on_both_bases(tmp_path):
    from localearn.experiment import Experiment

    folder = Path(__file__).parent.parent / "experiments" / "claims"
    bases, files = claims.find_claims(folder)
    assert set(bases) == {"mnist", "mnist1d"} and len(files) == 9
    checked = set()
    for base in bases.values():
        for claim in files:
            cfg = claims.claim_config(claim, base)
            for _, seed, run_cfg, _where in plan_runs(cfg, tmp_path, tmp_path / "p"):
                assert seed in range(5)
                shape = run_key(variant_config(run_cfg, {}, 0))
                if shape not in checked:
                    checked.add(shape)
                    Experiment.preflight(run_cfg)  # data, network, rules, schedule
    # 9 distinct settings per data set: base (with reference), sequential,
    # one block per layer, two blocks, softhebb, pc, ff, greedy supervised on
    # the per-layer network, and greedy supervised with its reference
    assert len(checked) == 18


def test_a_right_direction_without_significance_is_inconclusive():
    # one after another is below together by 1, 2, 3 points (p = 0.074, 2 dof)
    together, one_by_one = _two([0.80, 0.82, 0.84], [0.79, 0.80, 0.81])
    ev = _evidence({"sim": together, "seq": one_by_one})
    check = {"name": "schedule", "together": "sim", "one_by_one": "seq"}
    v = judge(ev, check)
    assert v.held is True and v.significant is False
    assert v.status == "inconclusive" and "not significant" in v.reason
    # by 2.0, 2.1, 1.9 points: p = 0.0017
    together, one_by_one = _two([0.80, 0.82, 0.84], [0.78, 0.799, 0.821])
    v = judge(_evidence({"sim": together, "seq": one_by_one}), check)
    assert v.status == "held" and v.significant is True
    assert judge(_evidence({"sim": one_by_one, "seq": together}), check).status == (
        "did not hold"
    )
