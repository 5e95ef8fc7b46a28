"""Committed stage outputs: no partial dataset is ever visible, a retried task never duplicates rows.

Spark's own ``s3a://`` writer is not available, so each task writes its own Parquet file under a
staging prefix and the driver commits::

    <out>/_attempts/<run_id>/part-<i:05d>-<attempt>.parquet   written by task attempts (write_attempt)
    <out>/part-<i:05d>.parquet                                 moved there by commit(), one per non-empty partition
    <out>/_manifest.json                                       written LAST by commit(): its presence means "complete"

Spark returns a task's result only from its successful attempt, so the driver knows exactly which
attempt file of each partition to keep; files of failed or speculative attempts are deleted with
the staging prefix. Downstream stages open an input only through :func:`require_input` /
:func:`dataset_files`, which read the file list from ``_manifest.json`` and never list the folder.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import importlib.metadata
import os
import platform
import socket
import subprocess

import pyarrow as pa
import pyarrow.parquet as pq

import dhs_gen
from dhs_gen.errors import DhsError, InvalidValueError, check_range
from jobs.runtime import storage
from jobs.runtime.config import REPO_ROOT

MANIFEST_NAME = "_manifest.json"
ATTEMPTS_DIR = "_attempts"
#: Version of the manifest layout (bump when keys change meaning).
MANIFEST_FORMAT = "dhs-manifest/1"
#: Distributions whose versions are recorded in every manifest (absent ones are skipped).
RECORDED_PACKAGES = ("numpy", "scipy", "astropy", "pyarrow", "pyspark", "pandas", "lenstronomy", "torch", "boto3")


class OutputExistsError(DhsError, FileExistsError):
    """A stage output already holds a committed dataset (or part files) and ``overwrite`` was not given."""

    def __init__(self, path: str, found: str):
        self.path, self.found = path, found
        super().__init__(f"output {path!r} already holds {found}; pass --overwrite to replace it "
                         "(or choose another output path)", value=path)

    def __reduce__(self):
        return type(self), (self.path, self.found)


class MissingInputError(DhsError, FileNotFoundError):
    """A stage input without ``_manifest.json``: absent, or its producing stage did not finish."""

    def __init__(self, path: str, stage: str | None = None, detail: str = ""):
        self.path, self.stage, self.detail = path, stage, detail
        producer = f"stage {stage!r}" if stage else "its producing stage"
        super().__init__(f"input {path!r} has no {MANIFEST_NAME}: it is not a complete output. "
                         f"Run {producer} to produce it (or wait until it finishes){detail}", value=path)

    def __reduce__(self):
        return type(self), (self.path, self.stage, self.detail)


def _check_token(name: str, value) -> str:
    text = str(value)
    if not text or "/" in text or text.startswith(".") or any(c.isspace() for c in text):
        raise InvalidValueError(name, value, "a non-empty name without '/', whitespace or a leading '.'")
    return text


def part_name(partition_index: int) -> str:
    """File name of a committed partition: ``part-<i:05d>.parquet``."""
    i = int(check_range("partition_index", partition_index, 0, 99999))
    return f"part-{i:05d}.parquet"


def attempt_path(out_uri: str, run_id: str, partition_index: int, attempt_id: str) -> str:
    """URI of one task attempt's file: ``<out>/_attempts/<run_id>/part-<i:05d>-<attempt_id>.parquet``.

    Parameters
    ----------
    out_uri : str
        Stage output directory (local or ``s3://``).
    run_id : str
        Identifier of this stage run (driver-chosen, shared by all its tasks).
    partition_index : int
        Spark partition id, 0..99999.
    attempt_id : str
        Unique per attempt, e.g. ``f"{TaskContext.get().attemptNumber()}-{uuid4().hex}"``.
    """
    stem = part_name(partition_index)[: -len(".parquet")]
    return storage.join(out_uri, ATTEMPTS_DIR, _check_token("run_id", run_id),
                        f"{stem}-{_check_token('attempt_id', attempt_id)}.parquet")


def task_attempt() -> tuple[int, str]:
    """``(partition_index, attempt_id)`` of the running Spark task, for :func:`write_attempt`.

    The attempt id is ``"<attemptNumber>-<uuid4 hex>"``: unique even when a speculative copy of the
    same attempt number runs elsewhere. Only valid inside a Spark task.
    """
    import uuid

    from pyspark import TaskContext

    ctx = TaskContext.get()
    if ctx is None:
        raise RuntimeError("task_attempt() must be called inside a Spark task")
    return int(ctx.partitionId()), f"{ctx.attemptNumber()}-{uuid.uuid4().hex}"


def write_attempt(table: pa.Table, out_uri: str, run_id: str, partition_index: int, attempt_id: str) -> dict:
    """Write one task attempt's rows (inside a Spark task); a zero-row table writes nothing.

    Returns
    -------
    dict
        ``{"partition": partition_index, "path": uri or None, "rows": n}`` to hand to :func:`commit`.
    """
    uri = attempt_path(out_uri, run_id, partition_index, attempt_id)
    if table.num_rows == 0:
        return {"partition": int(partition_index), "path": None, "rows": 0}
    storage.write_parquet(table, uri)
    return {"partition": int(partition_index), "path": uri, "rows": int(table.num_rows)}


def _validated_reports(out_uri: str, run_id: str, reports: list[dict]) -> list[dict]:
    """Check one report per partition, each non-empty one pointing at an attempt file of this run."""
    staging = storage.join(out_uri, ATTEMPTS_DIR, run_id) + "/"
    seen, checked = set(), []
    for r in reports:
        i = int(check_range("partition", r.get("partition"), 0, 99999))
        rows = int(check_range(f"rows of partition {i}", r.get("rows"), 0, 2**62))
        path = r.get("path")
        if i in seen:
            raise InvalidValueError("reports", f"partition {i} reported twice",
                                    "one report per partition (only the successful attempt's)")
        seen.add(i)
        if rows and not (isinstance(path, str) and path.startswith(staging)):
            raise InvalidValueError(f"path of partition {i}", path, f"an attempt file under {staging}")
        checked.append({"partition": i, "path": path if rows else None, "rows": rows})
    return sorted(checked, key=lambda r: r["partition"])


def commit(out_uri: str, run_id: str, reports: list[dict], manifest: dict, replace: bool = False) -> dict:
    """Publish the reported attempt files as the dataset; call on the driver after every task succeeded.

    Steps: check every reported file exists and holds the reported rows (Parquet footer); with
    ``replace``, only now retire the dataset already there (its ``_manifest.json`` first, then its
    part files), so a run that is killed or fails before this point leaves it intact; move each
    attempt file to ``<out>/part-<i:05d>.parquet``, delete ``<out>/_attempts`` (orphans of earlier
    killed runs included), then write ``<out>/_manifest.json`` last.

    Parameters
    ----------
    out_uri : str
        Stage output directory (prepared with :func:`prepare_output`).
    run_id : str
        The run whose attempts are committed.
    reports : list of dict
        ``{"partition", "path", "rows"}`` per partition, as returned by :func:`write_attempt`;
        zero-row partitions (``path`` None) get no file but are counted.
    manifest : dict
        From :func:`build_manifest`; ``files``, ``file_rows``, ``partitions``, ``run_id`` and
        ``committed_utc`` are added. When it has ``rows_written`` and ``rows_rejected``, their sum must
        equal the rows in the files (rejected rows are kept, flagged, in the data).

    Returns
    -------
    dict
        The manifest as written.
    """
    run_id = _check_token("run_id", run_id)
    if storage.exists(storage.join(out_uri, MANIFEST_NAME)) and not replace:
        raise OutputExistsError(str(out_uri), f"a committed {MANIFEST_NAME} (commit runs once per output)")
    checked = _validated_reports(out_uri, run_id, reports)
    total = sum(r["rows"] for r in checked)
    if "rows_written" in manifest and "rows_rejected" in manifest:
        expected = int(manifest["rows_written"]) + int(manifest["rows_rejected"])
        if expected != total:
            raise InvalidValueError("reports", f"{total} rows in attempt files",
                                    f"must equal rows_written + rows_rejected = {expected} from the manifest")
    # Verify everything before moving anything: a failed check leaves the output untouched.
    for r in checked:
        if r["path"] is None:
            continue
        fs, path = storage.resolve(r["path"])
        with fs.open_input_file(path) as f:
            n = pq.ParquetFile(f).metadata.num_rows
        if n != r["rows"]:
            raise InvalidValueError(f"rows of partition {r['partition']}", r["rows"],
                                    f"the attempt file {r['path']} holds {n} rows")
    retire_dataset(out_uri)
    files, file_rows = [], {}
    for r in checked:
        if r["path"] is None:
            continue
        name = part_name(r["partition"])
        storage.move(r["path"], storage.join(out_uri, name))
        files.append(name)
        file_rows[name] = r["rows"]
    storage.delete_tree(storage.join(out_uri, ATTEMPTS_DIR))   # this run's and any killed run's
    final = dict(manifest)
    final.update(files=files, file_rows=file_rows, run_id=run_id,
                 partitions={"total": len(checked), "empty": sum(1 for r in checked if r["rows"] == 0)},
                 rows_in_files=total, committed_utc=_utc_now())
    storage.write_json(storage.join(out_uri, MANIFEST_NAME), final)
    return final


def retire_dataset(out_uri: str) -> None:
    """Delete the committed dataset at ``out_uri``: ``_manifest.json`` first (it stops counting as
    complete), then its part files; other files in the folder are left alone (a stage writes its
    ``_rejects.parquet`` anew, before it commits)."""
    storage.delete_file(storage.join(out_uri, MANIFEST_NAME))
    for uri in _part_files(out_uri):
        storage.delete_file(uri)


def _part_files(out_uri: str) -> list[str]:
    return [u for u in storage.list_files(out_uri, suffix=".parquet") if u.rsplit("/", 1)[-1].startswith("part-")]


def _norm(uri: str) -> str:
    text = str(uri).rstrip("/")
    return text if storage.is_s3(text) else os.path.abspath(text)


def refuse_overlap(out_uri: str, inputs) -> None:
    """Raise before anything is touched when ``out_uri`` is, contains or lies inside one of ``inputs``."""
    out = _norm(out_uri)
    for inp in inputs:
        if not inp:
            continue
        i = _norm(inp)
        if out == i or i.startswith(out + "/") or out.startswith(i + "/"):
            raise InvalidValueError("out", str(out_uri), f"is, contains or lies inside the input {inp}: "
                                    "an output may not replace what it reads; choose another --out")


def prepare_output(out_uri: str, overwrite: bool, inputs=()) -> None:
    """Make sure a stage may write ``out_uri``: refuse an existing dataset unless ``overwrite``, and any
    ``out_uri`` that overlaps one of ``inputs`` (:func:`refuse_overlap`), before anything is deleted.

    With ``overwrite`` nothing is deleted here: the old dataset stays complete and readable until
    its successor is committed (:func:`commit` with ``replace``, :func:`write_single_part`).

    Raises
    ------
    OutputExistsError
        ``out_uri`` holds a ``_manifest.json`` or part files and ``overwrite`` is False.
    """
    refuse_overlap(out_uri, inputs)
    manifest_uri = storage.join(out_uri, MANIFEST_NAME)
    if storage.exists(out_uri) and not storage.is_dir(out_uri):
        raise OutputExistsError(str(out_uri), "a file (an output must be a directory)")
    has_manifest, parts = storage.exists(manifest_uri), _part_files(out_uri)
    if not (has_manifest or parts):
        return
    if not overwrite:
        found = f"a committed dataset ({MANIFEST_NAME})" if has_manifest else f"{len(parts)} part file(s)"
        raise OutputExistsError(str(out_uri), found)


def _manifest_uri(uri: str) -> str:
    uri = str(uri).rstrip("/")
    return uri if uri.endswith(MANIFEST_NAME) else storage.join(uri, MANIFEST_NAME)


def read_manifest(uri: str) -> dict:
    """The ``_manifest.json`` of a stage output (``uri``: the output directory or the manifest file).

    Raises
    ------
    MissingInputError
        There is no manifest (the output is absent or incomplete).
    """
    try:
        return storage.read_json(_manifest_uri(uri))
    except FileNotFoundError:
        raise MissingInputError(str(uri)) from None


def require_input(uri: str, stage: str | None = None) -> dict:
    """The manifest of a stage input; refuse an input that is incomplete or from the wrong stage.

    Parameters
    ----------
    uri : str
        Input dataset directory.
    stage : str, optional
        The stage that should have produced it (e.g. ``"4a_manifest"``); named in the error and,
        when the manifest records one, checked against it.
    """
    try:
        manifest = storage.read_json(_manifest_uri(uri))
    except FileNotFoundError:
        detail = "" if storage.exists(uri) else "; the path does not exist"
        raise MissingInputError(str(uri), stage, detail) from None
    if stage is not None and manifest.get("stage") not in (None, stage):
        raise InvalidValueError("input stage", manifest.get("stage"),
                                f"{uri!r} must be an output of stage {stage!r}")
    return manifest


def dataset_files(uri) -> list[str]:
    """URIs of the committed part files of a dataset, as listed in its ``_manifest.json`` (``files``).

    ``uri`` is a stage output directory, its ``_manifest.json``, a single ``.parquet`` file (taken
    as is) or a list/tuple of any of these, whose files are concatenated in order.
    """
    if isinstance(uri, list | tuple):
        return [f for u in uri for f in dataset_files(u)]
    if str(uri).endswith(".parquet"):
        return [str(uri)]
    base = str(uri).rstrip("/")
    if base.endswith(MANIFEST_NAME):
        base = base[: -len(MANIFEST_NAME)].rstrip("/")
    return [storage.join(base, name) for name in read_manifest(base)["files"]]


def git_sha() -> str:
    """Commit of the code: ``git rev-parse HEAD`` of this repository, else ``$DHS_GIT_SHA``, else ``"unknown"``.

    On EMR the code ships as a zip without ``.git``; the launcher sets ``DHS_GIT_SHA``.
    """
    return (_git("rev-parse", "HEAD") or "").strip() or os.environ.get("DHS_GIT_SHA") or "unknown"


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.decode("utf-8", "replace")


def git_provenance() -> dict:
    """Where the code came from: ``commit``, ``branch``, ``dirty`` (tracked files differ from the commit)
    and, when dirty, ``diff_sha256`` (sha256 of ``git diff HEAD``), so an edited tree never passes for
    its commit. Without ``.git`` (an EMR bundle): the commit of ``$DHS_GIT_SHA`` and None for the rest."""
    commit = git_sha()
    status = _git("status", "--porcelain", "--untracked-files=no")
    if status is None:
        return {"commit": commit, "branch": None, "dirty": None, "diff_sha256": None}
    dirty = bool(status.strip())
    diff = _git("diff", "HEAD") if dirty else None
    branch = (_git("rev-parse", "--abbrev-ref", "HEAD") or "").strip() or None
    return {"commit": commit, "branch": branch, "dirty": dirty,
            "diff_sha256": hashlib.sha256(diff.encode("utf-8")).hexdigest() if diff is not None else None}


def package_versions(names=RECORDED_PACKAGES) -> dict:
    """``{distribution: version}`` for the installed ones among ``names``."""
    versions = {}
    for name in names:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


def _utc_now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _count(name: str, value) -> int:
    if isinstance(value, bool) or int(check_range(name, value, 0, 2**62)) != float(value):
        raise InvalidValueError(name, value, "a whole number of rows >= 0")
    return int(value)


def build_manifest(stage: str, config: dict, inputs: dict, rows_in, rows_written, rows_rejected,
                   rejected_by_reason: dict, timings: dict, extra: dict | None = None) -> dict:
    """The provenance record of a stage output (written by :func:`commit` as ``_manifest.json``).

    Parameters
    ----------
    stage : str
        Stage name, e.g. ``"4c_inject"``.
    config : dict
        The resolved, JSON-serialisable configuration the stage ran with.
    inputs : dict
        ``{role: uri}`` of the inputs.
    rows_in, rows_written, rows_rejected : int
        Row counts (rows); ``rows_in`` must equal ``rows_written + rows_rejected``.
    rejected_by_reason : dict
        ``{reason: rows}``; the counts must add up to ``rows_rejected``.
    timings : dict
        ``{name: seconds}``.
    extra : dict, optional
        Stage-specific facts, stored under ``"extra"``.

    Raises
    ------
    InvalidValueError
        Row counts that do not add up: a stage must never lose rows.
    """
    rows_in, rows_written = _count("rows_in", rows_in), _count("rows_written", rows_written)
    rows_rejected = _count("rows_rejected", rows_rejected)
    if rows_in != rows_written + rows_rejected:
        raise InvalidValueError("rows_in", rows_in, f"must equal rows_written + rows_rejected = {rows_written} + "
                                f"{rows_rejected} = {rows_written + rows_rejected} (a stage must never lose rows)")
    reasons = {str(k): _count(f"rejected_by_reason[{k!r}]", v) for k, v in dict(rejected_by_reason).items()}
    if sum(reasons.values()) != rows_rejected:
        raise InvalidValueError("rejected_by_reason", reasons,
                                f"counts must add up to rows_rejected = {rows_rejected}")
    return {
        "format": MANIFEST_FORMAT,
        "stage": _check_token("stage", stage),
        "pipeline_version": dhs_gen.PIPELINE_VERSION,
        "git_sha": git_sha(),
        "git": git_provenance(),
        "config": config,
        "config_hash": storage.config_hash(config),
        "inputs": dict(inputs),
        "rows_in": rows_in,
        "rows_written": rows_written,
        "rows_rejected": rows_rejected,
        "rejected_by_reason": dict(sorted(reasons.items())),
        "timings": dict(timings),
        "extra": dict(extra or {}),
        "created_utc": _utc_now(),
        "hostname": socket.gethostname(),
        "python": platform.python_version(),
        "packages": package_versions(),
    }


REJECTS_FILE = "_rejects.parquet"


def write_single_part(stage: str, table: pa.Table, rejects: list[dict], out_uri: str, config: dict, inputs: dict,
                      overwrite: bool = False, timings: dict | None = None, extra: dict | None = None) -> dict:
    """Commit a driver-built dataset: ``part-00000.parquet``, ``_rejects.parquet``, then ``_manifest.json``.

    For outputs whose rejected inputs have no pixels to keep (anchors, hosts): the rejects
    (``jobs.runtime.schema.REJECT_SCHEMA`` rows) sit beside the data, counted, so
    ``rows_in = rows_written + rows_rejected``. Returns the manifest.
    """
    from jobs.runtime.schema import REJECT_SCHEMA

    prepare_output(out_uri, overwrite, [v for v in inputs.values() if isinstance(v, str)])
    by_reason: dict[str, int] = {}
    for r in rejects:
        by_reason[r["reason"]] = by_reason.get(r["reason"], 0) + 1
    manifest = build_manifest(stage, config, inputs, table.num_rows + len(rejects), table.num_rows, len(rejects),
                              by_reason, timings or {}, extra={**(extra or {}), "rejects_file": REJECTS_FILE})
    name = part_name(0)
    retire_dataset(out_uri)   # the new one is built in memory: the old one goes only now
    storage.write_parquet(table, storage.join(out_uri, name))
    storage.write_parquet(pa.Table.from_pylist(rejects, REJECT_SCHEMA), storage.join(out_uri, REJECTS_FILE))
    manifest.update(files=[name], file_rows={name: table.num_rows}, rows_in_files=table.num_rows,
                    committed_utc=manifest["created_utc"])
    storage.write_json(storage.join(out_uri, MANIFEST_NAME), manifest)
    return manifest
