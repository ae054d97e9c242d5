"""Errors that localearn raises on bad input or a failed run.

Every message names the thing at fault, the value found and what was expected,
so the user can fix the input without reading the source.
"""


class LocalearnError(Exception):
    """Base class for every error localearn raises on bad input."""


class UnknownNameError(LocalearnError, KeyError):
    """A name (rule, block, data set, layer, scheduler) that is not registered."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class ConfigError(LocalearnError, ValueError):
    """A configuration key or value that localearn cannot accept."""


class DataError(LocalearnError, ValueError):
    """A data file that is missing or malformed, or a bad data option."""


class ShapeError(LocalearnError, ValueError):
    """Blocks or tensors whose shapes do not fit together."""


class IsolationError(LocalearnError, RuntimeError):
    """A local loss or update that reaches parameters outside its own block."""


class DivergenceError(LocalearnError, FloatingPointError):
    """A loss, energy, state or weight that became NaN or infinite."""


class RuleDefinitionError(LocalearnError, TypeError):
    """A rule class that does not satisfy the contract of its kind."""
