"""Stage 4c end to end on the embedded sky: photometry, determinism, rejects, row accounting."""

import json
import shutil
from collections import Counter

import numpy as np
import pytest

from jobs.runtime import outputs, storage
from jobs.runtime.config import load_config
from jobs.runtime.schema import decode_image
from jobs.stages import inject, manifest, sky

N_BRICKS, N_LRG = 2, 12


@pytest.fixture(scope="module")
def small_sky(tmp_path_factory):
    out = tmp_path_factory.mktemp("sky")
    sky.main(["--out", str(out), "--n-bricks", str(N_BRICKS), "--n-lrg", str(N_LRG), "--size-pix", "600"])
    return out


@pytest.fixture(scope="module")
def small_manifest(small_sky, spark, tmp_path_factory):
    out = tmp_path_factory.mktemp("manifest") / "m"
    cfg = load_config("base", {"hardneg_shuffle": True, "lens": {"theta_e_arcsec": [1.0, 1.8]},
                               "source": {"mode": "mix", "mix_modes": ["sersic", "hybrid"], "mix_probs": [0.5, 0.5]}})
    manifest.run(str(small_sky / "parent_sample.parquet"), cfg, str(out), partitions=2, spark=spark)
    return out


@pytest.fixture(scope="module")
def stamps(small_sky, small_manifest, spark, tmp_path_factory):
    out = tmp_path_factory.mktemp("stamps") / "s"
    inject.run(str(small_manifest), str(small_sky), str(out), partitions=3, spark=spark)
    return out


def _table(uri):
    return storage.read_parquet(outputs.dataset_files(uri)).sort_by("task_id")


def test_rows_in_equal_rows_written_plus_rejected(stamps, small_manifest):
    m_in, m_out = outputs.read_manifest(str(small_manifest)), outputs.read_manifest(str(stamps))
    n_in = m_in["rows_written"]
    assert m_out["rows_written"] + m_out["rows_rejected"] == n_in
    t = _table(str(stamps))
    assert t.num_rows == n_in
    assert sorted(t.column("task_id").to_pylist()) == sorted(_table(str(small_manifest)).column("task_id").to_pylist())
    ok = np.array(t.column("cutout_ok").to_pylist())
    reasons = [r for r in t.column("reject_reason").to_pylist() if r]
    assert len(reasons) == int((ok == 0).sum()) == m_out["rows_rejected"]
    assert sum(m_out["rejected_by_reason"].values()) == m_out["rows_rejected"]


def test_photometry_arc_flux_matches_magnitude_and_pair_difference(stamps):
    rows = [r for r in _table(str(stamps)).to_pylist() if r["cutout_ok"] == 1]
    by_task = {r["task_id"]: r for r in rows}
    checked = 0
    for r in rows:
        if r["kind"] != "injection":
            continue
        mags = {"g": r["src_mag_g"], "r": r["src_mag_r"], "z": r["src_mag_z"]}
        # definition: arc_flux_r = 10**((22.5 - m_r)/2.5) * magnification (exact by construction of both columns)
        assert r["arc_flux_r_nmgy"] == pytest.approx(10 ** ((22.5 - mags["r"]) / 2.5) * r["magnification"], rel=1e-9)
        assert r["magnification"] > 1.0  # strong lensing of a source inside beta_frac < 1 always magnifies
        ctrl = by_task.get(r["pair_id"] + "/control")
        if ctrl is None or r["artifact_profile"] != "none":
            continue
        shape = r["image_shape"]
        diff = decode_image(r["image"], shape).astype(np.float64) - decode_image(ctrl["image"], shape)
        for b, band in enumerate("grz"):
            expected = r[f"arc_flux_{band}_nmgy"]
            # the difference is arc + arc photon noise; its sum has sigma = sqrt(sum(arc)/gain) <= sqrt(flux/1000)
            sigma = np.sqrt(expected / 1000.0) + 1e-6
            assert abs(diff[b].sum() - expected) < 6 * sigma, (band, diff[b].sum(), expected)
        checked += 1
    assert checked >= 5


def test_arcs_are_realistically_faint(stamps):
    rows = [r for r in _table(str(stamps)).to_pylist() if r["cutout_ok"] == 1 and r["kind"] == "injection"]
    snr = np.array([r["arc_snr"] for r in rows])
    # the known failure of this kind of pipeline: arcs ~100x too bright (SNR in the thousands)
    assert np.median(snr) < 200 and np.median(snr) > 3


def test_output_is_bit_identical_for_any_partition_count(small_sky, small_manifest, stamps, spark, tmp_path):
    other = tmp_path / "s1"
    inject.run(str(small_manifest), str(small_sky), str(other), partitions=1, spark=spark)
    a, b = _table(str(stamps)), _table(str(other))
    assert a.drop(["git_sha"]).equals(b.drop(["git_sha"]))


def test_each_brick_is_one_task_reading_only_its_rows(small_manifest, monkeypatch):
    """The driver's plan: every brick in exactly one task, runs of bricks in name order, and a task's rows
    (read back by its task alone, in runs of at most TASK_READ_ROWS rows of whole bricks) are exactly the
    manifest rows of its bricks, each run sorted split, brick, task_id."""
    import json

    m = outputs.read_manifest(str(small_manifest))
    bricks_of = inject.check_manifest_parts(str(small_manifest), m)
    assert inject.bricks_are_grouped(bricks_of)
    everything = _table(str(small_manifest))
    monkeypatch.setattr(inject, "TASK_READ_ROWS", 100)   # a brick here holds 288 rows: one run per brick
    for partitions in (1, 2, 5):
        tasks = [json.loads(p) for p in inject.brick_tasks(bricks_of, partitions)]
        assert len(tasks) == min(partitions, N_BRICKS)
        flat = [b for t in tasks for b, _, _ in t["bricks"]]
        assert flat == sorted(set(everything.column("brickname").to_pylist()))
        read = [list(inject.task_row_chunks(t)) for t in tasks]
        assert sum(r.num_rows for runs in read for r in runs) == everything.num_rows
        for task, runs in zip(tasks, read, strict=True):
            assert len(runs) == len(task["bricks"])
            for (brick, count, _), rows in zip(task["bricks"], runs, strict=True):
                assert set(rows.column("brickname").to_pylist()) == {brick} and rows.num_rows == count
                keys = list(zip(*(rows.column(c).to_pylist() for c in ("split", "brickname", "task_id")), strict=True))
                assert keys == sorted(keys)


def test_host_values_shared_by_a_hosts_rows_give_the_rows_computed_alone(small_sky, small_manifest):
    """What a host's rows share (HostValues: float64 host and invvar, the bare host's noise scales and depth)
    changes nothing: every row rendered with the host's shared values equals the row rendered on its own."""
    from dhs_gen.augmentation.artifacts import noise_scales
    from jobs.cutouts.coadds import cut_stamp, load_brick
    from jobs.runtime.config import config_from_dict
    from jobs.stages.render_row import HostValues, render_row

    cfg = config_from_dict(outputs.read_manifest(str(small_manifest))["config"])
    rows = _table(str(small_manifest)).to_pylist()
    brick_name = rows[0]["brickname"]
    brick = load_brick(str(small_sky / "coadd"), brick_name)
    host_rows = [r for r in rows if r["host_id"] == rows[0]["host_id"]]
    pairs = sorted({r["pair_id"] for r in host_rows})   # this manifest has no artifacts: give each pair a profile
    profile = {p: ("mild", "strong", "none")[j % 3] for j, p in enumerate(pairs)}
    host_rows = [{**r, "artifact_profile": profile[r["pair_id"]]} for r in host_rows]
    kinds = Counter((r["kind"], r["artifact_profile"]) for r in host_rows)
    assert {k for k, _ in kinds} >= {"injection", "control"} and ("control", "mild") in kinds
    cut = cut_stamp(brick, host_rows[0]["ra"], host_rows[0]["dec"], cfg.stamp_size_pix)
    assert cut.ok
    shared = HostValues(cut)
    out = {}
    for row in host_rows:
        alone = render_row(row, cut, cfg, {}, "sha")
        assert render_row(row, cut, cfg, {}, "sha", host_values=shared) == alone
        out[row["task_id"]] = alone
    # artifacts are in units of the host's noise for both rows of a pair: the injection's are not scaled up by
    # its arc (an amplitude difference a classifier could learn)
    host_noise = [float(v) for v in noise_scales(shared.image)]
    checked = 0
    for r in out.values():
        ctrl = out.get(r["pair_id"] + "/control")
        if r["kind"] == "injection" and r["artifact_profile"] != "none" and ctrl is not None:
            assert json.loads(r["artifact_meta"])["noise_scale"] == json.loads(ctrl["artifact_meta"])["noise_scale"]
            assert json.loads(r["artifact_meta"])["noise_scale"] == host_noise
            checked += 1
    assert checked >= 1


def _rewrite_parts(src, dst, edit):
    """A copy of the committed dataset ``src`` at ``dst`` whose parts hold ``edit(all rows)``, cut back into the
    same part files with the same row counts (what its _manifest.json records)."""
    shutil.copytree(src, dst)
    files = outputs.dataset_files(str(dst))
    counts = [storage.read_parquet(f).num_rows for f in files]
    rows = edit(storage.read_parquet(files))
    start = 0
    for f, n in zip(files, counts, strict=True):
        storage.write_parquet(rows.slice(start, n), f)
        start += n


def test_a_manifest_whose_parts_mix_bricks_gives_the_same_stamps(small_sky, small_manifest, stamps, spark, tmp_path):
    """Parts that mix bricks (a manifest of the old round-robin layout) are shuffled by brick instead of read per
    task: the same stamps."""
    mixed = tmp_path / "mixed"
    _rewrite_parts(small_manifest, mixed, lambda t: t.sort_by("task_seed"))
    m = outputs.read_manifest(str(mixed))
    assert not inject.bricks_are_grouped(inject.check_manifest_parts(str(mixed), m))
    out = tmp_path / "s"
    inject.run(str(mixed), str(small_sky), str(out), partitions=3, spark=spark)
    assert _table(str(out)).drop(["git_sha"]).equals(_table(str(stamps)).drop(["git_sha"]))


def test_rows_without_a_brick_are_rejected_in_a_task_of_their_own(small_sky, small_manifest, spark, tmp_path):
    """A manifest row with no brick (a host without a position) is a ``missing_brick`` reject, also when the
    rows without a brick get a task to themselves (more partitions than bricks)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    nulls = tmp_path / "nulls"
    first_host = _table(str(small_manifest)).column("host_id")[0].as_py()

    def drop_brick(t):
        t = t.sort_by("task_id")
        hit = pc.equal(t.column("host_id"), first_host)
        bricks = pc.if_else(hit, pa.scalar(None, pa.string()), t.column("brickname"))
        return t.set_column(t.schema.get_field_index("brickname"), "brickname", bricks)

    _rewrite_parts(small_manifest, nulls, drop_brick)
    out = tmp_path / "s"
    m = inject.run(str(nulls), str(small_sky), str(out), partitions=N_BRICKS + 3, spark=spark)
    got = _table(str(out))
    assert m["rows_written"] + m["rows_rejected"] == got.num_rows == _table(str(small_manifest)).num_rows
    reasons = {r["reject_reason"] for r in got.to_pylist() if r["host_id"] == first_host}
    assert reasons == {"missing_brick"}


def test_bad_inputs_become_rejected_rows(small_sky, small_manifest, spark, tmp_path):
    broken = tmp_path / "sky"
    shutil.copytree(small_sky, broken)
    files = sorted(broken.rglob("*-image-r.fits.fz"))
    files[0].unlink()                                     # a missing band in one brick
    zfile = sorted(broken.rglob("*-image-z.fits.fz"))[-1]
    zfile.write_bytes(zfile.read_bytes()[:2000])          # a truncated (corrupt) file in the other
    out = tmp_path / "s"
    m = inject.run(str(small_manifest), str(broken), str(out), partitions=2, spark=spark)
    t = _table(str(out))
    assert t.num_rows == outputs.read_manifest(str(small_manifest))["rows_written"]
    reasons = Counter(r for r in t.column("reject_reason").to_pylist() if r)
    assert any(k.startswith("missing_band:r") for k in reasons)
    assert any(k.startswith("corrupt_fits:z") for k in reasons)
    assert m["rows_rejected"] == sum(reasons.values())


def test_row_groups_hold_one_split_and_pixels_are_not_dictionary_encoded(stamps):
    import pyarrow.parquet as pq

    splits_seen = set()
    for f in outputs.dataset_files(str(stamps)):
        meta = pq.ParquetFile(f).metadata
        names = [meta.schema.column(j).path for j in range(meta.num_columns)]
        for i in range(meta.num_row_groups):
            rg = meta.row_group(i)
            split = rg.column(names.index("split")).statistics
            assert split.min == split.max  # the reader skips other splits' row groups by these stats
            splits_seen.add(split.min)
            image = rg.column(names.index("image"))
            assert image.compression == "UNCOMPRESSED"  # real pixels do not compress (jobs.runtime.storage)
            others = {rg.column(j).compression for j in range(meta.num_columns) if names[j] != "image"}
            assert others == {"ZSTD"}
            assert not any("DICT" in e for e in image.encodings)
    # Bricks (and so splits) of the small sky: at least two splits, so the check above bites.
    assert len(splits_seen) >= 2


def test_a_missing_coadd_root_or_a_duplicated_task_fails_before_spark(small_sky, small_manifest, tmp_path):
    from dhs_gen.errors import InvalidValueError

    with pytest.raises(InvalidValueError, match="no such coadd root"):
        inject.run(str(small_manifest), str(tmp_path / "nowhere"), str(tmp_path / "s"))
    assert not (tmp_path / "s").exists()
    # a manifest whose second part repeats a task of the first
    dup = tmp_path / "dup"
    shutil.copytree(small_manifest, dup)
    parts = sorted(dup.glob("part-*.parquet"))
    shutil.copy(parts[0], dup / "part-09999.parquet")
    m = outputs.read_manifest(str(dup))
    m["files"].append("part-09999.parquet")
    storage.write_json(str(dup / outputs.MANIFEST_NAME), m)
    with pytest.raises(InvalidValueError, match="appears more than once"):
        inject.run(str(dup), str(small_sky), str(tmp_path / "s2"))
    assert not (tmp_path / "s2").exists()


def test_arc_photon_noise_is_poisson_where_it_matters_and_invvar_includes_it():
    """Drawn pixels carry N(0, arc/gain) noise; pixels where the arc adds < ARC_NOISE_MIN_VARIANCE_SHARE of the
    pixel's variance (or where there is no data) are left as they are; the new invvar is 1 / (1/invvar + var)."""
    from jobs.stages.render_row import ARC_NOISE_MIN_VARIANCE_SHARE, add_arc_photon_noise

    yy, xx = np.mgrid[:64, :64] - 31.5
    r = np.hypot(xx, yy)
    arc = np.stack([k * np.exp(-0.5 * ((r - 12) / 2) ** 2) + 1e-6 / (1 + (r - 12) ** 2) - 1e-9 for k in (0.2, 0.3, 0.4)])
    invvar = np.random.default_rng(0).uniform(5e3, 2e4, arc.shape)
    invvar[1, :4] = 0.0
    gains = [300.0, 400.0, 500.0]
    noisy, new_invvar = add_arc_photon_noise(arc, invvar, gains, "task-1")
    var = np.maximum(arc, 0) / np.array(gains)[:, None, None]
    drawn = var * invvar > ARC_NOISE_MIN_VARIANCE_SHARE
    assert 0.1 < drawn.mean() < 0.9 and not drawn[1, :4].any()
    z = (noisy - arc)[drawn] / np.sqrt(var[drawn])
    assert abs(z.mean()) < 4 / np.sqrt(z.size) and abs(z.std() - 1) < 0.05
    assert np.array_equal(noisy[~drawn], arc[~drawn])
    expected = np.where(invvar > 0, 1 / (1 / np.where(invvar > 0, invvar, 1) + var), 0)
    np.testing.assert_allclose(new_invvar, expected, rtol=1e-14)
    assert np.all(new_invvar[1, :4] == 0)
    again, _ = add_arc_photon_noise(arc, invvar, gains, "task-1")
    assert np.array_equal(again, noisy)   # keyed: the same task draws the same noise
    # pixels without data (invvar 0, negative or NaN) get no draw and keep invvar 0; infinite invvar gives 1/var;
    # float32 inputs give float64 outputs
    bad = invvar.copy()
    bad[0, 10, 10:14] = [-1e4, -1e-3, np.nan, np.inf]
    noisy32, iv32 = add_arc_photon_noise(arc.astype(np.float32), bad.astype(np.float32), gains, "task-1")
    assert noisy32.dtype == iv32.dtype == np.float64
    assert np.array_equal(iv32[0, 10, 10:13], [0.0, 0.0, 0.0]) and iv32[0, 10, 13] == pytest.approx(1 / var[0, 10, 13])
    assert np.array_equal(noisy32[0, 10, 10:13], arc.astype(np.float32)[0, 10, 10:13].astype(np.float64))


@pytest.mark.parametrize("fwhm", [0.9, 1.3, 1.8])
def test_4c_psf_kernels_are_pixel_integrated_within_the_fwhm_step(fwhm):
    """make_psfs' kernels (PSF_OVERSAMPLE samples per pixel) are within 2.5e-3 L1 of the exact pixel means (a
    21x21-sample reference), less than what the FWHM rounding step alone may move a kernel."""
    from dhs_gen.physics.psf import moffat_kernel
    from jobs.stages.render_row import PSF_FWHM_STEP_ARCSEC, make_psfs

    cfg = load_config("demo")
    (kernel,) = make_psfs([fwhm], cfg, 0.03, -0.02)
    exact = moffat_kernel(fwhm, cfg.pixscale_arcsec, beta=cfg.moffat_beta, e1=0.03, e2=-0.02,
                          max_size=cfg.psf_max_size_pix, oversample=21)
    step = moffat_kernel(fwhm + PSF_FWHM_STEP_ARCSEC, cfg.pixscale_arcsec, beta=cfg.moffat_beta, e1=0.03, e2=-0.02,
                         max_size=cfg.psf_max_size_pix, oversample=21)
    assert kernel.shape == exact.shape and kernel.sum() == pytest.approx(1.0, abs=1e-12)
    assert np.abs(kernel - exact).sum() < min(2.5e-3, np.abs(step - exact).sum())
