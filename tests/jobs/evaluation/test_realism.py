"""`dhs realism`: the gates catch arcs 100x too bright or too faint against real DR10 lenses.

The bright/faint copies are built from the paired controls: ``control + k * (injection -
control)`` scales the arc (and its photon noise) by k and leaves host, sky and artifacts alone.
The fast test does this on real DES LRG hosts with analytic arcs (no Spark); the slow one on
stamps written by the real 4a + 4c pipeline on the embedded sky.
"""

import json
import math

import numpy as np
import pyarrow as pa
import pytest

from jobs.evaluation import realism
from jobs.runtime import outputs, storage
from jobs.runtime.schema import ANCHOR_SCHEMA, decode_image, encode_image

_COLUMNS = {
    "task_id": pa.string(), "pair_id": pa.string(), "kind": pa.string(), "label": pa.int8(),
    "cutout_ok": pa.int8(), "image": pa.binary(), "invvar": pa.binary(), "image_shape": pa.list_(pa.int32()),
    "pixscale_arcsec": pa.float64(), "theta_e_arcsec": pa.float64(), "source_mode": pa.string(),
    "artifact_profile": pa.string(), "arc_snr": pa.float64(), "arc_flux_r_nmgy": pa.float64(),
    "psf_fwhm_r_arcsec": pa.float64(),
}


N_INJ = 20


def _write_dataset(rows: list[dict], out) -> str:
    """A committed-looking dataset: one part file and a _manifest.json listing it."""
    storage.write_parquet(pa.Table.from_pylist(rows, schema=pa.schema(list(_COLUMNS.items()))),
                          storage.join(str(out), "part-00000.parquet"))
    storage.write_json(storage.join(str(out), "_manifest.json"), {"stage": "4c_inject", "files": ["part-00000.parquet"]})
    return str(out)


def scaled_copy(src: str, dst, factor: float) -> str:
    """The stamps at ``src`` with every arc multiplied by ``factor`` (via the paired controls)."""
    rows = storage.read_parquet(outputs.dataset_files(src), columns=list(_COLUMNS)).to_pylist()
    ctl = {r["pair_id"]: r for r in rows if r["kind"] == "control" and r["cutout_ok"] == 1}
    out = []
    for r in rows:
        if r["kind"] == "injection" and r["cutout_ok"] == 1 and r["pair_id"] in ctl:
            c = decode_image(ctl[r["pair_id"]]["image"], r["image_shape"]).astype(np.float64)
            i = decode_image(r["image"], r["image_shape"]).astype(np.float64)
            r = {**r, "image": encode_image(c + factor * (i - c))}
        out.append(r)
    return _write_dataset(out, dst)


def _arc(theta_e, angle, flux_g, rng, n=64, pix=0.262):
    """A tangential arc (elongated Gaussian, 0.8" x 0.25") at theta_e (arcsec), g, r, z nmgy; blue (g-r 0.3, r-z 0.2)."""
    c = (n - 1) / 2.0
    yy, xx = np.mgrid[:n, :n]
    x, y = (xx - c) * pix, (yy - c) * pix
    x0, y0 = theta_e * math.cos(angle), theta_e * math.sin(angle)
    t = -math.sin(angle) * (x - x0) + math.cos(angle) * (y - y0)   # along the tangent
    r = math.cos(angle) * (x - x0) + math.sin(angle) * (y - y0)    # along the radius
    shape = np.exp(-0.5 * (t ** 2 / 0.8 ** 2 + r ** 2 / 0.25 ** 2))
    shape /= shape.sum()
    return np.stack([flux_g * k * shape for k in (1.0, 10 ** 0.12, 10 ** 0.2)])


@pytest.fixture(scope="module")
def des_stamps(shared_data, tmp_path_factory):
    """Real DES LRG hosts as controls, + analytic arcs as injections (g flux 0.3-1 nmgy, like real DR10 arcs)."""
    hosts = realism.load_des_hosts(shared_data, 64)
    assert len(hosts) == 46
    rng = np.random.default_rng(0)
    rows = []
    for i, h in enumerate(hosts[:N_INJ]):
        img = h["image"]  # 64 x 64 at 0.262"/pix, the host on the centre
        sigma = 1.4826 * np.median(np.abs(img - np.median(img, axis=(1, 2), keepdims=True)), axis=(1, 2))
        iv = np.broadcast_to((1 / sigma ** 2)[:, None, None], img.shape)
        arc = _arc(rng.uniform(1.0, 2.0), rng.uniform(0, 2 * math.pi), rng.uniform(0.3, 1.0), rng)
        base = {"pair_id": f"p{i}", "cutout_ok": 1, "invvar": encode_image(iv), "image_shape": [3, 64, 64],
                "pixscale_arcsec": 0.262, "theta_e_arcsec": 1.5, "source_mode": ["sersic", "hybrid"][i % 2],
                "artifact_profile": "none", "arc_snr": 0.0, "arc_flux_r_nmgy": 0.0, "psf_fwhm_r_arcsec": 1.2}
        rows.append({**base, "task_id": f"p{i}/control", "kind": "control", "label": 0, "image": encode_image(img)})
        rows.append({**base, "task_id": f"p{i}/inj", "kind": "injection", "label": 1,
                     "image": encode_image(img + arc)})
    return _write_dataset(rows, tmp_path_factory.mktemp("des") / "stamps")


def _gate(result, name):
    return next(g for g in result["gates"] if g["name"] == name)


@pytest.fixture(scope="module")
def anchors(shared_data, tmp_path_factory):
    """An ANCHOR_SCHEMA file of the 6 real DR10 lens-candidate cutouts as they are (101x101, no invvar)."""
    rows = [{"anchor_id": a["name"], "name": a["name"], "label": 1, "class": "candidate",
             "image": encode_image(a["image"]), "invvar": None, "image_shape": list(a["image"].shape),
             "bands": "grz", "pixscale_arcsec": a["pixscale_arcsec"], "provenance": a["provenance"]}
            for a in realism._npz_lens_anchors(shared_data)]
    assert len(rows) == 6
    out = tmp_path_factory.mktemp("anchors") / "anchors.parquet"
    storage.write_parquet(pa.Table.from_pylist(rows, schema=ANCHOR_SCHEMA), str(out))
    return str(out)


def _check_bright_faint(stamps, anchors, shared_data, tmp_path):
    results = {}
    for label, factor in (("orig", 1.0), ("bright", 100.0), ("faint", 0.01)):
        src = stamps if factor == 1.0 else scaled_copy(stamps, tmp_path / f"{label}_stamps", factor)
        results[label] = realism.run_realism(src, anchors, str(tmp_path / label), shared_data_dir=shared_data,
                                             report=factor == 1.0)
    photo = {k: _gate(r, "photometric_flux_ratio") for k, r in results.items()}
    assert photo["orig"]["pass"], photo["orig"]
    assert not photo["bright"]["pass"] and photo["bright"]["value"] > 3.0, photo["bright"]
    assert not photo["faint"]["pass"] and photo["faint"]["value"] < 1 / 3, photo["faint"]
    return results


def test_gates_catch_100x_bright_and_faint_arcs_on_real_hosts(des_stamps, anchors, shared_data, tmp_path):
    results = _check_bright_faint(des_stamps, anchors, shared_data, tmp_path)
    r = results["orig"]
    assert r["n_real"] == 6 and r["n_injected"] == N_INJ
    on_disk = json.loads((tmp_path / "orig" / "realism.json").read_text())
    assert set(on_disk) >= {"domain_auc", "domain_auc_ci", "n_real", "n_injected", "statistics", "gates"}
    assert on_disk["domain_auc_ci"][0] <= on_disk["domain_auc"] <= on_disk["domain_auc_ci"][1]
    for g in on_disk["gates"]:
        assert set(g) >= {"name", "value", "threshold", "pass"}
    # per statistic, overall and per stratum
    assert "source_mode=hybrid" in on_disk["statistics"]["arc_snr"]
    assert "artifact_profile=none" in on_disk["statistics"]["elongation"]
    html = (tmp_path / "orig" / "realism.html").read_text()
    assert "Domain AUC" in html and "realism_gallery.png" in html
    assert (tmp_path / "orig" / "realism_gallery.png").stat().st_size > 10_000


def test_missing_shared_data_is_a_clear_error(des_stamps, tmp_path, monkeypatch):
    monkeypatch.setenv("DHS_SHARED_DATA", str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match="DHS_SHARED_DATA"):
        realism.run_realism(des_stamps, None, str(tmp_path / "r2"))


@pytest.mark.slow
def test_cli_default_anchors(des_stamps, shared_data, tmp_path):
    # no --anchors: the default set is built from the shared data folder
    rc = realism.main(["--stamps", des_stamps, "--out", str(tmp_path / "r"), "--shared-data", str(shared_data)])
    assert rc in (0, 1) and (tmp_path / "r" / "realism.json").is_file()
    r = json.loads((tmp_path / "r" / "realism.json").read_text())
    assert r["n_real"] == 6 and r["n_real_nonlens"] > 40  # DES LRG hosts + DECaLS galaxies


@pytest.mark.slow
def test_gates_on_pipeline_stamps(anchors, shared_data, spark, tmp_path_factory):
    from jobs.runtime.config import load_config
    from jobs.stages import inject, manifest, sky

    base = tmp_path_factory.mktemp("realism_demo")
    sky.main(["--out", str(base / "sky"), "--n-bricks", "2", "--n-lrg", "20", "--size-pix", "600"])
    manifest.run(str(base / "sky" / "parent_sample.parquet"), load_config("demo"), str(base / "m"), 2, spark=spark)
    inject.run(str(base / "m"), str(base / "sky"), str(base / "stamps"), 2, spark=spark)
    results = _check_bright_faint(str(base / "stamps"), anchors, shared_data, base)
    assert math.isfinite(results["orig"]["theta_e_vs_slacs"]["ks_statistic"])
