"""Typed, picklable errors that carry the bad value and what is allowed.

Errors raised inside Spark executors are pickled back to the driver; an exception whose
``__init__`` takes more than a message must define ``__reduce__`` or it arrives as a
confusing ``TypeError``. Every error here names the argument (or config field), the value
and the allowed range or choices.
"""

from __future__ import annotations

import math
from collections.abc import Iterable


def _fmt_interval(lo, hi, lo_open: bool, hi_open: bool) -> str:
    return f"{'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"


class RangeError(ValueError):
    """A numeric value outside its allowed interval (or not finite)."""

    def __init__(self, name: str, value, lo, hi, lo_open: bool = False, hi_open: bool = False):
        self.name, self.value, self.lo, self.hi = name, value, lo, hi
        self.lo_open, self.hi_open = lo_open, hi_open
        super().__init__(f"{name}={value!r} not in {_fmt_interval(lo, hi, lo_open, hi_open)}")

    def __reduce__(self):
        return type(self), (self.name, self.value, self.lo, self.hi, self.lo_open, self.hi_open)


class ChoiceError(ValueError):
    """A value that is not one of a fixed set of choices."""

    def __init__(self, name: str, value, choices: Iterable):
        self.name, self.value, self.choices = name, value, tuple(choices)
        super().__init__(f"{name}={value!r} is not one of {list(self.choices)}")

    def __reduce__(self):
        return type(self), (self.name, self.value, self.choices)


class InvalidValueError(ValueError):
    """A value that breaks a rule that is not a plain range (shape, parity, normalisation...)."""

    def __init__(self, name: str, value, allowed: str):
        self.name, self.value, self.allowed = name, value, allowed
        shown = value if not hasattr(value, "shape") else f"<array shape={value.shape}>"
        super().__init__(f"{name}={shown!r}: {allowed}")

    def __reduce__(self):
        return type(self), (self.name, self.value, self.allowed)


class ConfigError(ValueError):
    """A configuration field that fails validation (raised on the driver, before Spark starts)."""

    def __init__(self, field: str, value, allowed: str):
        self.field, self.value, self.allowed = field, value, allowed
        super().__init__(f"config field '{field}' = {value!r}: {allowed}")

    def __reduce__(self):
        return type(self), (self.field, self.value, self.allowed)


def check_range(name: str, value, lo=-math.inf, hi=math.inf, lo_open: bool = False, hi_open: bool = False):
    """Return ``float(value)`` if it is finite and inside the interval, else raise :class:`RangeError`."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise RangeError(name, value, lo, hi, lo_open, hi_open) from None
    if not math.isfinite(v):
        raise RangeError(name, value, lo, hi, lo_open, hi_open)
    if (v < lo) or (v > hi) or (lo_open and v == lo) or (hi_open and v == hi):
        raise RangeError(name, value, lo, hi, lo_open, hi_open)
    return v


def check_choice(name: str, value, choices: Iterable):
    """Return ``value`` if it is one of ``choices``, else raise :class:`ChoiceError`."""
    choices = tuple(choices)
    if value not in choices:
        raise ChoiceError(name, value, choices)
    return value
