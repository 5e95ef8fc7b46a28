"""Plain helpers for tests (importable as ``support``; fixtures live in conftest.py)."""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def shared_data_dir() -> Path:
    """``$DHS_SHARED_DATA`` or ``../shared/data`` beside the repository."""
    return Path(os.environ.get("DHS_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))


class CutoutService:
    """A stand-in of the Legacy Surveys cutout service on 127.0.0.1: serves ``body`` for any position,
    404 for positions whose URL contains one of ``missing``, 503 for the first ``failures`` requests;
    counts requests and keeps their paths. Use as a context manager; ``template`` is its URL template."""

    def __init__(self, body: bytes, missing: tuple = (), failures: int = 0):
        import http.server
        import threading

        outer = self
        self.body, self.missing, self.failures_left, self.requests, self.paths = body, missing, failures, 0, []

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - http.server API
                outer.requests += 1
                outer.paths.append(self.path)
                if outer.failures_left > 0:
                    outer.failures_left -= 1
                    self.send_error(503)
                elif any(m in self.path for m in outer.missing):
                    self.send_error(404)
                else:
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(outer.body)))
                    self.end_headers()
                    self.wfile.write(outer.body)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.template = f"http://127.0.0.1:{self.server.server_port}/cutout.fits?ra={{ra}}&dec={{dec}}&size={{size}}"

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()
