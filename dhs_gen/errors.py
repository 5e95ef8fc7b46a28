"""Typed, picklable errors that carry the bad value and what is allowed.

Errors raised inside Spark executors are pickled back to the driver; an exception whose
``__init__`` takes more than a message must define ``__reduce__`` or it arrives as a
confusing ``TypeError``. Every error here names the argument (or config field), the value
and the allowed range or choices.
"""

# Which error to raise when (every project error is a DhsError, so ``except DhsError`` catches
# all of them; each also keeps the builtin base that callers already catch):
#
#   RangeError          a number outside its interval, or not finite           (ValueError)
#                       -> use check_range(); it also tests "is an integer"
#   ChoiceError         a value not among a fixed set of names                 (ValueError)
#                       -> use check_choice()
#   InvalidValueError   a value breaking a rule that is not a range or a set:  (ValueError)
#                       shape, parity, normalisation, a malformed name
#   ConfigError         a configuration field (YAML, CLI) that fails            (ValueError)
#                       validation on the driver, before Spark starts
#                       -> use check_config_range() for numeric fields
#   OutputExistsError   a stage output already committed, no --overwrite     (FileExistsError)
#                       (jobs.runtime.outputs)
#   MissingInputError   a stage input without _manifest.json                 (FileNotFoundError)
#                       (jobs.runtime.outputs)
#   CutoutUnavailable   no usable pixels at a position: a per-row reject     (jobs.cutouts.cutout)
#                       reason, not a bug
#   FetchError          a coadd file could not be downloaded; says whether  (jobs.stages.coadd_cache)
#                       a retry may help
#
# Anything else (a broken invariant of our own code) stays a plain RuntimeError/AssertionError.

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable


def _fmt_interval(lo, hi, lo_open: bool, hi_open: bool) -> str:
    return f"{'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"


class DhsError(Exception):
    """Base of every error this project raises on purpose.

    ``field`` names the argument or config field, ``value`` is the offending value and
    ``allowed`` says what would have been accepted; each is ``None`` where it does not apply.
    Subclasses with their own ``__init__`` define their own ``__reduce__``.
    """

    def __init__(self, message: str, field: str | None = None, value=None, allowed=None):
        self.field, self.value, self.allowed = field, value, allowed
        super().__init__(message)

    def __reduce__(self):
        return type(self), (str(self), self.field, self.value, self.allowed)


class RangeError(DhsError, ValueError):
    """A numeric value outside its allowed interval (or not finite, or not a required integer)."""

    def __init__(self, name: str, value, lo, hi, lo_open: bool = False, hi_open: bool = False,
                 integer: bool = False):
        self.name, self.lo, self.hi = name, lo, hi
        self.lo_open, self.hi_open, self.integer = lo_open, hi_open, integer
        allowed = f"{'an integer ' if integer else ''}in {_fmt_interval(lo, hi, lo_open, hi_open)}"
        super().__init__(f"{name}={value!r} not {allowed}", name, value, allowed)

    def __reduce__(self):
        return type(self), (self.name, self.value, self.lo, self.hi, self.lo_open, self.hi_open, self.integer)


class ChoiceError(DhsError, ValueError):
    """A value that is not one of a fixed set of choices."""

    def __init__(self, name: str, value, choices: Iterable):
        self.name, self.choices = name, tuple(choices)
        super().__init__(f"{name}={value!r} is not one of {list(self.choices)}", name, value, self.choices)

    def __reduce__(self):
        return type(self), (self.name, self.value, self.choices)


class InvalidValueError(DhsError, ValueError):
    """A value that breaks a rule that is not a plain range (shape, parity, normalisation...)."""

    def __init__(self, name: str, value, allowed: str):
        self.name = name
        shown = value if not hasattr(value, "shape") else f"<array shape={value.shape}>"
        super().__init__(f"{name}={shown!r}: {allowed}", name, value, allowed)

    def __reduce__(self):
        return type(self), (self.name, self.value, self.allowed)


class ConfigError(DhsError, ValueError):
    """A configuration field that fails validation (raised on the driver, before Spark starts)."""

    def __init__(self, field: str, value, allowed: str):
        super().__init__(f"config field '{field}' = {value!r}: {allowed}", field, value, allowed)

    def __reduce__(self):
        return type(self), (self.field, self.value, self.allowed)


def check_range(name: str, value, lo=-math.inf, hi=math.inf, lo_open: bool = False, hi_open: bool = False,
                integer: bool = False):
    """Return ``value`` as a number if it is finite and inside the interval, else raise :class:`RangeError`.

    The result is ``float(value)``, or ``int(value)`` with ``integer=True``, which also rejects
    anything that is not an integer type (floats such as ``2.0`` and booleans included).
    """
    if integer and (isinstance(value, bool) or not isinstance(value, numbers.Integral)):
        raise RangeError(name, value, lo, hi, lo_open, hi_open, integer)
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise RangeError(name, value, lo, hi, lo_open, hi_open, integer) from None
    if not math.isfinite(v):
        raise RangeError(name, value, lo, hi, lo_open, hi_open, integer)
    if (v < lo) or (v > hi) or (lo_open and v == lo) or (hi_open and v == hi):
        raise RangeError(name, value, lo, hi, lo_open, hi_open, integer)
    return int(value) if integer else v


def check_config_range(field: str, value, lo=-math.inf, hi=math.inf, lo_open: bool = False,
                       hi_open: bool = False, integer: bool = False):
    """:func:`check_range` for a configuration field: the same test, raised as :class:`ConfigError`.

    Config validation runs on the driver and its callers catch ``ConfigError`` to report a bad
    field; the message reads ``must be [an integer] in [lo, hi]``.
    """
    try:
        return check_range(field, value, lo, hi, lo_open, hi_open, integer)
    except RangeError as err:
        raise ConfigError(field, value, f"must be {err.allowed}") from None


def check_config_choice(field: str, value, choices: Iterable):
    """Return ``value`` if it is one of ``choices``, else raise :class:`ConfigError` naming the field and the choices."""
    choices = tuple(choices)
    if value not in choices:
        raise ConfigError(field, value, f"must be one of {list(choices)}")
    return value


def check_choice(name: str, value, choices: Iterable):
    """Return ``value`` if it is one of ``choices``, else raise :class:`ChoiceError`."""
    choices = tuple(choices)
    if value not in choices:
        raise ChoiceError(name, value, choices)
    return value
