"""Stage 4a: parent sample x injection grid x replicates -> one manifest row per task.

Every random draw of a task (lens ellipticity and shear, source magnitude, colours, size,
position) is made here from the task's own key, so stage 4c needs nothing but the row and a
re-run renders the same bytes. Rows of one host and grid point share a ``pair_id``: the
injection, its paired control (same cutout, no arc) and its azimuthal-shuffle hard negative.
The split is by brick (a hash of the brick name), so train/val/test are spatially disjoint and
identical across generations.

    dhs manifest --parent PARENT.parquet --config gen7 --out MANIFEST [--partitions N]
    dhs manifest --hosts HOSTS --config gen7 --out MANIFEST      # a host dataset of `dhs hosts build`

With ``--hosts`` the tasks are planned over the host rows (their ``host_id``, position and brick;
a host row's own ``split`` wins; hosts without a position are split by their own id instead of a brick).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Iterable, Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from dhs_gen.conventions import ellipticity_from_q_phi
from dhs_gen.errors import ConfigError
from dhs_gen.utils import categorical_from_hash, hash_uint64, rng_for
from jobs.runtime import outputs, stage, storage
from jobs.runtime.config import SPLITS, InjectionConfig, load_config
from jobs.runtime.schema import MANIFEST_SCHEMA, REJECT_SCHEMA

SPLIT_SALT = "split_v1"  # independent of the experiment seed: every generation shares the test bricks
PARENT_COLUMNS = {"RA": "ra", "DEC": "dec", "BRICKNAME": "brickname", "FLUX_G": "host_flux_g_nmgy",
                  "FLUX_R": "host_flux_r_nmgy", "FLUX_Z": "host_flux_z_nmgy", "TYPE": "host_type"}


def read_parent_sample(uri: str, max_hosts: int | None = None) -> pa.Table:
    """Parent sample (DR10 column names, any case) -> table of the host columns, validated.

    Raises ConfigError naming the missing column; rows with non-finite or out-of-range RA/Dec
    are kept and rejected later by 4c (never silently dropped here).
    """
    fs, path = storage.resolve(uri)
    if not storage.exists(uri):
        raise ConfigError("parent", uri, "parent-sample Parquet not found")
    table = pq.read_table(path, filesystem=fs)
    upper = {name.upper(): name for name in table.column_names}
    cols = {}
    for src, dst in PARENT_COLUMNS.items():
        if src not in upper:
            if src == "TYPE":
                cols[dst] = pa.array(["UNKNOWN"] * table.num_rows)
                continue
            raise ConfigError("parent", uri, f"missing column {src!r}; have {table.column_names}")
        cols[dst] = table.column(upper[src])
    out = pa.table(cols)
    out = out.set_column(out.schema.get_field_index("brickname"), "brickname", out.column("brickname").cast(pa.string()))
    return out.slice(0, max_hosts) if max_hosts else out


HOST_COLUMNS = ["host_id", "ra", "dec", "brickname", "host_flux_g_nmgy", "host_flux_r_nmgy", "host_flux_z_nmgy",
                "host_type", "split"]


def read_hosts(uri: str, max_hosts: int | None = None) -> pa.Table:
    """The host rows of a ``dhs hosts build`` dataset, without their pixels (what 4a plans over)."""
    m = outputs.require_input(uri, stage="hosts")
    files = outputs.dataset_files(uri)
    table = storage.read_parquet(files, columns=HOST_COLUMNS) if files else None
    if table is None or table.num_rows == 0:
        raise ConfigError("hosts", uri, f"the host dataset has no hosts ({m.get('rows_rejected', 0)} rejected)")
    return table.slice(0, max_hosts) if max_hosts else table


def screen_hosts(hosts: pa.Table) -> tuple[pa.Table, list[dict]]:
    """(usable hosts, rejects): a host needs a finite RA in [0, 360), Dec in [-90, 90] and a brick name
    (hosts of a host dataset without a position are usable: they carry their own ``host_id``)."""
    keep, rejects = [], []
    for i, h in enumerate(hosts.to_pylist()):
        ra, dec, brick = h.get("ra"), h.get("dec"), h.get("brickname")
        reason = None
        if h.get("host_id") and ra is None and dec is None:
            reason = None
        elif ra is None or dec is None or not (math.isfinite(ra) and math.isfinite(dec)):
            reason = "nonfinite_position"
        elif not (0.0 <= ra < 360.0 and -90.0 <= dec <= 90.0):
            reason = "position_out_of_range"
        elif not brick:
            reason = "missing_brickname"
        if reason:
            rejects.append({"name": h.get("host_id") or f"row {i}", "ra": ra, "dec": dec, "reason": reason,
                            "detail": f"parent row {i}"})
        else:
            keep.append(i)
    return hosts.take(pa.array(keep, pa.int64())), rejects


def host_id(brickname: str, ra: float, dec: float) -> str:
    """Stable host identifier from brick and position (1e-6 deg ~ 4 mas)."""
    return f"{brickname}_{ra:.6f}_{dec:+.6f}"


def split_for_brick(brickname: str, fractions) -> str:
    """train | val | test for a brick, by hash: spatially disjoint, stable as bricks are added."""
    return SPLITS[categorical_from_hash(str(brickname), fractions, salt=SPLIT_SALT)]


def _modes(pair_id: str, cfg: InjectionConfig) -> tuple[str, str]:
    from dhs_gen.augmentation.mixer import MixerConfig, assign_modes

    src, art = cfg.source.mode, cfg.artifact_profile
    if src == "mix" or art == "mix":
        mixer = MixerConfig(source_modes=list(cfg.source.mix_modes), source_probs=list(cfg.source.mix_probs),
                            artifact_profiles=["none", "mild", "strong"], artifact_probs=list(cfg.artifact_mix),
                            salt=cfg.mixer_salt)
        drawn = assign_modes(pair_id, mixer)
        src = drawn["source_mode"] if src == "mix" else src
        art = drawn["artifact_profile"] if art == "mix" else art
    return src, art


def draw_pair_params(pair_id: str, theta_e: float, cfg: InjectionConfig) -> dict:
    """Lens and source parameters of one pair, drawn from the pair's own generator."""
    rng = rng_for(pair_id, f"params:{cfg.seed}")
    s, lens = cfg.source, cfg.lens
    lq, lphi = rng.uniform(*lens.q), rng.uniform(0, math.pi)
    le1, le2 = ellipticity_from_q_phi(lq, lphi)
    g1, g2 = rng.normal(0.0, lens.shear_sigma, size=2)
    sq, sphi = rng.uniform(*s.q), rng.uniform(0, math.pi)
    se1, se2 = ellipticity_from_q_phi(sq, sphi)
    # source position: uniform in area within an annulus of |beta|/theta_E in beta_frac
    b_lo, b_hi = s.beta_frac
    beta = theta_e * math.sqrt(rng.uniform(b_lo**2, b_hi**2))
    ang = rng.uniform(0, 2 * math.pi)
    return {
        "theta_e_arcsec": float(theta_e), "lens_e1": float(le1), "lens_e2": float(le2),
        "shear_gamma1": float(g1), "shear_gamma2": float(g2),
        "src_mag_r": float(rng.uniform(*s.mag_r)), "src_color_gr": float(rng.uniform(*s.color_gr)),
        "src_color_rz": float(rng.uniform(*s.color_rz)), "src_r_eff_arcsec": float(rng.uniform(*s.r_eff_arcsec)),
        "src_n_sersic": float(rng.uniform(*s.n_sersic)), "src_e1": float(se1), "src_e2": float(se2),
        "src_x_arcsec": float(beta * math.cos(ang)), "src_y_arcsec": float(beta * math.sin(ang)),
    }


def plan_host(host: dict, cfg: InjectionConfig, config_hash: str) -> list[dict]:
    """All manifest rows of one host (pure; what each Spark task runs per parent row)."""
    hid = host.get("host_id") or host_id(host["brickname"], host["ra"], host["dec"])
    # a host set may fix each object's split (object-disjoint real sets); else by brick, and hosts
    # without a position (cutouts with no WCS) by their own id
    split = host.get("split") or split_for_brick(host["brickname"] or hid, cfg.split_fractions)
    # Unpaired controls (Gen5): a host is either an injection host or a control host.
    host_is_control = (not cfg.paired_controls) and categorical_from_hash(hid, [0.5, 0.5], salt="control_host") == 1
    rows = []
    for ti, theta_e in enumerate(cfg.lens.theta_e_arcsec):
        for rep in range(cfg.n_replicates):
            pair_id = f"{hid}/t{ti}r{rep}"
            params = draw_pair_params(pair_id, theta_e, cfg)
            source_mode, artifact_profile = _modes(pair_id, cfg)
            kinds = ["control"] if host_is_control else ["injection"]
            if cfg.paired_controls:
                kinds.append("control")
            if cfg.hardneg_shuffle and not host_is_control:
                kinds.append("hardneg_shuffle")
            for kind in kinds:
                task_id = f"{pair_id}/{kind}"
                rows.append({
                    "task_id": task_id, "host_id": hid, "pair_id": pair_id, "kind": kind,
                    "label": 1 if kind == "injection" else 0, "is_control": kind == "control",
                    "split": split, "brickname": host["brickname"], "ra": host["ra"], "dec": host["dec"],
                    "host_flux_g_nmgy": host.get("host_flux_g_nmgy"), "host_flux_r_nmgy": host.get("host_flux_r_nmgy"),
                    "host_flux_z_nmgy": host.get("host_flux_z_nmgy"), "host_type": host.get("host_type"),
                    "replicate": rep, "task_seed": hash_uint64(task_id, f"seed:{cfg.seed}") & 0x7FFFFFFFFFFFFFFF,
                    "source_mode": source_mode, "artifact_profile": artifact_profile,
                    "config_hash": config_hash, **params,
                })
    return rows


def plan_batches(batches: Iterable[pa.RecordBatch], cfg: InjectionConfig, config_hash: str) -> Iterator[pa.Table]:
    """Arrow batches of hosts -> Arrow tables of manifest rows (one table per input batch)."""
    for batch in batches:
        rows = [row for host in batch.to_pylist() for row in plan_host(host, cfg, config_hash)]
        yield pa.Table.from_pylist(rows, schema=MANIFEST_SCHEMA)


#: Hosts planned into one manifest table (one Parquet row group of ~24 rows per host): with parts in brick order,
#: 4c reads the row groups of its bricks and skips the rest by their brickname statistics.
HOSTS_PER_ROW_GROUP = 64


#: Hosts shipped to one 4a task at most (~10 MB of host rows in its task payload): more hosts than
#: ``partitions`` times this are cut into more runs (Spark warns of large tasks and refuses any over its RPC limit).
MAX_HOSTS_PER_TASK = 100_000


def brick_runs(hosts: pa.Table, partitions: int) -> list[pa.Table]:
    """The hosts in brick order, cut into runs of whole bricks with similar host counts: ``partitions`` runs, or
    more when a run would exceed :data:`MAX_HOSTS_PER_TASK` hosts.

    Each run becomes one manifest part, so a part holds whole bricks in order and a 4c task, which
    takes a run of whole bricks, reads one or two parts instead of every part. Hosts without a brick
    (cutouts without a position) come last and may be cut anywhere.
    """
    hosts = hosts.sort_by([("brickname", "ascending")])   # stable: a brick's hosts keep their input order
    bricks = hosts.column("brickname").to_pylist()
    starts = [i for i in range(len(bricks)) if i == 0 or bricks[i] is None or bricks[i] != bricks[i - 1]]
    starts.append(len(bricks))
    counts = [b - a for a, b in zip(starts[:-1], starts[1:], strict=True)]
    n_runs = max(int(partitions), math.ceil(len(bricks) / MAX_HOSTS_PER_TASK))
    return [hosts.slice(starts[r.start], starts[r.stop] - starts[r.start]) for r in stage.balanced_runs(counts, n_runs)]


def plan_payloads(batches: Iterable[pa.RecordBatch], cfg: InjectionConfig, config_hash: str) -> Iterator[pa.Table]:
    """Task payloads (the hosts of one :func:`brick_runs` run) -> manifest tables of HOSTS_PER_ROW_GROUP hosts each."""
    for batch in batches:
        for payload in batch.column("payload").to_pylist():
            hosts = stage.payload_table(payload)
            yield from plan_batches(hosts.to_batches(max_chunksize=HOSTS_PER_ROW_GROUP), cfg, config_hash)


def run(parent_uri: str | None, cfg: InjectionConfig, out_uri: str, partitions: int = 4, overwrite: bool = False,
        spark=None, hosts_uri: str | None = None) -> dict:
    """Plan the manifest with Spark and commit it with ``_manifest.json``; returns the manifest dict.

    The hosts are the rows of the parent sample ``parent_uri`` or of the host dataset ``hosts_uri``.
    """
    from jobs.spark import get_spark

    t0 = time.perf_counter()
    hosts = read_hosts(hosts_uri, cfg.max_hosts) if hosts_uri else read_parent_sample(parent_uri, cfg.max_hosts)
    n_hosts_in = hosts.num_rows
    hosts, host_rejects = screen_hosts(hosts)
    if hosts.num_rows == 0:
        raise ConfigError("hosts" if hosts_uri else "parent", hosts_uri or parent_uri,
                          f"has no usable host ({n_hosts_in} rows, {len(host_rejects)} rejected: bad position or brick)")
    outputs.prepare_output(out_uri, overwrite, (parent_uri, hosts_uri))
    storage.write_parquet(pa.Table.from_pylist(host_rejects, REJECT_SCHEMA), storage.join(out_uri, outputs.REJECTS_FILE))
    spark = spark or get_spark("dhs-4a-manifest")
    tasks = stage.task_rdd(spark, [stage.table_payload(t) for t in brick_runs(hosts, partitions)])
    config_hash = cfg.config_hash()
    run_id, reports = stage.run_partitions(tasks, lambda b: plan_payloads(b, cfg, config_hash), out_uri, MANIFEST_SCHEMA)
    seconds = time.perf_counter() - t0
    n_rows = sum(r["rows"] for r in reports)
    per_host = len(cfg.lens.theta_e_arcsec) * cfg.n_replicates
    by_reason: dict = {}
    for r in host_rejects:
        by_reason[r["reason"]] = by_reason.get(r["reason"], 0) + 1
    extra = {"n_hosts": hosts.num_rows, "pairs_per_host": per_host, "hosts_in": n_hosts_in,
             "hosts_rejected": len(host_rejects), "hosts_rejected_by_reason": by_reason,
             "rejects_file": outputs.REJECTS_FILE}
    inputs = {"hosts": hosts_uri} if hosts_uri else {"parent": parent_uri}
    manifest = stage.commit_stage("4a_manifest", out_uri, run_id, reports, cfg.to_dict(), inputs,
                                  rows_in=n_rows, timings={"total_s": seconds}, extra=extra, replace=overwrite)
    print(stage.progress_line("4a manifest", n_rows, 0, seconds), file=sys.stderr)
    return manifest


def build_parser() -> argparse.ArgumentParser:
    p = stage.stage_parser("dhs manifest", __doc__)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--parent", help="parent-sample Parquet (DR10 columns RA, DEC, BRICKNAME, FLUX_G/R/Z, TYPE)")
    src.add_argument("--hosts", help="host dataset of `dhs hosts build` (real cutouts)")
    p.add_argument("--config", required=True, help="generation preset name (e.g. gen7, uber, demo) or YAML path")
    p.add_argument("--max-hosts", type=int, default=None, help="use only the first N hosts (tests, quick looks)")
    stage.add_output_args(p, "manifest")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    overrides = {"max_hosts": args.max_hosts} if args.max_hosts else {}
    try:
        cfg = load_config(args.config, overrides)  # fails here, before Spark starts
    except ConfigError as err:
        print(f"dhs manifest: {err}", file=sys.stderr)
        return 2
    manifest = run(args.parent, cfg, args.out, args.partitions, args.overwrite, hosts_uri=args.hosts)
    print(f"manifest: {manifest.get('rows_written', '?')} tasks -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

