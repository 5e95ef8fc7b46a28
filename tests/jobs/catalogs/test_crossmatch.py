"""DR10 brick cross-match against the real LRG sample, real cutouts and astropy's WCS; sky matching."""

from __future__ import annotations

import glob
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from astropy import units as u
from astropy.coordinates import SkyCoord, search_around_sky
from astropy.io import fits
from astropy.wcs import WCS

from jobs.catalogs.crossmatch import (
    crossmatch_bricks,
    friends_of_friends,
    match_within,
    nearest_within,
    read_footprint,
)
from jobs.catalogs.lens_catalogs import catalogs_main


def _tan_wcs(ra_c, dec_c):
    """Independent DR10 brick WCS (legacypipe wcs_for_brick): 3600 px, 0.262"/pix, CRPIX 1800.5, RA to the left."""
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = [ra_c, dec_c]
    w.wcs.crpix = [1800.5, 1800.5]
    w.wcs.cd = [[-0.262 / 3600, 0], [0, 0.262 / 3600]]
    return w


def test_reproduces_brickname_of_all_real_lrgs(shared_data):
    lrg = pq.read_table(shared_data / "dr10" / "phase3_lrg_parent_sample.parquet", columns=["RA", "DEC", "BRICKNAME"])
    out = crossmatch_bricks(pa.table({"ra": lrg.column("RA"), "dec": lrg.column("DEC")}))
    assert out.num_rows == 6826
    assert out.column("brickname").to_pylist() == [str(n).strip() for n in lrg.column("BRICKNAME").to_pylist()]
    x, y = out.column("brick_x_pix").to_numpy(), out.column("brick_y_pix").to_numpy()
    # a 0.25 deg brick is 3435 px at 0.262"/pix, centred in the 3600 px coadd: pixels within [82, 3518]
    assert x.min() > 80 and x.max() < 3520 and y.min() > 80 and y.max() < 3520
    # pixel positions vs astropy's WCS built here from the brick centre, on a subset of 200 rows
    rows = np.random.default_rng(0).choice(6826, 200, replace=False)
    for i in rows:
        w = _tan_wcs(out.column("brick_ra")[i].as_py(), out.column("brick_dec")[i].as_py())
        px, py = w.all_world2pix(lrg.column("RA")[i].as_py(), lrg.column("DEC")[i].as_py(), 0)
        # 1e-6 pix: float64 rounding of the projection (1e-6 pix = 2.6e-7 arcsec)
        assert abs(px - x[i]) < 1e-6 and abs(py - y[i]) < 1e-6


def test_reproduces_real_cutout_bricknames(shared_data):
    files = sorted(glob.glob(str(shared_data / "dr10" / "cutouts" / "*.npz")))
    assert len(files) == 6
    meta = [np.load(f, allow_pickle=False) for f in files]
    out = crossmatch_bricks(pa.table({"ra": [float(m["meta_ra"]) for m in meta],
                                      "dec": [float(m["meta_dec"]) for m in meta]}))
    assert out.column("brickname").to_pylist() == [str(m["meta_brickname"]) for m in meta]


def test_real_brick_row_centre_and_footprint_flag(shared_data):
    path = shared_data / "decam" / "survey-bricks.fits.gz"
    with fits.open(path) as hdul:
        row = hdul[1].data[0]
        name, ra_c, dec_c = str(row["brickname"]), float(row["ra"]), float(row["dec"])
        ra1, ra2, dec1, dec2 = (float(row[k]) for k in ("ra1", "ra2", "dec1", "dec2"))
    assert read_footprint(str(path)) == {name}
    rng = np.random.default_rng(1)
    ra = np.concatenate([[ra_c], rng.uniform(ra1, ra2, 50), [ra_c + 1.0, 10.0]])
    dec = np.concatenate([[dec_c], rng.uniform(dec1, dec2, 50), [dec_c, -20.0]])
    out = crossmatch_bricks(pa.table({"ra": ra, "dec": dec, "name": [f"o{i}" for i in range(len(ra))]}),
                            footprint={name})
    assert out.num_rows == len(ra) and out.column("name").to_pylist()[-1] == f"o{len(ra) - 1}"  # nothing dropped
    names = out.column("brickname").to_pylist()
    assert names[:51] == [name] * 51 and name not in names[51:]
    assert out.column("in_footprint").to_pylist() == [True] * 51 + [False, False]
    # the real table's centre maps to (3600 + 1) / 2 in 1-based FITS pixels
    assert out.column("brick_ra")[0].as_py() == pytest.approx(ra_c, abs=1e-9)
    x0, y0 = out.column("brick_x_pix")[0].as_py(), out.column("brick_y_pix")[0].as_py()
    assert x0 + 1 == pytest.approx(1800.5, abs=1e-6) and y0 + 1 == pytest.approx(1800.5, abs=1e-6)
    w = _tan_wcs(ra_c, dec_c)
    px, py = w.all_world2pix(ra[:51], dec[:51], 0)
    np.testing.assert_allclose(out.column("brick_x_pix").to_numpy()[:51], px, atol=1e-6)
    np.testing.assert_allclose(out.column("brick_y_pix").to_numpy()[:51], py, atol=1e-6)


def test_empty_catalog():
    out = crossmatch_bricks(pa.table({"ra": pa.array([], pa.float64()), "dec": pa.array([], pa.float64())}))
    assert out.num_rows == 0 and "brickname" in out.column_names


def test_match_within_agrees_with_astropy():
    rng = np.random.default_rng(2)
    ra1, dec1 = rng.uniform(359.5, 360.5, 400) % 360, rng.uniform(-0.5, 0.5, 400)
    ra2, dec2 = rng.uniform(359.5, 360.5, 400) % 360, rng.uniform(-0.5, 0.5, 400)
    i1, i2, sep = match_within(ra1, dec1, ra2, dec2, 60.0)
    c1, c2 = SkyCoord(ra1 * u.deg, dec1 * u.deg), SkyCoord(ra2 * u.deg, dec2 * u.deg)
    j1, j2, d2, _ = search_around_sky(c1, c2, 60 * u.arcsec)
    assert sorted(zip(i1.tolist(), i2.tolist(), strict=True)) == sorted(zip(j1.tolist(), j2.tolist(), strict=True))
    assert len(i1) > 10  # the test has pairs to check, some across RA = 0
    order = np.lexsort((j2, j1))
    ref = dict(zip(zip(j1[order].tolist(), j2[order].tolist(), strict=True), d2.arcsec[order], strict=True))
    # 1e-6 arcsec: float64 chord -> angle conversion at < 1 arcmin
    assert max(abs(ref[(a, b)] - s) for a, b, s in zip(i1, i2, sep, strict=True)) < 1e-6
    idx, nsep = nearest_within(ra1, dec1, ra2, dec2, 60.0)
    k, d, _ = c1.match_to_catalog_sky(c2)
    hit = d.arcsec <= 60
    assert np.array_equal(idx >= 0, hit) and np.array_equal(idx[hit], k[hit])


def test_friends_of_friends_chains():
    a = 1 / 3600
    ra = np.array([0.0, 1.5 * a, 3.0 * a, 10.0, 10.0])
    dec = np.array([0.0, 0.0, 0.0, 0.0, 3.0 * a])
    assert friends_of_friends(ra, dec, 2.0).tolist() == [0, 0, 0, 1, 2]


def test_cli_crossmatch(shared_data, tmp_path, capsys):
    cat = tmp_path / "cat.parquet"
    pq.write_table(pa.table({"name": ["a", "b"], "ra": [244.75, 10.0], "dec": [12.0, -5.0]}), cat)
    out = tmp_path / "x.parquet"
    assert catalogs_main(["crossmatch", "--catalog", str(cat), "--out", str(out), "--footprint",
                          str(shared_data / "decam" / "survey-bricks.fits.gz")]) == 0
    report = json.loads(capsys.readouterr().out)
    outside = str(tmp_path / "x_outside_footprint.parquet")
    assert report == {"rows_in": 2, "rows_out": 1, "in_footprint": 1, "outside_footprint": 1, "no_position": 0,
                      "bricks": 2, "outside_file": outside}
    # filtered to the footprint, the other row kept beside it: nothing lost
    assert pq.read_table(out).column("brickname").to_pylist() == ["2447p120"]
    assert pq.read_table(outside).column("name").to_pylist() == ["b"]
    # the seed's form: --brick-metadata and --output-dir
    assert catalogs_main(["crossmatch", "--catalog", str(cat), "--brick-metadata",
                          str(shared_data / "decam" / "survey-bricks.fits.gz"), "--output-dir", str(tmp_path / "d")]) == 0
    assert pq.read_table(tmp_path / "d" / "crossmatched.parquet").column("name").to_pylist() == ["a"]


def test_the_command_on_the_real_parent_sample_as_given(shared_data, tmp_path, capsys):
    """``dhs catalogs crossmatch`` on the real file, upper-case RA/DEC/BRICKNAME and all (no renaming)."""
    import json

    from jobs import cli

    src = shared_data / "dr10" / "phase3_lrg_parent_sample.parquet"
    out = tmp_path / "x.parquet"
    assert cli.main(["catalogs", "crossmatch", "--catalog", str(src), "--out", str(out)]) == 0
    summary = json.loads(capsys.readouterr().out)
    t = pq.read_table(out)
    assert [c for c in t.column_names if c.lower() == "brickname"] == ["brickname"]   # one brick column
    given = pq.read_table(src, columns=["BRICKNAME"]).column(0).to_pylist()
    assert t.column("brickname").to_pylist() == [str(n).strip() for n in given]
    assert t.column("RA").to_pylist() == pq.read_table(src, columns=["RA"]).column(0).to_pylist()
    assert summary["rows_in"] == summary["rows_out"] == summary["in_footprint"] == 6826


def test_a_csv_footprint_and_rows_without_position(tmp_path):
    cat = tmp_path / "c.csv"
    cat.write_text("Ra,Dec\n150.1,2.2\n,\n10.0,95.0\n")
    fp = tmp_path / "fp.csv"
    fp.write_text("BRICKNAME\n1501p022\n")
    from jobs.catalogs.crossmatch import crossmatch_file

    counts = crossmatch_file(str(cat), str(tmp_path / "o.parquet"), str(fp))
    outside = str(tmp_path / "o_outside_footprint.parquet")
    assert counts == {"rows_in": 3, "rows_out": 1, "in_footprint": 1, "outside_footprint": 0, "no_position": 2,
                      "bricks": 1, "outside_file": outside}
    assert pq.read_table(tmp_path / "o.parquet").column("brickname").to_pylist() == ["1501p022"]
    assert pq.read_table(outside).column("brickname").to_pylist() == [None, None]
