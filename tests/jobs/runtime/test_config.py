"""Experiment config: presets load, bad values fail before Spark with field, value and allowed range."""

import pickle

import pytest

from dhs_gen.errors import ConfigError
from jobs.runtime.config import CONFIG_DIR, InjectionConfig, load_config

BANKS = {"source": {"cosmos_bank": "/data/cosmos.h5", "deep_bank": "/data/deep.npz"}}


@pytest.mark.parametrize("preset", sorted(p.stem for p in CONFIG_DIR.glob("*.yaml")))
def test_every_preset_validates(preset):
    cfg = load_config(preset, BANKS)
    assert isinstance(cfg, InjectionConfig)
    assert cfg.config_hash() == load_config(preset, BANKS).config_hash()


def test_generations_are_configurations_of_one_path():
    g7a, g7b, g7c = (load_config(n) for n in ("gen7a", "gen7b", "gen7c"))
    assert (g7a.source.hybrid_clumps, g7a.source.hybrid_gradient) == (False, 0.0)
    assert (g7b.source.hybrid_clumps, g7b.source.hybrid_gradient) == (True, 0.0)
    assert g7c.source.hybrid_clumps and g7c.source.hybrid_gradient > 0
    assert [load_config(f"gen8{v}").artifact_profile for v in "abc"] == ["none", "mild", "strong"]
    prime = load_config("gen5prime", BANKS)
    assert prime.paired_controls and prime.hardneg_shuffle and prime.train["core_dropout_p"] > 0
    assert not load_config("gen5", BANKS).paired_controls


@pytest.mark.parametrize("override, field, fragment", [
    ({"psf_model": "moffat", "moffat_beta": None}, "moffat_beta", "required"),
    ({"moffat_beta": 0.5}, "moffat_beta", "(1, 100]"),
    ({"stamp_size_pix": 4}, "stamp_size_pix", "[8, 512]"),
    ({"engine": "galsim"}, "engine", "numpy"),
    ({"split_fractions": [0.5, 0.5, 0.5]}, "split_fractions", "summing to 1"),
    ({"lens": {"theta_e_arcsec": [1.0, -2.0]}}, "lens.theta_e_arcsec[]", "(0, 10]"),
    ({"source": {"mag_r": [25, 22]}}, "source.mag_r", "low must be <= high"),
    ({"source": {"mode": "cosmos"}}, "source.cosmos_bank", "required"),
    ({"artifact_profile": "extreme"}, "artifact_profile", "none"),
    ({"bogus_field": 1}, "bogus_field", "unknown field"),
])
def test_bad_values_name_field_value_and_range(override, field, fragment):
    with pytest.raises(ConfigError) as info:
        load_config("base", override)
    assert info.value.field == field
    assert fragment in str(info.value)
    again = pickle.loads(pickle.dumps(info.value))
    assert str(again) == str(info.value)


def test_unknown_preset_lists_presets():
    with pytest.raises(ConfigError, match="gen7"):
        load_config("gen99")


@pytest.mark.parametrize("override, field, words", [
    ({"paired_controls": "false"}, "paired_controls", "a boolean"),
    ({"source": {"hybrid_gradient": "0.15"}}, "source.hybrid_gradient", "a number"),
    ({"n_replicates": 1.5}, "n_replicates", "an integer"),
    ({"n_replicates": True}, "n_replicates", "an integer"),
    ({"source": ["sersic"]}, "source", "a mapping"),
    ({"lens": {"theta_e_arcsec": 1.2}}, "lens.theta_e_arcsec", "a list"),
])
def test_config_types_are_enforced_before_spark(override, field, words):
    with pytest.raises(ConfigError) as err:
        load_config("demo", override)
    assert err.value.field == field and words in str(err.value)


def test_empty_broken_and_cyclic_yaml_are_config_errors(tmp_path):
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    with pytest.raises(ConfigError, match="empty"):
        load_config(str(empty))
    broken = tmp_path / "broken.yaml"
    broken.write_text("seed: 1\nlens: [1.0, 2.0\nstamp_size_pix: 64\n")
    with pytest.raises(ConfigError, match="line 3") as err:
        load_config(str(broken))
    assert str(broken) in str(err.value)
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    a.write_text(f"extends: {b}\nseed: 1\n")
    b.write_text(f"extends: {a}\nseed: 2\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_config(str(a))


def test_artifact_rates_are_config_and_reach_the_renderer():
    import numpy as np

    from jobs.stages.render_row import apply_artifacts

    never = load_config("demo", {"artifact_overrides": {"strong": {"cosmic_rate": 0.0, "sat_rate": 0.0}}})
    always = load_config("demo", {"artifact_overrides": {"strong": {"cosmic_rate": 1.0}}})
    stamp = np.random.default_rng(0).normal(0, 0.01, (3, 32, 32))
    hits = [apply_artifacts(stamp, "strong", f"p{i}", always)[1]["cosmic_ray"] is not None for i in range(10)]
    misses = [apply_artifacts(stamp, "strong", f"p{i}", never)[1]["cosmic_ray"] is not None for i in range(10)]
    assert all(hits) and not any(misses)


@pytest.mark.parametrize("overrides, field", [
    ({"gentle": {"cosmic_rate": 0.1}}, "artifact_overrides"),
    ({"mild": {"cosmic_rat": 0.1}}, "artifact_overrides.mild.cosmic_rat"),
    ({"mild": {"cosmic_rate": 2.0}}, "artifact_overrides.mild.cosmic_rate"),
])
def test_bad_artifact_overrides_name_the_field(overrides, field):
    with pytest.raises(ConfigError) as err:
        load_config("demo", {"artifact_overrides": overrides})
    assert err.value.field == field


def test_gen7_clump_knobs_are_config_and_validated():
    cfg = load_config("gen7", {"source": {"hybrid_clump_flux_frac": [0.1, 0.2], "hybrid_clump_sigma_tpix": [1, 3]}})
    assert cfg.source.hybrid_clump_flux_frac == (0.1, 0.2) and cfg.source.hybrid_clump_sigma_tpix == (1.0, 3.0)
    with pytest.raises(ConfigError) as err:
        load_config("gen7", {"source": {"hybrid_clump_flux_frac": [0.3, 0.2]}})
    assert err.value.field == "source.hybrid_clump_flux_frac"
