"""Scoring: the pure table scorer against direct model calls, masks, bad rows, and the Spark job."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from dhs_gen.physics.psf import gaussian_kernel
from dhs_gen.validation.quality_checks import encode_stamp_npz
from jobs.evaluation.score import score_table, scored_schema
from jobs.runtime.schema import STAMP_SCHEMA, encode_image
from jobs.training.model import ModelConfig, build_model, save_checkpoint
from jobs.training.preprocess import normalize_stamps

PIX = 0.262
N_PIX = 32  # small stamps keep the CPU model fast; the code has no size assumption


def _tiny_model():
    # torch's own RNG seeds the initial weights; fork_rng leaves the global state as it was
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = build_model(ModelConfig(arch="resnet_small", width=4))
    return model.eval()


def _stamps(n: int, seed: int) -> np.ndarray:
    """Sky noise (sigma 0.005 nmgy, ~DR10 r depth per pixel) + a PSF-convolved host, (n, 3, H, W) nmgy."""
    rng = np.random.default_rng(seed)
    psf = gaussian_kernel(1.2, PIX)  # a centred, normalised 1.2" FWHM host core
    host = np.zeros((N_PIX, N_PIX))
    c = N_PIX // 2
    h = psf.shape[0] // 2
    host[c - h:c + h + 1, c - h:c + h + 1] = psf
    imgs = rng.normal(0, 0.005, (n, 3, N_PIX, N_PIX))
    return (imgs + host * rng.uniform(0.5, 5.0, (n, 3, 1, 1))).astype(np.float32)


def stamp_table(n: int, seed: int = 0, prefix: str = "t") -> pa.Table:
    imgs = _stamps(n, seed)
    rows = []
    for i in range(n):
        rows.append({"task_id": f"{prefix}{i:04d}", "pair_id": f"p{i // 2}", "kind": "injection" if i % 2 else "control",
                     "label": i % 2, "split": "test", "source_mode": "sersic", "artifact_profile": "none",
                     "image": encode_image(imgs[i]), "image_shape": [3, N_PIX, N_PIX], "cutout_ok": 1,
                     "theta_e_arcsec": 1.5, "arc_snr": 20.0})
    return pa.Table.from_pylist(rows, schema=STAMP_SCHEMA)


def direct_scores(model, imgs: np.ndarray) -> np.ndarray:
    """The oracle: one forward pass of the model on normalised stamps, outside score.py."""
    with torch.no_grad():
        return torch.sigmoid(model(torch.from_numpy(normalize_stamps(imgs)))).double().numpy()


def test_score_table_matches_direct_model_and_keeps_metadata():
    model = _tiny_model()
    table = stamp_table(10)
    out = score_table(table, model, batch_size=3)  # batches of 3 exercise the chunking
    imgs = np.stack([np.frombuffer(b, np.float32).reshape(3, N_PIX, N_PIX) for b in table["image"].to_pylist()])
    # eval-mode BatchNorm is per-stamp, so batch composition changes only float rounding (~1e-7)
    np.testing.assert_allclose(out["score"].to_numpy(), direct_scores(model, imgs), rtol=0, atol=1e-6)
    assert out.column_names[:3] == ["task_id", "score", "score_status"]
    assert "image" not in out.column_names and "invvar" not in out.column_names
    assert out["task_id"].to_pylist() == table["task_id"].to_pylist()
    assert out["kind"].to_pylist() == table["kind"].to_pylist()
    assert out.schema == scored_schema(STAMP_SCHEMA)


def test_unscorable_rows_are_kept_with_null_score_and_status():
    model = _tiny_model()
    rows = stamp_table(4).to_pylist()
    rows[0]["cutout_ok"], rows[0]["reject_reason"] = 0, "off_brick"
    rows[1]["image"] = rows[1]["image"][:100]  # truncated bytes
    rows[2]["image"] = None
    out = score_table(pa.Table.from_pylist(rows, schema=STAMP_SCHEMA), model)
    assert out.num_rows == 4
    assert out["score_status"].to_pylist() == ["cutout_not_ok", "bad_image", "no_image", "ok"]
    assert out["score"].null_count == 3 and out["score"][3].as_py() is not None


def test_seed_gen5_stamp_npz_rows_score_like_the_same_pixels():
    """Stamps of the seed's Gen5 pipeline carry ``stamp_npz`` blobs: scored as the same pixels in ``image``."""
    model = _tiny_model()
    imgs = _stamps(3, seed=4)
    blobs = [encode_stamp_npz(imgs[0], "grz"), encode_stamp_npz(imgs[1], "grz", gzip_wrap=True),
             encode_stamp_npz(imgs[2][:2], "gr"), b"not an npz"]
    legacy = pa.table({"task_id": ["a", "b", "c", "d"], "label": [1, 0, 1, 0], "stamp_npz": blobs})
    out = score_table(legacy, model)
    assert out["score_status"].to_pylist() == ["ok", "ok", "missing_band", "bad_image"]
    assert "stamp_npz" not in out.column_names
    np.testing.assert_allclose(out["score"].to_numpy(zero_copy_only=False)[:2], direct_scores(model, imgs[:2]),
                               rtol=0, atol=1e-6)


def test_masks_blank_the_core_or_the_outskirts_after_normalisation():
    model = _tiny_model()
    table = stamp_table(6)
    imgs = np.stack([np.frombuffer(b, np.float32).reshape(3, N_PIX, N_PIX) for b in table["image"].to_pylist()])
    yy, xx = np.mgrid[:N_PIX, :N_PIX]
    inside = np.hypot(yy - (N_PIX - 1) / 2, xx - (N_PIX - 1) / 2) <= 4.0  # disc from its definition
    for mask, blank in (("core", inside), ("outer", ~inside)):
        x = normalize_stamps(imgs).copy()
        x[..., blank] = 0.0
        with torch.no_grad():
            expect = torch.sigmoid(model(torch.from_numpy(x))).double().numpy()
        got = score_table(table, model, mask=mask, radius_pix=4.0)["score"].to_numpy()
        np.testing.assert_allclose(got, expect, atol=1e-6)
    plain = score_table(table, model)["score"].to_numpy()
    assert np.max(np.abs(plain - got)) > 1e-4  # the mask changes what the model sees


def direct_logits(model, imgs: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(normalize_stamps(imgs))).double().numpy()


def test_temperature_scales_the_logits_and_none_is_bit_identical():
    from jobs.training.calibration import calibrated_proba

    model = _tiny_model()
    table = stamp_table(8)
    imgs = np.stack([np.frombuffer(b, np.float32).reshape(3, N_PIX, N_PIX) for b in table["image"].to_pylist()])
    plain = score_table(table, model)["score"].to_numpy()
    # temperature None is the plain sigmoid, exactly as before temperatures existed
    np.testing.assert_array_equal(score_table(table, model, temperature=None)["score"].to_numpy(), plain)
    hot = score_table(table, model, temperature=4.0)
    np.testing.assert_allclose(hot["score"].to_numpy(), calibrated_proba(direct_logits(model, imgs), 4.0), atol=1e-6)
    assert hot.schema == scored_schema(STAMP_SCHEMA)
    # T > 1 pulls every probability toward 1/2 and keeps the order
    assert np.all(np.abs(hot["score"].to_numpy() - 0.5) <= np.abs(plain - 0.5) + 1e-12)
    np.testing.assert_array_equal(np.argsort(hot["score"].to_numpy()), np.argsort(plain))


def _write_dataset(path, tables):
    path.mkdir(parents=True)
    names = []
    for i, t in enumerate(tables):
        name = f"part-{i:05d}.parquet"
        pq.write_table(t, path / name, row_group_size=max(1, t.num_rows // 2 + 1))  # 2 row groups per file
        names.append(name)
    (path / "_manifest.json").write_text(json.dumps({"stage": "4c_inject", "files": names}))


def test_spark_scoring_job_two_files_empty_partition_and_rejects(spark, tmp_path):
    from jobs.evaluation.score import run
    from jobs.runtime import outputs

    model = _tiny_model()
    ckpt = tmp_path / "model.pt"
    save_checkpoint(str(ckpt), model, ModelConfig(arch="resnet_small", width=4))
    a = stamp_table(7, seed=1, prefix="a")
    b_rows = stamp_table(5, seed=2, prefix="b").to_pylist()
    b_rows[0]["cutout_ok"], b_rows[0]["reject_reason"] = 0, "nan_pixels"
    b = pa.Table.from_pylist(b_rows, schema=STAMP_SCHEMA)
    _write_dataset(tmp_path / "stamps", [a, b])
    # 4 row groups over 6 partitions: at least two partitions are empty
    manifest = run(str(ckpt), str(tmp_path / "stamps"), str(tmp_path / "scores"), batch_size=4, partitions=6,
                   spark=spark)
    files = outputs.dataset_files(str(tmp_path / "scores"))
    out = pa.concat_tables([pq.read_table(f) for f in files]).to_pandas().set_index("task_id")
    assert len(out) == 12 and out.index.is_unique
    assert set(out.index) == set(a["task_id"].to_pylist()) | set(b["task_id"].to_pylist())
    assert np.isnan(out.loc["b0000", "score"]) and out.loc["b0000", "score_status"] == "cutout_not_ok"
    both = pa.concat_tables([a, b])
    imgs = np.stack([np.frombuffer(x, np.float32).reshape(3, N_PIX, N_PIX) for x in both["image"].to_pylist()])
    expect = dict(zip(both["task_id"].to_pylist(), direct_scores(model, imgs), strict=True))
    ok = out[out["score_status"] == "ok"]
    np.testing.assert_allclose(ok["score"].to_numpy(), [expect[t] for t in ok.index], atol=1e-6)
    assert manifest["rows_in"] == 12
    assert manifest["extra"]["score_status"] == {"cutout_not_ok": 1, "ok": 11}
    assert manifest["extra"]["temperature"] is None and manifest["extra"]["score_definition"] == "sigmoid(logit)"
    assert manifest["config"]["device"] == "cpu"


def test_device_option_and_cuda_without_a_gpu_is_one_error_line(tmp_path, capsys):
    import torch

    from jobs import cli

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: the refusal of --device cuda cannot be shown here")
    ckpt = tmp_path / "model.pt"
    save_checkpoint(str(ckpt), _tiny_model(), ModelConfig(arch="resnet_small", width=4))
    _write_dataset(tmp_path / "stamps", [stamp_table(3)])
    assert cli.main(["score", "--checkpoint", str(ckpt), "--input", str(tmp_path / "stamps"),
                     "--out", str(tmp_path / "s"), "--device", "cuda"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cuda" in err[0] and err[0].startswith("error:")
    assert not (tmp_path / "s").exists()


def test_spark_scoring_applies_the_checkpoint_temperature(spark, tmp_path):
    from jobs.evaluation.score import run
    from jobs.runtime import outputs
    from jobs.training.calibration import calibrated_proba

    model = _tiny_model()
    ckpt = tmp_path / "model.pt"
    save_checkpoint(str(ckpt), model, ModelConfig(arch="resnet_small", width=4), extra={"temperature": 2.5})
    a = stamp_table(6, seed=3, prefix="a")
    _write_dataset(tmp_path / "stamps", [a])
    manifest = run(str(ckpt), str(tmp_path / "stamps"), str(tmp_path / "scores"), batch_size=4, partitions=2,
                   spark=spark)
    assert manifest["extra"]["temperature"] == 2.5
    assert manifest["extra"]["score_definition"] == "sigmoid(logit / temperature)"
    assert outputs.read_manifest(str(tmp_path / "scores"))["extra"]["temperature"] == 2.5
    files = outputs.dataset_files(str(tmp_path / "scores"))
    out = pa.concat_tables([pq.read_table(f) for f in files])
    assert out.schema == scored_schema(STAMP_SCHEMA)
    out = out.to_pandas().set_index("task_id")
    imgs = np.stack([np.frombuffer(x, np.float32).reshape(3, N_PIX, N_PIX) for x in a["image"].to_pylist()])
    expect = dict(zip(a["task_id"].to_pylist(), calibrated_proba(direct_logits(model, imgs), 2.5), strict=True))
    np.testing.assert_allclose(out["score"].to_numpy(), [expect[t] for t in out.index], atol=1e-6)


def test_bad_mask_fails_before_spark(tmp_path):
    from dhs_gen.errors import ChoiceError
    from jobs.evaluation.score import run

    with pytest.raises(ChoiceError, match="mask"):
        run("missing.pt", str(tmp_path), str(tmp_path / "o"), mask="ring")


def test_transform_dataframe_in_dataframe_out(spark, tmp_path):
    from jobs.evaluation.score import transform

    model = _tiny_model()
    ckpt = tmp_path / "model.pt"
    save_checkpoint(str(ckpt), model, ModelConfig(arch="resnet_small", width=4))
    table = stamp_table(6, seed=4)
    df = spark.createDataFrame(table.select(["task_id", "label", "image", "image_shape", "cutout_ok"]).to_pandas())
    out = transform(df.repartition(3), str(ckpt)).toPandas().set_index("task_id")
    assert "image" not in out.columns and len(out) == 6
    imgs = np.stack([np.frombuffer(b, np.float32).reshape(3, N_PIX, N_PIX) for b in table["image"].to_pylist()])
    expect = dict(zip(table["task_id"].to_pylist(), direct_scores(model, imgs), strict=True))
    np.testing.assert_allclose(out["score"].to_numpy(), [expect[t] for t in out.index], atol=1e-6)
