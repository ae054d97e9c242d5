"""Experiment configs: defaults, overrides from the command line, validation.

An experiment is one omegaconf config with the sections ``data``,
``network``, ``scheduler``, ``evaluate`` and ``output``. Every key outside
``network`` is checked against the defaults below, so a misspelt key fails
at once with its name and the valid keys; ``network`` is checked when the
network is built.

Example:
    >>> cfg = load_config(None, ["network.rule.name=infonce", "seed=3"])
    >>> cfg.seed, cfg.scheduler.mode
    (3, 'simultaneous')
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from localearn.errors import ConfigError
from localearn.probe import ProbeConfig
from localearn.schedulers import SchedulerConfig

DEFAULTS: dict[str, Any] = {
    "name": "experiment",
    "seed": 0,
    "device": "cpu",
    "threads": 0,
    "data": {"name": "mnist_subset", "root": None, "options": {}},
    "network": {},
    "scheduler": dataclasses.asdict(SchedulerConfig()),
    "evaluate": {
        "budgets": [10, "all"],
        "pool": 2,
        "random_twin": True,
        "reference": False,
        "cka": True,
        "batch_size": 250,
        "probe": dataclasses.asdict(ProbeConfig()),
    },
    "output": {"dir": "runs", "checkpoint": True},
    "compare": {},
}
FREE_SECTIONS = ("network", "data.options", "compare")


_TYPES = {bool: (bool,), int: (int,), float: (int, float), str: (str,)}


def _check_type(value: Any, default: Any, path: str) -> None:
    expected = _TYPES.get(type(default))
    if expected is None or value is None:
        return
    ok = isinstance(value, expected) and not (
        isinstance(value, bool) and type(default) is not bool
    )
    if not ok:
        raise ConfigError(
            f"config key '{path}' must be {_article(type(default).__name__)} (like the "
            f"default {default!r}), got {value!r}"
        )


def _article(word: str) -> str:
    return f"{'an' if word[0] in 'aeiou' else 'a'} {word}"


def _check_keys(cfg: Any, defaults: Any, path: str) -> None:
    if path in FREE_SECTIONS:
        return
    if not isinstance(defaults, Mapping):
        _check_type(cfg, defaults, path)
        return
    if not isinstance(cfg, Mapping | DictConfig):
        raise ConfigError(f"config key '{path}' must be a mapping, got {cfg!r}")
    for key in cfg:
        where = f"{path}.{key}" if path else str(key)
        if key not in defaults:
            close = difflib.get_close_matches(str(key), list(defaults), n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ConfigError(
                f"unknown config key '{where}'{hint}; valid keys"
                f"{' under ' + path if path else ''}: {', '.join(defaults)}"
            )
        _check_keys(cfg[key], defaults[key], where)


def load_config(path: str | Path | None, overrides: Sequence[str] = ()) -> DictConfig:
    """Load a YAML experiment, apply ``key=value`` overrides, validate keys.

    Args:
        path: YAML file, or None for the defaults alone.
        overrides: dotted ``key=value`` strings, as on the command line.

    Returns:
        The merged config.

    Raises:
        ConfigError: unreadable file, malformed override or unknown key.
    """
    base = OmegaConf.create(DEFAULTS)
    layers = [base]
    if path is not None:
        layers.extend(_file_layers(Path(path), []))
    for item in overrides:
        if "=" not in item:
            raise ConfigError(
                f"override '{item}' must look like key=value, e.g. scheduler.epochs=2"
            )
    try:
        layers.append(OmegaConf.from_dotlist(list(overrides)))
    except OmegaConfBaseException as err:
        raise ConfigError(f"bad override: {err}") from None
    for layer in layers[1:]:
        _check_keys(layer, DEFAULTS, "")
    try:
        cfg = OmegaConf.merge(*layers)
    except OmegaConfBaseException as err:
        key = getattr(err, "full_key", "") or "?"
        raise ConfigError(
            f"config key '{key}' has the wrong type: {str(err).splitlines()[0]}"
        ) from None
    except TypeError as err:
        # e.g. network.layers.0.type=conv: a dotted index into a list
        raise ConfigError(
            f"an override cannot be merged into the config ({err}); a list such as "
            "network.layers is replaced whole: give the full list, e.g. "
            "'network.layers=[{type: conv, out: 8}, {type: relu}]'"
        ) from None
    if not cfg.network:
        raise ConfigError(
            "the config has no network; give network.layers and network.rule (see "
            "experiments/gim_mnist.yaml)"
        )
    return cfg


def _read_yaml(path: Path) -> DictConfig:
    if not path.is_file():
        raise ConfigError(
            f"config file '{path}' not found; the shipped experiments are in "
            "experiments/ (for example experiments/gim_mnist.yaml)"
        )
    try:
        layer = OmegaConf.load(path)
    except Exception as err:
        raise ConfigError(f"config file '{path}' is not valid YAML: {err}") from None
    if not isinstance(layer, DictConfig):
        raise ConfigError(f"config file '{path}' must hold a mapping of keys")
    return layer


def _file_layers(path: Path, seen: list[Path]) -> list[DictConfig]:
    """A config file and, before it, the files it ``extends`` (recursively).

    ``extends: other.yaml`` (relative to the file's folder) makes the file a
    set of changes to ``other.yaml``; mappings merge key by key.
    """
    if path.resolve() in seen:
        chain = " -> ".join(str(p) for p in [*seen, path.resolve()])
        raise ConfigError(f"config files extend each other in a cycle: {chain}")
    layer = _read_yaml(path)
    parent = layer.pop("extends", None)
    if parent is None:
        return [layer]
    if not isinstance(parent, str):
        raise ConfigError(
            f"'extends' in '{path}' must be the path of one YAML file, got {parent!r}"
        )
    return [*_file_layers(path.parent / parent, [*seen, path.resolve()]), layer]


def to_plain(cfg: Any) -> Any:
    """A resolved config as plain dicts and lists."""
    if isinstance(cfg, DictConfig | ListConfig):
        return OmegaConf.to_container(cfg, resolve=True)
    return cfg
