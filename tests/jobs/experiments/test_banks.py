"""``dhs cosmos-bank`` / ``dhs deep-bank`` on the real data, to a local folder and to real S3 (SeaweedFS).

Oracles: h5py / numpy reading the written banks directly, boto3 reading the S3 object, and the
real catalogs' row counts.
"""

from __future__ import annotations

import io
import json
import uuid

import h5py
import numpy as np
import pytest
from astropy.io import fits

from jobs.experiments.banks import cosmos_bank_main, deep_bank_main


def test_cosmos_bank_cli_local(shared_data, tmp_path, capsys):
    out = tmp_path / "banks" / "cosmos.h5"
    rc = cosmos_bank_main(["--galsim-path", str(shared_data / "cosmos_hst"), "--output", str(out),
                           "--n-sources", "6", "--stamp-size", "32", "--pixel-scale", "0.03", "--seed", "7"])
    assert rc == 0 and "cosmos-bank: wrote 6/6" in capsys.readouterr().out
    catalog_ids = set(fits.getdata(shared_data / "cosmos_hst" / "real_galaxy_catalog_23.5.fits", 1)["IDENT"].tolist())
    with h5py.File(out, "r") as f:
        assert f["images"].shape == (6, 32, 32) and f.attrs["pixscale_arcsec"] == pytest.approx(0.262)
        assert set(f["catalog_id"][:].tolist()) <= catalog_ids
        assert np.all(f["hlr_arcsec"][:] > 0) and np.all((f["clumpiness"][:] >= 0) & (f["clumpiness"][:] <= 1))
    manifest = json.loads((tmp_path / "banks" / "cosmos.h5.manifest.json").read_text())
    assert manifest["stage"] == "gen5_cosmos_bank" and manifest["config"]["seed"] == "7"
    assert manifest["rows_written"] == 6 and manifest["rows_in"] == 6 + sum(manifest["rejected_by_reason"].values())


def test_cosmos_bank_cli_rejects_a_wrong_pixel_scale(shared_data, tmp_path):
    with pytest.raises(ValueError, match="pixel_scale"):
        cosmos_bank_main(["--galsim-path", str(shared_data / "cosmos_hst"), "--output", str(tmp_path / "x.h5"),
                          "--pixel-scale", "0.05"])
    assert not (tmp_path / "x.h5").exists()  # nothing half-written
    with pytest.raises(SystemExit):
        cosmos_bank_main(["--output", str(tmp_path / "x.h5")])  # --galsim-path is required


def test_deep_bank_cli_to_s3(shared_data, s3_env, capsys):
    uri = f"s3://{s3_env.bucket}/banks-{uuid.uuid4().hex[:8]}/deep.npz"
    rc = deep_bank_main(["--fits-dir", str(shared_data / "hsc"), "--output", uri, "--n-sources", "4",
                         "--stamp-size", "48"])
    assert rc == 0 and "deep-bank: wrote 4/4" in capsys.readouterr().out
    key = uri.split("/", 3)[3]
    body = s3_env.client().get_object(Bucket=s3_env.bucket, Key=key)["Body"].read()  # boto3 directly
    with np.load(io.BytesIO(body), allow_pickle=False) as z:
        assert z["images"].shape == (4, 3, 48, 48) and list(z["bands"]) == ["g", "r", "z"]
    manifest = json.loads(s3_env.client().get_object(Bucket=s3_env.bucket, Key=key + ".manifest.json")["Body"].read())
    assert manifest["stage"] == "gen6_deep_bank" and manifest["extra"]["n_written"] == 4
