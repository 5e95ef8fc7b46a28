"""4b for cutouts: each host's cutout fetched once (retries, a 404 reported, resume), then read as hosts."""

import json

from support import CutoutService

from jobs import cli
from jobs.cutouts.host_images import Declared
from jobs.runtime import outputs
from jobs.stages import cutout_cache, hosts
from jobs.stages.coadd_cache import CacheConfig

DR9 = "decals/dr9_cutout_invvar/cutout_59.1067_-30.4848.fits"


def _catalog(tmp_path):
    cat = tmp_path / "hosts.csv"
    cat.write_text("RA,DEC\n59.1067599,-30.4848417\n59.1067599,-30.4848417\n10.0,10.0\n")
    return cat


def test_fetch_once_with_retries_report_404_and_resume(shared_data, tmp_path):
    body = (shared_data / DR9).read_bytes()
    cat, dest = _catalog(tmp_path), tmp_path / "cutouts"
    cfg = CacheConfig(workers=2, retries=3, backoff_s=0.0)
    with CutoutService(body, missing=("ra=10.0000000",), failures=2) as service:
        first = cutout_cache.run(str(cat), str(dest), service.template, 64, cfg, progress=False)
        n_first = service.requests
        second = cutout_cache.run(str(cat), str(dest), service.template, 64, cfg, progress=False)
    name = cutout_cache.cutout_filename(59.1067599, -30.4848417)
    assert first["n_positions"] == 2                  # the duplicate row is one position, fetched once
    assert first["fetched"] == [name] and first["skipped"] == []
    assert [f["name"] for f in first["failed"]] == [cutout_cache.cutout_filename(10.0, 10.0)]
    assert "HTTP 404" in first["failed"][0]["reason"]
    assert n_first == 2 + 1 + 1                       # two 503s retried, the good file, one 404 (not retried)
    assert (dest / name).read_bytes() == body and not (dest / cutout_cache.cutout_filename(10.0, 10.0)).exists()
    # resume: the file already there is not asked for again
    assert second["skipped"] == [name] and second["fetched"] == [] and service.requests == n_first + 1
    report = json.loads((dest / "_cache_report.json").read_text())
    assert report["stage"] == "4b_cutout_cache" and report["skipped"] == [name]
    # the cache is a cutout folder: hosts at the catalog positions, the 404 position rejected
    m = hosts.build_hosts(f"local:{dest}", str(tmp_path / "hosts"), str(cat), declared=Declared(
        psf_fwhm_arcsec=(1.5, 1.3, 1.2)))
    assert (m["rows_written"], m["rejected_by_reason"]) == (1, {"no_cutout": 1, "duplicate_host": 1})
    assert outputs.read_manifest(str(tmp_path / "hosts"))["rows_in"] == 3


def test_bad_service_template_is_a_one_line_error(tmp_path, capsys):
    cat = _catalog(tmp_path)
    assert cli.main(["cutout-cache", "--catalog", str(cat), "--dest", str(tmp_path / "d"),
                     "--service", "http://127.0.0.1:9/x?ra={ra}", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "{dec}" in err[0]
