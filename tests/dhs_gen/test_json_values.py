"""dhs_gen.json_values: NaN / inf become null, everything else passes through, strict JSON accepts the result."""

import json
import math

import numpy as np

from dhs_gen.json_values import finite_float, finite_or_none, json_safe


def test_finite_or_none_keeps_values_and_drops_non_finite_floats():
    assert finite_or_none(0.25) == 0.25 and finite_or_none(3) == 3 and finite_or_none("x") == "x"
    assert finite_or_none(None) is None
    assert all(finite_or_none(v) is None for v in (math.nan, math.inf, -math.inf, np.float64("nan")))


def test_finite_float_converts_numpy_and_ints():
    assert finite_float(np.float32(0.5)) == 0.5 and isinstance(finite_float(3), float)
    assert finite_float(None) is None and finite_float(np.float32("inf")) is None


def test_json_safe_is_recursive_and_strict_json_accepts_it():
    obj = {"a": [1.0, math.nan, {"b": np.float64(math.inf), 2: np.int64(7)}], "c": (np.float32(0.5),)}
    out = json_safe(obj)
    assert out == {"a": [1.0, None, {"b": None, "2": 7}], "c": [0.5]}
    assert json.loads(json.dumps(out, allow_nan=False)) == out
