"""Catalog readers on the real catalogs, malformed-row reporting, and the cross-catalog merge."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from astropy import units as u
from astropy.coordinates import SkyCoord
from astropy.io import fits

from dhs_gen.errors import ChoiceError
from jobs.catalogs.lens_catalogs import (
    CATALOG_SCHEMA,
    DEFAULT_FILES,
    MERGED_SCHEMA,
    catalogs_main,
    merge_catalogs,
    radec_from_jname,
    read_catalog,
)


def _data_lines(path) -> int:
    """Non-empty, non-comment lines minus the header line: the catalog's row count, counted independently."""
    with open(path) as f:
        lines = [ln for ln in f if ln.strip()]
    return sum(1 for ln in lines[1:] if not ln.lstrip().startswith("#"))


@pytest.mark.parametrize("kind", ["lenscat", "slacs", "stein2021_training", "stein2021_candidates", "zoobot_rings"])
def test_text_readers_account_for_every_line(shared_data, kind):
    path = shared_data / DEFAULT_FILES[kind]
    res = read_catalog(kind, path)
    assert res.table.schema == CATALOG_SCHEMA
    assert res.rows_in == _data_lines(path) == res.table.num_rows + res.rejects.num_rows
    ra, dec = res.table.column("ra").to_numpy(), res.table.column("dec").to_numpy()
    assert np.all((ra >= 0) & (ra < 360) & (dec >= -90) & (dec <= 90))


def test_lenscat_grading_maps_to_class(shared_data):
    path = shared_data / DEFAULT_FILES["lenscat"]
    df = pd.read_csv(path, dtype=str, keep_default_na=False)  # independent parse
    t = read_catalog("lenscat", path).table.to_pandas()
    assert (t["class"] == "known_lens").sum() == (df["grading"] == "confident").sum() == 2309
    assert (t["class"] == "candidate").sum() == (df["grading"] == "probable").sum()
    numeric_z = pd.to_numeric(df["zlens"], errors="coerce")
    # 12 rows say zlens = 0: a placeholder, not a lens at z = 0 -> null like the other unknowns
    assert t["z"].notna().sum() == (numeric_z > 0).sum()
    np.testing.assert_allclose(t["ra"].to_numpy(), df["RA [deg]"].astype(float).to_numpy())
    # line numbers: row k of the data is line k + 2 (1-based, after the header)
    assert t["source_row"].tolist() == list(range(2, len(df) + 2))


def test_slacs_theta_e_and_redshift(shared_data):
    path = shared_data / DEFAULT_FILES["slacs"]
    # independent parse: columns 4 and 8 of the '#' header are zd and theta_Ein
    zd, theta_ein = np.loadtxt(path, comments="#", usecols=(3, 7), unpack=True)
    t = read_catalog("slacs", path).table.to_pandas()
    assert len(t) == 59 and set(t["class"]) == {"known_lens"}
    np.testing.assert_allclose(t["theta_e_arcsec"], theta_ein)
    np.testing.assert_allclose(t["z"], zd)
    # SLACS Einstein radii are 0.7-2" (Bolton+2008; Sonnenfeld 2024 table): a unit check
    assert 0.5 < t["theta_e_arcsec"].min() and t["theta_e_arcsec"].max() < 2.5


def test_stein_candidates_grades_and_z(shared_data):
    path = shared_data / DEFAULT_FILES["stein2021_candidates"]
    df = pd.read_csv(path, sep="\t")
    t = read_catalog("stein2021_candidates", path).table.to_pandas()
    assert set(t["class"]) == {"candidate"}
    assert t["grade"].value_counts().to_dict() == df["grade"].value_counts().to_dict()
    assert t["z"].notna().sum() == (df["z_spec"] > 0).sum()  # -99 sentinel -> null


def test_zoobot_jname_parse_matches_astropy(shared_data):
    path = shared_data / DEFAULT_FILES["zoobot_rings"]
    t = read_catalog("zoobot_rings", path).table.to_pandas()
    df = pd.read_csv(path)
    assert (t["class"] == "ring").sum() == (df["ring"] == 1).sum()
    names = t["name"].tolist()
    # independent sexagesimal parse by astropy: 'J000411.19+020924.0' -> '00h04m11.19s +02d09m24.0s'
    text = []
    for n in names:
        p = max(n.find("+"), n.find("-"))
        ra, dec = n[1:p], n[p:]
        text.append(f"{ra[:2]}h{ra[2:4]}m{ra[4:]}s {dec[:3]}d{dec[3:5]}m{dec[5:]}s")
    ref = SkyCoord(text, frame="icrs")
    ours = SkyCoord(t["ra"].to_numpy() * u.deg, t["dec"].to_numpy() * u.deg)
    # 1e-6" = float64 rounding of degrees (the names carry 0.01 s / 0.1" precision)
    assert ours.separation(ref).arcsec.max() < 1e-6


def test_jname_errors_name_the_value():
    with pytest.raises(ValueError, match="J246000"):
        radec_from_jname("J246000.00+000000.0")
    with pytest.raises(ValueError, match="jname"):
        radec_from_jname("NGC 1234")


def test_gz2_classes_follow_the_vote_rule(shared_data):
    path = shared_data / DEFAULT_FILES["gz2"]
    with fits.open(path) as hdul:
        d = hdul[1].data
        n_rows = len(d)
        odd = np.asarray(d["t06_odd_a14_yes_fraction"], float)
        nvote = np.asarray(d["t06_odd_a14_yes_count"], float)
        ring = np.asarray(d["t08_odd_feature_a19_ring_fraction"], float)
        merger = np.maximum(d["t08_odd_feature_a24_merger_fraction"], d["t08_odd_feature_a21_disturbed_fraction"])
    res = read_catalog("gz2", path)
    t = res.table.to_pandas()
    assert res.rows_in == n_rows == 19761 and res.rejects.num_rows == 0
    is_odd = (odd >= 0.223) & (nvote >= 5)
    assert (t["class"] == "ring").to_numpy().tolist() == (is_odd & (ring >= 0.5)).tolist()
    assert (t["class"] == "merger").sum() == int(np.sum(is_odd & (ring < 0.5) & (merger >= 0.5)))
    assert (t["class"] == "ring").sum() > 1000 and (t["class"] == "merger").sum() > 1000
    # units: Stripe 82 is the 2.5 deg strip |dec| < 1.27 deg; RA in degrees over the whole circle
    assert np.abs(t["dec"]).max() < 1.27 and t["ra"].max() > 300


def test_malformed_rows_are_reported_with_line_numbers(shared_data, tmp_path):
    real = (shared_data / DEFAULT_FILES["lenscat"]).read_text().splitlines()
    bad = [
        "BAD1,abc,1.0,-,galaxy,confident,ref",          # line 4: RA not a number
        "BAD2,360.0,1.0,-,galaxy,confident,ref",        # line 5: RA = 360 is outside [0, 360)
        "BAD3,10.0,-91.0,-,galaxy,probable,ref",        # line 6: Dec < -90
        "BAD4,10.0,1.0,-,galaxy",                       # line 7: missing fields
        "BAD5,10.0,1.0,-,galaxy,maybe,ref",             # line 8: unknown grading
        "BAD6,nan,1.0,-,galaxy,confident,ref",          # line 9: NaN
    ]
    path = tmp_path / "lenscat_bad.csv"
    path.write_text("\n".join(real[:3] + bad + real[3:5]) + "\n")
    res = read_catalog("lenscat", path)
    assert res.rows_in == 10 and res.table.num_rows == 4
    rejects = res.rejects.to_pylist()
    assert [r["line"] for r in rejects] == [4, 5, 6, 7, 8, 9]
    assert "ra" in rejects[0]["reason"] and "360" in rejects[1]["reason"] and "-91" in rejects[2]["reason"]
    assert res.table.column("source_row").to_pylist() == [2, 3, 10, 11]
    with pytest.raises(ChoiceError, match="kind"):
        read_catalog("simbad", path)


def _cat(rows):
    base = {"z": None, "theta_e_arcsec": None, "grade": None, "class_score": None, "lens_type": None}
    return pd.DataFrame([{**base, **r} for r in rows])


def _table(rows):
    import pyarrow as pa

    return pa.Table.from_pandas(_cat(rows)[CATALOG_SCHEMA.names], schema=CATALOG_SCHEMA, preserve_index=False)


def test_merge_rule_keeps_most_confident_and_fills_known_values():
    arcsec = 1 / 3600.0
    slacs = _table([{"name": "S1", "ra": 10.0, "dec": 10.0, "theta_e_arcsec": 1.2, "class": "known_lens",
                     "source_catalog": "slacs", "source_row": 2}])
    lenscat = _table([
        {"name": "L1", "ra": 10.0, "dec": 10.0 + 1.5 * arcsec, "z": 0.3, "class": "candidate",
         "source_catalog": "lenscat", "source_row": 5},
        {"name": "L2", "ra": 10.0, "dec": 10.0 + 4.0 * arcsec, "class": "candidate",   # 2.5" from L1: separate
         "source_catalog": "lenscat", "source_row": 6},
        {"name": "W1", "ra": 359.9997, "dec": 0.0, "class": "candidate", "source_catalog": "lenscat",
         "source_row": 7},
    ])
    gz = _table([
        {"name": "G1", "ra": 10.0 + arcsec / np.cos(np.deg2rad(10)), "dec": 10.0, "class": "ring",
         "class_score": 0.9, "source_catalog": "gz2", "source_row": 1},
        {"name": "W2", "ra": 0.0002, "dec": 0.0, "class": "merger", "source_catalog": "gz2", "source_row": 2},
    ])
    m = merge_catalogs([gz, lenscat, slacs], radius_arcsec=2.0)
    assert m.schema == MERGED_SCHEMA
    rows = {r["name"]: r for r in m.to_pylist()}
    assert set(rows) == {"S1", "L2", "W1"}
    s1 = rows["S1"]
    assert s1["class"] == "known_lens" and s1["theta_e_arcsec"] == 1.2 and s1["z"] == 0.3
    assert s1["source_catalogs"] == ["gz2", "lenscat", "slacs"] and s1["n_members"] == 3
    # across RA = 0: 0.0005 deg = 1.8" apart at the equator -> one object, the candidate wins over the merger
    assert rows["W1"]["source_catalogs"] == ["gz2", "lenscat"] and rows["W1"]["class"] == "candidate"


def test_merge_real_slacs_into_lenscat_matches_brute_force(shared_data):
    slacs = read_catalog("slacs", shared_data / DEFAULT_FILES["slacs"]).table
    lenscat = read_catalog("lenscat", shared_data / DEFAULT_FILES["lenscat"]).table
    m = merge_catalogs([slacs, lenscat]).to_pandas()
    # independent: astropy nearest-neighbour separations of each SLACS lens to lenscat
    c1 = SkyCoord(slacs.column("ra").to_numpy() * u.deg, slacs.column("dec").to_numpy() * u.deg)
    c2 = SkyCoord(lenscat.column("ra").to_numpy() * u.deg, lenscat.column("dec").to_numpy() * u.deg)
    _, sep, _ = c1.match_to_catalog_sky(c2)
    n_matched = int(np.sum(sep.arcsec <= 2.0))
    with_slacs = m[m["source_catalogs"].map(lambda s: "slacs" in s)]
    assert len(with_slacs) == 59
    assert int(with_slacs["source_catalogs"].map(lambda s: "lenscat" in s).sum()) == n_matched
    assert set(with_slacs["class"]) == {"known_lens"} and with_slacs["theta_e_arcsec"].notna().all()


def test_cli_read_and_merge(shared_data, tmp_path, capsys):
    out = tmp_path / "zoo.parquet"
    assert catalogs_main(["read", "--kind", "zoobot_rings", "--input",
                          str(shared_data / DEFAULT_FILES["zoobot_rings"]), "--out", str(out)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["rows_in"] == 470 == report["rows_out"] + report["rows_rejected"]
    assert pq.read_table(out).num_rows == 470 and (tmp_path / "zoo.rejects.parquet").exists()
    merged = tmp_path / "merged.parquet"
    assert catalogs_main(["merge", "--input", str(out), str(out), "--out", str(merged)]) == 0
    # the same catalog twice: every object merges with its copy
    assert pq.read_table(merged).num_rows <= 470
    assert set(map(len, pq.read_table(merged).column("source_catalogs").to_pylist())) == {1}


def test_gz2_reader_reads_gzip_bytes(shared_data, tmp_path):
    # the reader must not depend on the file name: an uncompressed copy reads the same
    raw = tmp_path / "gz2.fits"
    raw.write_bytes(gzip.decompress((shared_data / DEFAULT_FILES["gz2"]).read_bytes()))
    assert read_catalog("gz2", raw).table.num_rows == 19761


def test_an_unterminated_quote_is_one_rejected_line_not_the_rest_of_the_file(shared_data, tmp_path):
    real = (shared_data / DEFAULT_FILES["lenscat"]).read_text().splitlines()
    data = real[1:19]                                    # 18 real data lines
    data[4] = data[4].replace(",", ',"', 1)              # line 6: a quote that never closes
    path = tmp_path / "lenscat_quote.csv"
    path.write_text("\n".join([real[0], *data]) + "\n")
    res = read_catalog("lenscat", path)
    assert res.rows_in == 18                             # every physical line is a row or a reject
    assert res.table.num_rows + res.rejects.num_rows == 18
    assert [r["line"] for r in res.rejects.to_pylist()] == [6]


def test_cli_merge_raw_lenscat_csv_with_upper_case_and_positionless_tables(shared_data, tmp_path, capsys):
    """Inputs exactly as they come: the raw lenscat CSV (``RA [deg]``), an upper-case FITS-like table,
    a table whose rows lack positions; missing columns are null, positionless rows counted."""
    import pyarrow as pa

    from jobs.cli import main as dhs_main

    raw = shared_data / DEFAULT_FILES["lenscat"]
    slacs = read_catalog("slacs", shared_data / DEFAULT_FILES["slacs"]).table
    upper = tmp_path / "slacs_upper.parquet"
    pq.write_table(slacs.rename_columns([c.upper() for c in slacs.column_names]), upper)
    nopos = tmp_path / "nopos.parquet"
    pq.write_table(pa.table({"name": ["a", "b", "c"], "ra": [None, 10.0, float("nan")], "dec": [1.0, 2.0, 3.0]}),
                   nopos)
    out = tmp_path / "m.parquet"
    assert catalogs_main(["merge", "--input", str(raw), str(upper), str(nopos), "--out", str(out)]) == 0
    report = json.loads(capsys.readouterr().out)
    n_raw = len(pd.read_csv(raw))
    assert report["rows_in"] == n_raw + 59 + 3
    assert report["rows_without_position_by_reason"] == {"null_position": 1, "non_finite_position": 1}
    assert report["columns_filled_null"][str(upper)] == []
    assert "class" in report["columns_filled_null"][str(raw)]
    m = pq.read_table(out)
    assert m.schema == MERGED_SCHEMA and sum(m.column("n_members").to_pylist()) == n_raw + 59 + 1
    # SLACS rows (upper-case columns) kept their class and Einstein radii
    assert m.filter(pa.compute.field("class") == "known_lens").num_rows >= 59
    # a table without ra/dec is a user error: one `error:` line, exit 2
    bad = tmp_path / "bad.parquet"
    pq.write_table(pa.table({"name": ["x"]}), bad)
    assert dhs_main(["catalogs", "merge", "--input", str(bad), "--out", str(tmp_path / "b.parquet")]) == 2
    assert "error:" in capsys.readouterr().err
