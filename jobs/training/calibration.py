"""Temperature scaling: calibrated probabilities from a trained finder's logits.

A network trained with cross-entropy on balanced, easy synthetic data is usually over-confident:
its sigmoid scores pile up at 0 and 1. Temperature scaling (Guo et al. 2017) fits one number
``T > 0`` on held-out data and reports ``sigmoid(logit / T)``. Dividing by a positive constant is
monotone, so rankings, ROC curves and every threshold-on-the-negatives operating point are
unchanged; only the probabilities become honest. ``T`` is fitted on the validation split (never on
the test split) and stored in the checkpoint as ``extra["temperature"]``; ``dhs score`` applies it.

Pure numpy / scipy: no torch here, the logits come in as arrays.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import optimize, special

from dhs_gen.errors import InvalidValueError, check_range

__all__ = ["TEMPERATURE_BOUNDS", "mean_bce", "fit_temperature", "calibrated_proba", "checkpoint_temperature"]

# Search interval of T. A fit landing on an edge means the data give no finite optimum (perfectly
# separated, or logits unrelated / anti-related to the labels): an error, not a clipped value.
TEMPERATURE_BOUNDS = (1e-3, 1e3)


def _logits_labels(logits, labels) -> tuple[np.ndarray, np.ndarray]:
    z = np.asarray(logits, dtype=float).ravel()
    y = np.asarray(labels).ravel()
    if z.size == 0:
        raise InvalidValueError("logits", z, "must hold at least one logit")
    if y.shape != z.shape:
        raise InvalidValueError("labels", y, f"must have the same length as logits ({z.size}), got {y.size}")
    if not np.all(np.isfinite(z)):
        raise InvalidValueError("logits", z, "must all be finite")
    if not np.all(np.isin(y, (0, 1))):
        raise InvalidValueError("labels", y, "must be 0 (negative) or 1 (positive)")
    y = y.astype(float)
    if y.min() == y.max():
        raise InvalidValueError("labels", y, "must contain both classes (0 and 1) to fit a temperature")
    return z, y


def mean_bce(logits, labels, temperature: float) -> float:
    """Mean binary cross-entropy (nats per row) of ``sigmoid(logits / temperature)`` against 0/1 labels.

    Computed from the logits as ``softplus(x) - y x`` with ``x = logit / T``: no log of a
    probability that rounded to 0 or 1.
    """
    x = np.asarray(logits, dtype=float) / temperature
    return float(np.mean(np.logaddexp(0.0, x) - np.asarray(labels, dtype=float) * x))


def fit_temperature(logits, labels) -> float:
    """Temperature ``T > 0`` minimising the mean binary cross-entropy of ``sigmoid(logits / T)``.

    The loss is convex in ``1 / T``, hence unimodal in ``log T``: a bounded Brent search on
    ``log T`` over :data:`TEMPERATURE_BOUNDS` finds the minimum deterministically.

    Parameters
    ----------
    logits : array-like (N,)
        Finder logits (dimensionless, log-odds) on held-out rows, e.g. the validation split.
    labels : array-like (N,)
        1 for lenses / injections, 0 for negatives; both classes must be present.

    Returns
    -------
    float
        T (dimensionless); ``T > 1`` softens over-confident logits, ``T < 1`` sharpens.

    Raises
    ------
    InvalidValueError
        Empty input, a length mismatch, labels not 0/1 or of one class only, non-finite logits,
        or no finite optimum inside :data:`TEMPERATURE_BOUNDS` (perfectly separated classes drive
        T to 0; logits that do not rank the positives higher drive it to infinity).
    """
    z, y = _logits_labels(logits, labels)
    lo, hi = (math.log(b) for b in TEMPERATURE_BOUNDS)
    res = optimize.minimize_scalar(lambda u: mean_bce(z, y, math.exp(u)), bounds=(lo, hi), method="bounded",
                                   options={"xatol": 1e-7, "maxiter": 500})
    u = float(res.x)
    # Brent's bounded search never evaluates the ends exactly: "at the edge" means within its tolerance.
    if not res.success or u - lo < 1e-4 or hi - u < 1e-4:
        raise InvalidValueError(
            "logits", z, f"give no finite optimal temperature in {list(TEMPERATURE_BOUNDS)} (search ended at "
                         f"T={math.exp(u):.3g}): the classes are perfectly separated, or the logits do not rank "
                         "positives above negatives")
    return math.exp(u)


def calibrated_proba(logits, temperature: float) -> np.ndarray:
    """Calibrated probabilities ``sigmoid(logits / temperature)``, stable for any finite logit.

    Parameters
    ----------
    logits : array-like
        Finder logits (dimensionless); any shape.
    temperature : float
        T > 0 from :func:`fit_temperature` (dimensionless).

    Returns
    -------
    ndarray float64, same shape as ``logits``, probabilities in [0, 1].
    """
    t = check_range("temperature", temperature, 0.0, math.inf, lo_open=True)
    return special.expit(np.asarray(logits, dtype=np.float64) / t)


def checkpoint_temperature(meta: dict) -> float | None:
    """The temperature stored in a checkpoint's meta (``extra["temperature"]``), or None when absent.

    Raises
    ------
    RangeError
        A stored temperature that is not a finite number > 0.
    """
    value = meta.get("temperature")
    if value is None:
        return None
    return float(check_range("checkpoint temperature", float(value), 0.0, math.inf, lo_open=True))
