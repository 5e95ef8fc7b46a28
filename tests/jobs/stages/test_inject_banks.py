"""4c with real-galaxy sources: Gen5 COSMOS and Gen6 deep HSC banks built from the real data."""

import numpy as np
import pytest

from jobs.experiments.demo import build_banks
from jobs.runtime.config import load_config
from jobs.runtime.schema import decode_image
from jobs.stages import manifest, sky
from jobs.stages.inject import inject_rows


@pytest.fixture(scope="module")
def bank_overrides(shared_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("banks")
    import os

    os.environ.setdefault("DHS_SHARED_DATA", str(shared_data))
    overrides = build_banks(out, shared_data)
    assert overrides, "banks were not built from the real data"
    return overrides


def test_cosmos_and_deep_templates_are_lensed_with_exact_photometry(bank_overrides, tmp_path):
    sky.main(["--out", str(tmp_path / "sky"), "--n-bricks", "1", "--n-lrg", "6", "--size-pix", "500"])
    src = dict(bank_overrides["source"], mix_modes=["cosmos", "deep"], mix_probs=[0.5, 0.5])
    cfg = load_config("base", {"source": {**src, "mode": "mix"}, "lens": {"theta_e_arcsec": [1.2, 2.0]},
                               "n_replicates": 2})
    hosts = manifest.read_parent_sample(str(tmp_path / "sky" / "parent_sample.parquet")).to_pylist()
    rows = sorted((r for h in hosts for r in manifest.plan_host(h, cfg, "h")), key=lambda r: r["task_id"])
    out = list(inject_rows(rows, cfg, str(tmp_path / "sky" / "coadd"), "test"))
    assert len(out) == len(rows)
    done = [r for r in out if r["cutout_ok"] == 1 and r["kind"] == "injection"]
    modes = {r["source_mode"] for r in done}
    assert modes == {"cosmos", "deep"}, modes
    by_task = {r["task_id"]: r for r in out}
    for r in done:
        assert r["source_template_id"]
        flux_r = 10 ** ((22.5 - r["src_mag_r"]) / 2.5)
        assert r["arc_flux_r_nmgy"] == pytest.approx(flux_r * r["magnification"], rel=1e-9)
        ctrl = by_task[r["pair_id"] + "/control"]
        diff = decode_image(r["image"], r["image_shape"]).astype(float) - decode_image(ctrl["image"], r["image_shape"])
        # arc photon noise only: sigma of the sum <= sqrt(flux / gain), gain >= 1000 e-/nmgy
        assert abs(diff[1].sum() - r["arc_flux_r_nmgy"]) < 6 * np.sqrt(r["arc_flux_r_nmgy"] / 1000) + 1e-6
