"""Hard negatives from the real Galaxy Zoo and lens catalogs: exclusion radius, weights, top-k, counts."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from dhs_gen.errors import ConfigError, InvalidValueError
from jobs.catalogs.hardneg import HardNegativeConfig, collect_hard_negatives, hardneg_main
from jobs.catalogs.lens_catalogs import DEFAULT_FILES, read_catalog


def _haversine_arcsec(ra1, dec1, ra2, dec2):
    """Brute-force angular separation (arcsec), written independently of the KD-tree code."""
    r1, d1, r2, d2 = (np.deg2rad(np.asarray(v, float)) for v in (ra1, dec1, ra2, dec2))
    h = np.sin((d2 - d1) / 2) ** 2 + np.cos(d1) * np.cos(d2) * np.sin((r2 - r1) / 2) ** 2
    return np.rad2deg(2 * np.arcsin(np.sqrt(np.clip(h, 0, 1)))) * 3600


def _min_sep_arcsec(ra, dec, ref_ra, ref_dec, chunk=100):
    """Brute-force nearest separation (arcsec) of each position to all references, in chunks."""
    out = []
    for i in range(0, len(ra), chunk):
        out.append(_haversine_arcsec(ra[i:i + chunk, None], dec[i:i + chunk, None], ref_ra[None], ref_dec[None]).min(1))
    return np.concatenate(out)


@pytest.fixture(scope="module")
def real(shared_data):
    return {k: read_catalog(k, shared_data / DEFAULT_FILES[k]).table for k in ("gz2", "lenscat", "slacs")}


def test_real_gz2_negatives_stay_away_from_every_lenscat_entry(real):
    gz, lenscat = real["gz2"], real["lenscat"]
    cfg = HardNegativeConfig()
    table, report = collect_hard_negatives(None, gz, gz, [lenscat, real["slacs"]], cfg)
    src = report["sources"]
    for s in ("ring", "merger"):  # every input row is accounted for
        assert src[s]["rows_in"] == (src[s]["not_selected"] + src[s]["excluded_near_known_lens"]
                                     + src[s]["over_top_k"] + src[s]["selected_out"])
    classes = gz.column("class").to_pylist()
    assert src["ring"]["rows_in"] - src["ring"]["not_selected"] == classes.count("ring")
    # Stripe 82 holds known lenses: the exclusion must have removed some rows, or this test checks nothing
    assert src["ring"]["excluded_near_known_lens"] + src["merger"]["excluded_near_known_lens"] > 0
    assert report["rows_out"] == table.num_rows > 2000

    # brute force on a subset of 300 returned negatives against ALL 32,838 lenscat entries
    ra, dec = np.array(table.column("ra").to_pylist()), np.array(table.column("dec").to_pylist())
    lra, ldec = np.array(lenscat.column("ra").to_pylist()), np.array(lenscat.column("dec").to_pylist())
    pick = np.random.default_rng(0).choice(len(ra), 300, replace=False)
    assert _min_sep_arcsec(ra[pick], dec[pick], lra, ldec).min() > cfg.exclusion_radius_arcsec
    # and the removed ones were really within the radius: GZ2 rings/mergers near lenscat or SLACS, brute force
    sel = [i for i, c in enumerate(gz.column("class").to_pylist()) if c in ("ring", "merger")]
    gra, gdec = np.array(gz.column("ra").to_pylist())[sel], np.array(gz.column("dec").to_pylist())[sel]
    all_ra = np.concatenate([lra, real["slacs"].column("ra").to_numpy()])
    all_dec = np.concatenate([ldec, real["slacs"].column("dec").to_numpy()])
    # only lenses inside Stripe 82 (|dec| < 1.3 deg) can be within 5" of a GZ2 galaxy: cut the brute force there
    strip = np.abs(all_dec) < 1.3
    near = _min_sep_arcsec(gra, gdec, all_ra[strip], all_dec[strip]) <= cfg.exclusion_radius_arcsec
    excluded = src["ring"]["excluded_near_known_lens"] + src["merger"]["excluded_near_known_lens"]
    assert int(near.sum()) == excluded

    # weights as the seed specifies, by source
    w = dict(zip(table.column("hardneg_source").to_pylist(), table.column("weight").to_pylist(), strict=True))
    assert w == {"ring": 2.0, "merger": 1.5}
    assert set(table.column("class").to_pylist()) == {"ring", "merger"}
    assert report["rows_out_by_source"]["ring"] == table.column("hardneg_source").to_pylist().count("ring")


def test_top_k_keeps_the_highest_vote_fractions(real):
    gz = real["gz2"]
    table, report = collect_hard_negatives(ring_catalog=gz, known_lenses=[real["lenscat"]],
                                           config=HardNegativeConfig(top_k_per_source=100))
    assert table.num_rows == 100 and report["sources"]["ring"]["over_top_k"] > 0
    kept = np.array(table.column("rank_score").to_pylist())
    rings = [s for c, s in zip(gz.column("class").to_pylist(), gz.column("class_score").to_pylist(), strict=True)
             if c == "ring"]
    # the kept scores are the 100 largest (exclusion can only remove a few at the top)
    assert kept.min() >= np.sort(rings)[::-1][100 + report["sources"]["ring"]["excluded_near_known_lens"]]


def test_model_false_positives_threshold_weight_and_dedupe():
    rng = np.random.default_rng(3)
    n = 200
    ra, dec = rng.uniform(10, 20, n), rng.uniform(-5, 5, n)
    scores = pa.table({"name": [f"s{i}" for i in range(n)], "ra": ra, "dec": dec,
                       "score": np.linspace(0, 1, n), "label": [1 if i == n - 1 else 0 for i in range(n)]})
    lens = pa.table({"ra": [ra[n - 2]], "dec": [dec[n - 2] + 3.0 / 3600]})      # 3" from the 2nd-best FP
    rings = pa.table({"name": ["r0"], "ra": [ra[n - 3]], "dec": [dec[n - 3] + 0.5 / 3600], "class": ["ring"],
                      "class_score": [0.9], "source_catalog": ["gz2"], "source_row": [7]})
    table, report = collect_hard_negatives(scores, rings, None, lens, HardNegativeConfig(min_score_threshold=0.8))
    expected_selected = int(np.sum(np.linspace(0, 1, n) >= 0.8)) - 1            # minus the labelled lens
    fp = report["sources"]["model_fp"]
    assert fp["not_selected"] == n - expected_selected and fp["excluded_near_known_lens"] == 1
    names = table.column("name").to_pylist()
    assert f"s{n - 1}" not in names and f"s{n - 2}" not in names
    row = table.to_pylist()[names.index(f"s{n - 3}")]
    assert row["sources"] == ["model_fp", "ring"] and row["weight"] == 3.0  # the ring copy merged into the FP
    assert report["duplicates_merged"] == 1 and set(table.column("weight").to_pylist()) == {3.0}


def test_config_validation_and_pickling():
    with pytest.raises(ConfigError, match="min_score_threshold"):
        HardNegativeConfig(min_score_threshold=1.5)
    with pytest.raises(ConfigError, match="top_k_per_source"):
        HardNegativeConfig(top_k_per_source=0)
    err = pickle.loads(pickle.dumps(ConfigError("exclusion_radius_arcsec", -1, "arcsec in [0, 3600]")))
    assert err.value == -1


def test_cli_collect(real, tmp_path, capsys):
    gz_path, lens_path = tmp_path / "gz.parquet", tmp_path / "lens.parquet"
    pq.write_table(real["gz2"], gz_path)
    pq.write_table(real["slacs"], lens_path)
    assert hardneg_main(["collect", "--rings", str(gz_path), "--mergers", str(gz_path), "--known-lenses",
                         str(lens_path), "--out", str(tmp_path / "hn"), "--top-k", "50"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["rows_out"] == pq.read_table(tmp_path / "hn" / "hard_neg_lookup.parquet").num_rows == 100
    assert json.loads((tmp_path / "hn" / "hard_neg_report.json").read_text())["rows_out"] == 100
    # the seed's spelling of the same command (section 8, Stage 3) gives the same table
    assert hardneg_main(["collect", "--ring-catalog", str(gz_path), "--merger-catalog", str(gz_path),
                         "--known-lenses", str(lens_path), "--output-dir", str(tmp_path / "hn2"), "--top-k", "50"]) == 0
    assert pq.read_table(tmp_path / "hn2" / "hard_neg_lookup.parquet").equals(
        pq.read_table(tmp_path / "hn" / "hard_neg_lookup.parquet"))


# ---- the seeds' workflow as written: real files, real commands, exactly as the user runs them ----

def _lenscat_parquet(shared_data, tmp_path):
    from jobs.catalogs.lens_catalogs import catalogs_main

    out = tmp_path / "lenscat.parquet"
    assert catalogs_main(["read", "--kind", "lenscat", "--input", str(shared_data / DEFAULT_FILES["lenscat"]),
                          "--out", str(out)]) == 0
    return out


def _scored_default_anchors(shared_data, tmp_path):
    """`dhs score` output of the real default anchor set (DES hosts have null ra/dec), same schema, no Spark."""
    import torch

    from jobs.anchors.anchor_set import build_default_anchor_set
    from jobs.evaluation.score import score_table
    from jobs.training.model import ModelConfig, build_model

    anchors = tmp_path / "anchors"
    build_default_anchor_set(shared_data, str(anchors), size_pix=32)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = build_model(ModelConfig(arch="resnet_small", width=4)).eval()
    scores = score_table(pq.read_table(anchors / "part-00000.parquet"), model)
    (tmp_path / "scores").mkdir()
    pq.write_table(scores, tmp_path / "scores" / "part-00000.parquet")
    return tmp_path / "scores", scores


def test_cli_collect_scores_with_null_positions_reports_them(shared_data, tmp_path, capsys):
    lens = _lenscat_parquet(shared_data, tmp_path)
    scores_dir, scores = _scored_default_anchors(shared_data, tmp_path)
    n_null = scores.column("ra").null_count
    assert n_null >= 40                                   # the DES LRG hosts have no position
    capsys.readouterr()
    assert hardneg_main(["collect", "--scores", str(scores_dir), "--known-lenses", str(lens),
                         "--out", str(tmp_path / "hn"), "--min-score", "0"]) == 0
    report = json.loads(capsys.readouterr().out)
    fp = report["sources"]["model_fp"]
    labels = scores.column("label").to_pylist()
    no_pos_label0 = sum(1 for r, lab in zip(scores.column("ra").to_pylist(), labels, strict=True)
                        if r is None and lab == 0)
    assert fp["no_position"] == fp["no_position_by_reason"]["null_position"] == no_pos_label0 > 0
    assert fp["not_selected"] == labels.count(1)
    assert fp["rows_in"] == scores.num_rows == (fp["not_selected"] + fp["no_position"] + fp["excluded_near_known_lens"]
                                                + fp["over_top_k"] + fp["selected_out"])
    out = pq.read_table(tmp_path / "hn" / "hard_neg_lookup.parquet")
    assert out.num_rows == report["rows_out"] > 0 and out.column("ra").null_count == 0


def test_catalogs_merge_of_lenscat_with_hardneg_output(shared_data, tmp_path, capsys):
    from jobs.catalogs.lens_catalogs import MERGED_SCHEMA, catalogs_main

    lens = _lenscat_parquet(shared_data, tmp_path)
    gz = tmp_path / "gz2.parquet"
    assert catalogs_main(["read", "--kind", "gz2", "--input", str(shared_data / DEFAULT_FILES["gz2"]),
                          "--out", str(gz)]) == 0
    assert hardneg_main(["collect", "--rings", str(gz), "--mergers", str(gz), "--known-lenses", str(lens),
                         "--out", str(tmp_path / "hn")]) == 0
    hn = tmp_path / "hn" / "hard_neg_lookup.parquet"
    capsys.readouterr()
    assert catalogs_main(["merge", "--input", str(lens), str(hn), "--out", str(tmp_path / "m.parquet")]) == 0
    report = json.loads(capsys.readouterr().out)
    n_lens, n_hn = pq.read_table(lens).num_rows, pq.read_table(hn).num_rows
    assert report["rows_in"] == n_lens + n_hn and report["rows_without_position"] == 0
    assert set(report["columns_filled_null"][str(hn)]) == {"z", "theta_e_arcsec", "lens_type"}
    m = pq.read_table(tmp_path / "m.parquet")
    assert m.schema == MERGED_SCHEMA and sum(m.column("n_members").to_pylist()) == n_lens + n_hn
    # hard negatives keep their class, grade and vote fraction; lenses keep their redshifts
    rows = [r for r in m.to_pylist() if r["source_catalogs"] == ["gz2"]]
    assert rows and {r["class"] for r in rows} == {"ring", "merger"} and all(r["z"] is None for r in rows)
    assert all(r["class_score"] is not None and r["grade"] is not None for r in rows)
    assert m.filter(pc.field("class") == "known_lens").column("z").null_count < 2309


def test_seed_keyword_call_with_paths_and_raw_csv_columns(shared_data, tmp_path):
    """The seed's call, with paths; the known lenses are the raw lenscat CSV (``RA [deg]``, ``DEC [deg]``)."""
    from jobs.catalogs.lens_catalogs import catalogs_main

    gz = tmp_path / "gz2.parquet"
    assert catalogs_main(["read", "--kind", "gz2", "--input", str(shared_data / DEFAULT_FILES["gz2"]),
                          "--out", str(gz)]) == 0
    scores_dir, _ = _scored_default_anchors(shared_data, tmp_path)
    cfg = HardNegativeConfig(min_score_threshold=0.0, top_k_per_source=5000, exclusion_radius_arcsec=5.0)
    table, report = collect_hard_negatives(
        model_scores_path=str(scores_dir), ring_catalog_path=str(gz), merger_catalog_path=str(gz),
        known_lens_path=str(shared_data / DEFAULT_FILES["lenscat"]), output_dir=str(tmp_path / "hard_negatives"),
        config=cfg)
    assert report["n_known_lens_positions"] == 32838
    assert pq.read_table(tmp_path / "hard_negatives" / "hard_neg_lookup.parquet").equals(table)
    assert report["outputs"]["table"].endswith("hard_neg_lookup.parquet")
    # the same as the positional call on tables read from the same files (the old signature)
    lens_parquet = _lenscat_parquet(shared_data, tmp_path)
    old, old_report = collect_hard_negatives(pq.read_table(scores_dir), pq.read_table(gz), pq.read_table(gz),
                                             [pq.read_table(lens_parquet)], cfg)
    assert old.equals(table) and old_report["sources"] == report["sources"]


def test_upper_case_columns_are_found(real, tmp_path, capsys):
    gz, lens = real["gz2"], real["slacs"]
    up = gz.rename_columns([c.upper() for c in gz.column_names])
    lens_up = lens.rename_columns([c.upper() for c in lens.column_names])
    a, _ = collect_hard_negatives(None, gz, None, [lens])
    b, _ = collect_hard_negatives(None, up, None, [lens_up])
    assert a.equals(b) and a.num_rows > 0
    with pytest.raises(InvalidValueError, match="ra"):
        collect_hard_negatives(None, gz.drop(["ra"]), None, [lens])
    with pytest.raises(InvalidValueError, match="not both"):
        collect_hard_negatives(None, gz, None, [lens], ring_catalog_path="x.parquet")
