"""One storage helper for local paths and ``s3://`` URIs, on ``pyarrow.fs``.

Every read and write of the project goes through here. S3 honours ``AWS_ENDPOINT_URL`` (a
local S3-compatible server in tests, nothing on EMR) and takes credentials from the standard
AWS chain only.
"""

from __future__ import annotations

import os

import pyarrow.fs as pafs


def is_s3(uri: str) -> bool:
    """True for ``s3://`` (and ``s3a://``) URIs."""
    return str(uri).startswith(("s3://", "s3a://"))


def resolve(uri: str) -> tuple[pafs.FileSystem, str]:
    """URI -> (filesystem, path inside it). Local paths are made absolute."""
    uri = str(uri)
    if is_s3(uri):
        bucket_key = uri.split("://", 1)[1]
        kwargs = {}
        endpoint = os.environ.get("AWS_ENDPOINT_URL") or os.environ.get("AWS_ENDPOINT_URL_S3")
        if endpoint:
            scheme, _, host = endpoint.partition("://")
            kwargs.update(endpoint_override=host or scheme, scheme=scheme if host else "https")
        region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
        if region:
            kwargs["region"] = region
        return pafs.S3FileSystem(**kwargs), bucket_key.rstrip("/")
    return pafs.LocalFileSystem(), os.path.abspath(uri)
