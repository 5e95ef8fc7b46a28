"""Uber mixer: seed defaults, validation, frequencies, independence of the two draws, determinism."""

import math
import pickle
from collections import Counter

import numpy as np
import pytest
from scipy import stats

from dhs_gen.augmentation.mixer import DEFAULT_UBER, MixerConfig, assign_modes
from dhs_gen.errors import ConfigError

N_IDS = 20_000


@pytest.fixture(scope="module")
def assignments():
    return [assign_modes(f"task-{i:06d}", DEFAULT_UBER) for i in range(N_IDS)]


def test_default_is_the_seed_mix():
    assert DEFAULT_UBER.source_modes == ("cosmos", "deep", "hybrid")
    assert DEFAULT_UBER.source_probs == (0.34, 0.33, 0.33)
    assert DEFAULT_UBER.artifact_profiles == ("none", "mild", "strong")
    assert DEFAULT_UBER.artifact_probs == (0.15, 0.70, 0.15)
    assert DEFAULT_UBER.salt == "uber_v1"
    with pytest.raises(AttributeError):
        DEFAULT_UBER.salt = "x"  # frozen


def test_frequencies_match_probabilities(assignments):
    # binomial: |count - N p| <= 4 sigma, sigma = sqrt(N p (1-p)); 4 sigma keeps the false-alarm
    # rate of the 6 checks below ~4e-4 while a 2-percentage-point bias (sigma ~0.3 pp) fails it
    src = Counter(a["source_mode"] for a in assignments)
    art = Counter(a["artifact_profile"] for a in assignments)
    for names, probs, counts in ((DEFAULT_UBER.source_modes, DEFAULT_UBER.source_probs, src),
                                 (DEFAULT_UBER.artifact_profiles, DEFAULT_UBER.artifact_probs, art)):
        p = np.asarray(probs) / sum(probs)
        for name, pi in zip(names, p, strict=True):
            assert abs(counts[name] - N_IDS * pi) <= 4 * math.sqrt(N_IDS * pi * (1 - pi)), (name, counts[name])


def test_source_and_artifact_draws_are_independent(assignments):
    # chi-square test of the 3x3 contingency table; independent draws give p ~ U(0, 1), so
    # p > 1e-3 fails a correct implementation once in 1000 runs (and the ids are fixed: it is stable)
    table = np.zeros((3, 3))
    for a in assignments:
        table[DEFAULT_UBER.source_modes.index(a["source_mode"]),
              DEFAULT_UBER.artifact_profiles.index(a["artifact_profile"])] += 1
    assert stats.chi2_contingency(table).pvalue > 1e-3


def test_identical_salts_would_correlate_the_draws():
    # the test above can fail: if both draws used one hash, "cosmos" (first bin) and "none" (first bin)
    # would coincide far more often than independence allows
    from dhs_gen.utils import categorical_from_hash
    table = np.zeros((3, 3))
    for i in range(2000):
        s = categorical_from_hash(f"t{i}", DEFAULT_UBER.source_probs, salt="same")
        a = categorical_from_hash(f"t{i}", DEFAULT_UBER.artifact_probs, salt="same")
        table[s, a] += 1
    assert stats.chi2_contingency(table).pvalue < 1e-6


def test_deterministic_and_salt_dependent():
    first = [assign_modes(f"id{i}", DEFAULT_UBER) for i in range(200)]
    again = [assign_modes(f"id{i}", DEFAULT_UBER) for i in range(200)]
    assert first == again
    resalted = MixerConfig(DEFAULT_UBER.source_modes, DEFAULT_UBER.source_probs, DEFAULT_UBER.artifact_profiles,
                           DEFAULT_UBER.artifact_probs, salt="uber_v2")
    assert [assign_modes(f"id{i}", resalted) for i in range(200)] != first


def test_zero_weight_is_never_drawn_and_single_mode_always():
    cfg = MixerConfig(["sersic", "hybrid"], [0.0, 1.0], ["strong"], [2.0], salt="s")
    got = {tuple(assign_modes(f"x{i}", cfg).values()) for i in range(500)}
    assert got == {("hybrid", "strong")}


@pytest.mark.parametrize("kwargs, field", [
    ({"source_modes": ["cosmos", "galsim"]}, "source_modes"),
    ({"source_modes": ["cosmos", "cosmos", "deep"]}, "source_modes"),
    ({"source_probs": [0.5, 0.5]}, "source_probs"),
    ({"source_probs": [0.5, -0.1, 0.6]}, "source_probs"),
    ({"source_probs": [0, 0, 0]}, "source_probs"),
    ({"artifact_profiles": ["none", "mild", "extreme"]}, "artifact_profiles"),
    ({"artifact_probs": [1.0, float("nan"), 1.0]}, "artifact_probs"),
    ({"salt": ""}, "salt"),
    ({"source_modes": "cosmos"}, "source_modes"),
])
def test_invalid_configs_name_the_field(kwargs, field):
    base = {"source_modes": ["cosmos", "deep", "hybrid"], "source_probs": [1, 1, 1],
            "artifact_profiles": ["none", "mild", "strong"], "artifact_probs": [1, 1, 1], "salt": "s"}
    with pytest.raises(ConfigError) as info:
        MixerConfig(**{**base, **kwargs})
    assert info.value.field == field and field in str(info.value)
    assert str(pickle.loads(pickle.dumps(info.value))) == str(info.value)
