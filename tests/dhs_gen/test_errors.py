"""dhs_gen.errors: every error pickles (Spark ships executor errors to the driver) and names
the argument, the value and what is allowed."""

import math
import pickle
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import pytest

from dhs_gen.errors import (
    ChoiceError,
    ConfigError,
    DhsError,
    InvalidValueError,
    RangeError,
    check_choice,
    check_config_range,
    check_range,
)
from jobs.cutouts.cutout import CutoutUnavailable
from jobs.runtime.outputs import MissingInputError, OutputExistsError
from jobs.stages.coadd_cache import FetchError

EXAMPLES = [
    RangeError("theta_e_arcsec", 9.5, 0.5, 3.0),
    RangeError("q", 0.0, 0.0, 1.0, lo_open=True),
    ChoiceError("psf_model", "airy", ("gaussian", "moffat")),
    InvalidValueError("psf", "even kernel", "PSF kernel size must be odd"),
    ConfigError("source.mode", "galsim", "must be one of ['sersic', 'hybrid']"),
]


# One instance of every error kind the project defines, each with the builtin base it keeps.
ALL_KINDS = [
    (RangeError("n", 2.5, 1, 10, integer=True), ValueError),
    (ChoiceError("band", "i", "grz"), ValueError),
    (InvalidValueError("psf", "even kernel", "PSF kernel size must be odd"), ValueError),
    (ConfigError("source.mode", "galsim", "must be one of ['sersic']"), ValueError),
    (OutputExistsError("s3://b/out", "a committed dataset"), FileExistsError),
    (MissingInputError("s3://b/in", "4a_manifest", "; see the log"), FileNotFoundError),
    (CutoutUnavailable("missing_band", "bands 'gr'"), Exception),
    (FetchError("https://host/x.fits.fz", "HTTP 503", True), Exception),
    (DhsError("plain message"), Exception),
]
ATTRS = ("name", "field", "value", "allowed", "lo", "hi", "lo_open", "hi_open", "integer", "choices",
         "path", "found", "stage", "detail", "reason", "source", "transient")


@pytest.mark.parametrize("err, builtin", ALL_KINDS, ids=[type(e).__name__ for e, _ in ALL_KINDS])
def test_every_error_kind_is_a_picklable_dhs_error(err, builtin):
    assert isinstance(err, DhsError) and isinstance(err, builtin)
    back = pickle.loads(pickle.dumps(err))
    assert type(back) is type(err) and str(back) == str(err) and back.args == err.args
    for attr in ATTRS:
        if hasattr(err, attr):
            assert getattr(back, attr) == getattr(err, attr), attr
    for attr in ("field", "value", "allowed"):                 # None where it does not apply
        assert hasattr(back, attr)


def test_dhs_error_attributes():
    err = ConfigError("model.width", 0, "must be an integer in [1, 1024]")
    assert (err.field, err.value, err.allowed) == ("model.width", 0, "must be an integer in [1, 1024]")
    err = RangeError("q", 0.0, 0.0, 1.0, lo_open=True)
    assert (err.field, err.value, err.allowed) == ("q", 0.0, "in (0.0, 1.0]")
    assert ChoiceError("band", "i", "grz").allowed == ("g", "r", "z")
    assert OutputExistsError("out", "1 part file").value == "out"
    err = CutoutUnavailable("nonfinite_pixels")
    assert (err.field, err.value, err.allowed) == (None, None, None)


@pytest.mark.parametrize("err", EXAMPLES, ids=lambda e: type(e).__name__)
def test_pickle_round_trip_keeps_type_fields_and_message(err):
    back = pickle.loads(pickle.dumps(err))
    assert type(back) is type(err) and str(back) == str(err) and back.args == err.args
    for attr in ("name", "field", "value", "lo", "hi", "lo_open", "hi_open", "choices", "allowed"):
        if hasattr(err, attr):
            assert getattr(back, attr) == getattr(err, attr)
    assert isinstance(back, ValueError)


def _raise(err):
    raise err


@pytest.mark.parametrize("err", EXAMPLES[:3], ids=lambda e: type(e).__name__)
def test_errors_cross_a_process_boundary(err):
    # what a Spark executor does: the exception is pickled in a worker and re-raised here
    with ProcessPoolExecutor(max_workers=1) as pool, pytest.raises(type(err)) as info:
        pool.submit(_raise, err).result()
    assert str(info.value) == str(err)


def test_messages_name_argument_value_and_range():
    assert str(RangeError("theta_e_arcsec", 9.5, 0.5, 3.0)) == "theta_e_arcsec=9.5 not in [0.5, 3.0]"
    assert str(RangeError("q", 0.0, 0.0, 1.0, lo_open=True)) == "q=0.0 not in (0.0, 1.0]"
    msg = str(ChoiceError("psf_model", "airy", ("gaussian", "moffat")))
    assert "psf_model" in msg and "'airy'" in msg and "gaussian" in msg and "moffat" in msg
    msg = str(ConfigError("source.mode", "galsim", "must be one of ['sersic']"))
    assert "source.mode" in msg and "galsim" in msg and "sersic" in msg
    msg = str(InvalidValueError("img", np.zeros((2, 3)), "must be 2-D"))
    assert "img" in msg and "shape=(2, 3)" in msg and "must be 2-D" in msg  # arrays shown by shape only


def test_check_range():
    assert check_range("x", 2, 0, 3) == 2.0
    assert check_range("x", 3.0, 0, 3) == 3.0
    for value, kwargs in ((3.0, {"hi_open": True}), (0.0, {"lo_open": True}), (-1, {}), (math.nan, {}),
                          (math.inf, {}), ("abc", {}), (None, {})):
        with pytest.raises(RangeError) as info:
            check_range("x", value, 0, 3, **kwargs)
        assert info.value.name == "x" and info.value.lo == 0 and info.value.hi == 3
        assert "x=" in str(info.value)


def test_check_range_integer():
    assert check_range("n", 3, 0, 5, integer=True) == 3 and type(check_range("n", np.int64(3), 0, 5, integer=True)) is int
    for value in (2.0, True, "3", 6, -1):
        with pytest.raises(RangeError) as info:
            check_range("n", value, 0, 5, integer=True)
        assert str(info.value) == f"n={value!r} not an integer in [0, 5]"


def test_check_config_range_raises_config_error_naming_the_field():
    assert check_config_range("lens.shear_sigma", 0.1, 0, 0.3) == 0.1
    with pytest.raises(ConfigError) as info:
        check_config_range("moffat_beta", 0.5, 1, 100, lo_open=True)
    assert info.value.field == "moffat_beta" and str(info.value) == "config field 'moffat_beta' = 0.5: must be in (1, 100]"
    with pytest.raises(ConfigError, match=r"must be an integer in \[1, 16\]"):
        check_config_range("model.depth", 2.5, 1, 16, integer=True)


def test_check_choice():
    assert check_choice("band", "r", "grz") == "r"
    with pytest.raises(ChoiceError) as info:
        check_choice("band", "i", "grz")
    assert info.value.choices == ("g", "r", "z") and "'i'" in str(info.value)
