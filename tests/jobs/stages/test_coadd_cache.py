"""Stage 4b coadd cache: a real HTTP server (http.server in a thread) serving a synthetic DR10-layout sky,
copied into a real S3 server (SeaweedFS on 127.0.0.1).

Oracles: the sky's own files read from disk, boto3 listing/reading the bucket directly, and the HTTP
server's request log (what was fetched, how often).
"""

from __future__ import annotations

import hashlib
import http.server
import sys
import threading
import uuid
from pathlib import Path

import pyarrow as pa
import pytest

from jobs.runtime import outputs
from jobs.stages import coadd_cache, sky

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

MISSING_BRICK = "0001p000"   # a real brick name the server has no files for -> HTTP 404


@pytest.fixture(scope="module")
def sky_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("sky")
    sky.main(["--out", str(out), "--n-bricks", "1", "--size-pix", "300", "--n-lrg", "3"])
    return out


class _Handler(http.server.SimpleHTTPRequestHandler):
    """Serves the sky folder; fails the first ``fail_first`` GETs of every path with 503; logs requests."""

    fail_first = 0
    seen: dict = {}
    lock = threading.Lock()

    def do_GET(self):  # noqa: N802 - http.server's name
        with self.lock:
            n = self.seen[self.path] = self.seen.get(self.path, 0) + 1
        if n <= self.fail_first:
            self.send_error(503, "flaky")
            return
        super().do_GET()

    def log_message(self, *args):
        pass


@pytest.fixture
def http_sky(sky_dir):
    """(url template, handler class) of a server on a free port; the handler state is fresh per test."""
    handler = type("H", (_Handler,), {"seen": {}, "fail_first": 0, "lock": threading.Lock()})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0),
                                             lambda *a, **k: handler(*a, directory=str(sky_dir), **k))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/coadd/{{bri}}/{{brick}}/{{filename}}", handler
    server.shutdown()
    server.server_close()


def _manifest(tmp_path, bricks) -> str:
    """A committed 4a-like manifest (brickname column) made with the real commit machinery."""
    uri = str(tmp_path / f"manifest-{uuid.uuid4().hex[:6]}")
    t = pa.table({"task_id": [f"t{i}" for i in range(2 * len(bricks))], "brickname": [b for b in bricks for _ in "xy"]})
    reports = [outputs.write_attempt(t, uri, "r", 0, "a")]
    outputs.commit(uri, "r", reports, outputs.build_manifest("4a_manifest", {}, {}, t.num_rows, t.num_rows, 0, {}, {}))
    return uri


def _sky_brick(sky_dir: Path) -> tuple[str, list[Path]]:
    files = sorted((sky_dir / "coadd").rglob("*.fits.fz"))
    return files[0].parent.name, files


def _objects(s3, prefix) -> dict:
    client = s3.client()
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=s3.bucket, Prefix=prefix)
    return {o["Key"]: o["Size"] for p in pages for o in p.get("Contents", [])}


def test_brick_filenames_match_the_sky_layout(sky_dir):
    brick, files = _sky_brick(sky_dir)
    assert sorted(coadd_cache.brick_filenames(brick)) == sorted(p.name for p in files)
    assert len(files) == 10   # image, invvar, psfsize x grz + maskbits


def test_http_to_s3_with_a_missing_brick_then_resume(sky_dir, http_sky, s3_env, tmp_path):
    template, handler = http_sky
    brick, files = _sky_brick(sky_dir)
    prefix = f"cache-{uuid.uuid4().hex[:8]}"
    dest = f"s3://{s3_env.bucket}/{prefix}"
    manifest = _manifest(tmp_path, [brick, MISSING_BRICK])
    cfg = coadd_cache.CacheConfig(workers=2, retries=2, backoff_s=0.0)
    r = coadd_cache.run(manifest, template, dest, cfg, progress=False)
    assert r["fetched"] == [brick] and r["skipped"] == []
    assert [f["brick"] for f in r["failed"]] == [MISSING_BRICK] and "HTTP 404" in r["failed"][0]["reason"]
    # a 404 is final: one request for the missing brick's first file, no retries
    assert sum(v for k, v in handler.seen.items() if MISSING_BRICK in k) == 1

    objs = _objects(s3_env, prefix + "/")
    client = s3_env.client()
    for f in files:
        key = f"{prefix}/coadd/{brick[:3]}/{brick}/{f.name}"
        body = client.get_object(Bucket=s3_env.bucket, Key=key)["Body"].read()
        assert hashlib.sha256(body).hexdigest() == hashlib.sha256(f.read_bytes()).hexdigest()
    assert not any(MISSING_BRICK in k for k in objs)            # a failed brick leaves nothing behind
    assert f"{prefix}/_cache_report.json" in objs
    assert r["bytes_fetched"] == sum(f.stat().st_size for f in files)

    # resume: the second run contacts the server for nothing that is already cached
    before = dict(handler.seen)
    r2 = coadd_cache.run(manifest, template, dest, cfg, progress=False)
    assert r2["fetched"] == [] and r2["skipped"] == [brick] and len(r2["failed"]) == 1
    assert {k: v for k, v in handler.seen.items() if brick in k} == {k: v for k, v in before.items() if brick in k}

    # a cached object that lost bytes no longer counts as cached: the brick is fetched again
    key = f"{prefix}/coadd/{brick[:3]}/{brick}/{files[0].name}"
    client.put_object(Bucket=s3_env.bucket, Key=key, Body=b"truncated")
    r3 = coadd_cache.run(manifest, template, dest, cfg, progress=False)
    assert r3["fetched"] == [brick]
    assert client.head_object(Bucket=s3_env.bucket, Key=key)["ContentLength"] == files[0].stat().st_size


def test_flaky_server_is_retried_with_exponential_backoff(sky_dir, http_sky, tmp_path):
    template, handler = http_sky
    handler.fail_first = 2                      # every file: 503, 503, then 200
    brick, files = _sky_brick(sky_dir)
    waits = []
    cfg = coadd_cache.CacheConfig(workers=1, retries=3, backoff_s=0.5)
    r = coadd_cache.run(_manifest(tmp_path, [brick]), template, str(tmp_path / "cache"), cfg, progress=False,
                        sleep=waits.append)
    assert r["fetched"] == [brick] and r["attempts"] == 3 * len(files)
    assert waits == [0.5, 1.0] * len(files)     # backoff_s * 2**attempt before each retry
    for f in files:
        assert (tmp_path / "cache" / "coadd" / brick[:3] / brick / f.name).read_bytes() == f.read_bytes()


def test_retries_exhausted_fail_the_brick_without_partial_files(sky_dir, http_sky, tmp_path):
    template, handler = http_sky
    handler.fail_first = 2
    brick, _ = _sky_brick(sky_dir)
    cfg = coadd_cache.CacheConfig(workers=1, retries=1, backoff_s=0.0)
    dest = tmp_path / "cache"
    assert coadd_cache.main(["--manifest", _manifest(tmp_path, [brick]), "--source", template, "--dest", str(dest),
                             "--retries", "1", "--backoff-s", "0", "--no-progress"]) == 1   # every brick failed
    r = coadd_cache.run(_manifest(tmp_path, [brick]), template, str(dest), cfg, progress=False)
    assert r["fetched"] == [] and "HTTP 503 (after 2 attempt(s))" in r["failed"][0]["reason"]
    assert not list((dest / "coadd").rglob("*.fits.fz"))


def test_storage_source_local_root(sky_dir, tmp_path):
    brick, files = _sky_brick(sky_dir)
    r = coadd_cache.run(_manifest(tmp_path, [brick]), str(sky_dir), str(tmp_path / "c"), progress=False)
    assert r["fetched"] == [brick]
    assert sorted(p.name for p in (tmp_path / "c" / "coadd" / brick[:3] / brick).glob("*.fits.fz")) == \
        sorted(f.name for f in files)
    with pytest.raises(ValueError, match="workers"):
        coadd_cache.CacheConfig(workers=0)
