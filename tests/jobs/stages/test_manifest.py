"""Stage 4a: task planning (pure) and the Spark job, on the real DR10 parent sample."""

import json
from collections import Counter

import pyarrow.parquet as pq
import pytest

from jobs.runtime import outputs, storage
from jobs.runtime.config import load_config
from jobs.stages import manifest


def _host(brick="1500p020", ra=150.0, dec=2.0):
    return {"brickname": brick, "ra": ra, "dec": dec, "host_flux_g_nmgy": 1.0, "host_flux_r_nmgy": 3.0,
            "host_flux_z_nmgy": 8.0, "host_type": "DEV"}


def test_paired_host_rows_share_pair_and_params():
    cfg = load_config("base", {"hardneg_shuffle": True, "n_replicates": 2})
    rows = manifest.plan_host(_host(), cfg, "h")
    n_pairs = len(cfg.lens.theta_e_arcsec) * 2
    assert len(rows) == 3 * n_pairs
    assert Counter(r["kind"] for r in rows) == {"injection": n_pairs, "control": n_pairs, "hardneg_shuffle": n_pairs}
    assert len({r["task_id"] for r in rows}) == len(rows)
    by_pair = {}
    for r in rows:
        by_pair.setdefault(r["pair_id"], []).append(r)
    for members in by_pair.values():
        assert len(members) == 3
        assert len({(m["theta_e_arcsec"], m["src_x_arcsec"], m["source_mode"], m["artifact_profile"]) for m in members}) == 1
        assert sorted(m["label"] for m in members) == [0, 0, 1]


def test_unpaired_controls_come_from_other_hosts():
    cfg = load_config("base", {"paired_controls": False})
    kinds = [{r["kind"] for r in manifest.plan_host(_host(ra=150 + i * 0.01), cfg, "h")} for i in range(40)]
    assert all(len(k) == 1 for k in kinds)  # a host is either injected or a control, never both
    assert {"injection"} in kinds and {"control"} in kinds


def test_draws_are_deterministic_and_in_range():
    cfg = load_config("base")
    a = manifest.draw_pair_params("x/t0r0", 1.2, cfg)
    assert a == manifest.draw_pair_params("x/t0r0", 1.2, cfg)
    assert a != manifest.draw_pair_params("x/t0r1", 1.2, cfg)
    for i in range(200):
        p = manifest.draw_pair_params(f"h{i}", 1.5, cfg)
        beta = (p["src_x_arcsec"] ** 2 + p["src_y_arcsec"] ** 2) ** 0.5 / 1.5
        assert cfg.source.beta_frac[0] - 1e-12 <= beta <= cfg.source.beta_frac[1] + 1e-12
        assert cfg.source.mag_r[0] <= p["src_mag_r"] <= cfg.source.mag_r[1]


def test_split_is_by_brick_on_the_real_parent_sample(shared_data):
    hosts = manifest.read_parent_sample(str(shared_data / "dr10" / "phase3_lrg_parent_sample.parquet"))
    assert hosts.num_rows == 6826
    bricks = sorted(set(hosts.column("brickname").to_pylist()))
    splits = {b: manifest.split_for_brick(b, (0.7, 0.15, 0.15)) for b in bricks}
    assert set(splits.values()) == {"train", "val", "test"}
    # every host of a brick lands in that brick's split: spatially disjoint by construction
    cfg = load_config("base", {"lens": {"theta_e_arcsec": [1.0]}})
    for host in hosts.slice(0, 300).to_pylist():
        assert {r["split"] for r in manifest.plan_host(host, cfg, "h")} == {splits[host["brickname"]]}


def test_spark_manifest_on_real_parent_sample_is_partition_independent(spark, shared_data, tmp_path):
    parent = str(shared_data / "dr10" / "phase3_lrg_parent_sample.parquet")
    cfg = load_config("uber", {"max_hosts": 150, "lens": {"theta_e_arcsec": [1.0, 2.0]},
                               "source": {"cosmos_bank": "/unused.h5", "deep_bank": "/unused.npz"}})
    tables = []
    for n in (1, 4):
        out = str(tmp_path / f"m{n}")
        m = manifest.run(parent, cfg, out, partitions=n, spark=spark)
        assert m["rows_written"] == 150 * 2 * 3 and m["rows_rejected"] == 0
        assert json.loads(json.dumps(m))["config"]["name"] == "uber"
        t = storage.read_parquet(outputs.dataset_files(out)).sort_by("task_id")
        tables.append(t)
    assert tables[0].equals(tables[1])
    modes = Counter(tables[0].column("source_mode").to_pylist())
    assert set(modes) <= {"cosmos", "deep", "hybrid"} and len(modes) == 3
    # every part holds whole bricks, in brick order, and the parts follow each other in brick order: a 4c
    # task (a run of bricks) reads one or two parts
    parts = [pq.read_table(f, columns=["brickname"]).column(0).to_pylist() for f in outputs.dataset_files(str(tmp_path / "m4"))]
    n_bricks = len(set(tables[0].column("brickname").to_pylist()))
    assert len(parts) == min(4, n_bricks) and all(p == sorted(p) for p in parts)
    parts.sort(key=lambda p: p[0])
    assert all(a[-1] < b[0] for a, b in zip(parts[:-1], parts[1:], strict=True))   # disjoint runs of bricks


def test_brick_runs_cut_whole_bricks_into_balanced_runs():
    import pyarrow as pa

    bricks = ["b"] * 5 + ["a"] * 3 + ["c"] * 4 + ["d"] * 4
    hosts = pa.table({"brickname": bricks, "ra": [float(i) for i in range(len(bricks))]})
    runs = manifest.brick_runs(hosts, 3)
    assert [r.column("brickname").to_pylist() for r in runs] == [["a"] * 3 + ["b"] * 5, ["c"] * 4, ["d"] * 4]
    assert runs[0].column("ra").to_pylist()[3:] == [0.0, 1.0, 2.0, 3.0, 4.0]   # a brick's hosts keep their order
    assert len(manifest.brick_runs(hosts, 10)) == 4                             # never more runs than bricks


def test_brick_runs_cut_hosts_without_a_brick_anywhere_and_cap_the_hosts_per_task(monkeypatch):
    import pyarrow as pa

    hosts = pa.table({"brickname": ["a"] * 2 + [None] * 6, "ra": [float(i) for i in range(8)]})
    runs = manifest.brick_runs(hosts, 4)
    assert [r.num_rows for r in runs] == [2, 2, 2, 2] and runs[0].column("brickname").to_pylist() == ["a", "a"]
    monkeypatch.setattr(manifest, "MAX_HOSTS_PER_TASK", 3)
    runs = manifest.brick_runs(hosts, 1)                      # 8 hosts, at most 3 a task: 3 runs, not 1
    assert len(runs) == 3 and max(r.num_rows for r in runs) <= 3 and sum(r.num_rows for r in runs) == 8


def test_missing_parent_column_is_a_config_error(tmp_path):
    import pyarrow as pa

    path = tmp_path / "bad.parquet"
    pq.write_table(pa.table({"RA": [1.0], "DEC": [2.0]}), path)
    with pytest.raises(ValueError, match="BRICKNAME"):
        manifest.read_parent_sample(str(path))


def test_bad_parent_rows_are_rejected_hosts_and_an_empty_parent_is_an_error(spark, tmp_path):
    import math

    import pyarrow as pa
    import pyarrow.parquet as pq

    from dhs_gen.errors import ConfigError
    from jobs.runtime import outputs, storage
    from jobs.runtime.config import load_config

    cols = {"RA": [10.0, math.nan, 11.0, 400.0], "DEC": [1.0, 2.0, 3.0, 1.0],
            "BRICKNAME": ["0100p010", "0100p010", None, "0100p010"], "FLUX_G": [1.0] * 4, "FLUX_R": [1.0] * 4,
            "FLUX_Z": [1.0] * 4}
    pq.write_table(pa.table(cols), tmp_path / "p.parquet")
    m = manifest.run(str(tmp_path / "p.parquet"), load_config("demo"), str(tmp_path / "m"), partitions=2, spark=spark)
    assert (m["extra"]["hosts_in"], m["extra"]["n_hosts"]) == (4, 1)
    assert m["extra"]["hosts_rejected_by_reason"] == {"nonfinite_position": 1, "missing_brickname": 1,
                                                       "position_out_of_range": 1}
    rejects = storage.read_parquet(str(tmp_path / "m" / outputs.REJECTS_FILE)).to_pylist()
    assert sorted(r["detail"] for r in rejects) == ["parent row 1", "parent row 2", "parent row 3"]
    pq.write_table(pa.table(cols).slice(0, 0), tmp_path / "empty.parquet")
    with pytest.raises(ConfigError, match="no usable host"):
        manifest.run(str(tmp_path / "empty.parquet"), load_config("demo"), str(tmp_path / "m2"), spark=spark)
    assert not (tmp_path / "m2").exists()
