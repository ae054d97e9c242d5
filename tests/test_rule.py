"""The rule contract: registration, validation, listing."""

from dataclasses import dataclass

import pytest
import torch

from localearn.errors import ConfigError, RuleDefinitionError, UnknownNameError
from localearn.rule import (
    ObjectiveRule,
    PlasticityRule,
    describe_rules,
    get_rule_class,
    make_rule,
    register_rule,
    rule_names,
)


@dataclass
class _Cfg:
    lr: float = 0.1


def test_builtin_rule_is_found_through_its_entry_point():
    assert "infonce" in rule_names()
    assert get_rule_class("infonce").kind == "objective"


def test_unknown_rule_lists_the_valid_names():
    with pytest.raises(
        UnknownNameError, match=r"unknown rule 'infonse'; valid rules: .*infonce"
    ):
        get_rule_class("infonse")


def test_rule_without_its_kinds_method_is_refused_at_registration():
    with pytest.raises(
        RuleDefinitionError,
        match=r"rule 'no_update' of kind 'plasticity' must define update\(\)",
    ):

        @register_rule("no_update")
        class NoUpdate(PlasticityRule):
            Config = _Cfg

    assert "no_update" not in rule_names()


def test_rule_without_config_dataclass_is_refused():
    with pytest.raises(RuleDefinitionError, match="must set Config to a dataclass"):

        @register_rule("no_config")
        class NoConfig(ObjectiveRule):
            def loss(self, x, y, labels=None):
                return y.sum()


def test_hyperparameter_without_default_is_refused():
    @dataclass
    class NoDefault:
        lr: float

    with pytest.raises(
        RuleDefinitionError, match="hyperparameter 'lr' needs a default"
    ):

        @register_rule("no_default")
        class R(ObjectiveRule):
            Config = NoDefault

            def loss(self, x, y, labels=None):
                return y.sum()


def test_non_rule_class_is_refused():
    with pytest.raises(RuleDefinitionError, match="must subclass ObjectiveRule"):
        register_rule("not_a_rule")(dict)


def test_name_clash_is_refused_unless_replacing():
    with pytest.raises(RuleDefinitionError, match="already registered"):

        @register_rule("infonce")
        class Other(ObjectiveRule):
            Config = _Cfg

            def loss(self, x, y, labels=None):
                return y.sum()


def test_unknown_hyperparameter_is_named():
    with pytest.raises(
        ConfigError, match=r"rule 'infonce' has no hyperparameter 'stepz'; valid: steps"
    ):
        make_rule("infonce", {"stepz": 3})


def test_wrong_type_is_refused():
    with pytest.raises(ConfigError, match="rule 'infonce'"):
        make_rule("infonce", {"steps": "many"})


def test_out_of_range_value_is_refused():
    with pytest.raises(ConfigError, match=r"rule 'infonce': steps must be >= 1, got 0"):
        make_rule("infonce", {"steps": 0})


def test_describe_lists_kind_and_defaults():
    table = {r["name"]: r for r in describe_rules()}
    steps = {p["name"]: p for p in table["infonce"]["hyperparameters"]}["steps"]
    assert table["infonce"]["kind"] == "objective"
    assert steps["default"] == 5
    assert table["test_hebb"]["kind"] == "plasticity"
    assert table["test_energy"]["kind"] == "energy"


def test_defaults_fill_missing_hyperparameters():
    rule = make_rule("infonce", {"negatives": 4})
    assert rule.config.negatives == 4 and rule.config.steps == 5
    assert isinstance(rule, torch.nn.Module)
