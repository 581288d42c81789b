"""Where the curated store lives: a local folder, or an S3 URI (``s3://bucket/prefix``) on any S3 API.

``root(value)`` gives a local ``Path`` for a folder, and for an ``s3://`` URI a ``StorePath``: a pathlib-like
object (universal_pathlib) over pyarrow's S3 filesystem, so the store's code joins, globs, reads and writes
the small JSON files under the root the same way for both. Delta tables get the same credentials through
``delta_options`` (delta-rs does its own I/O).

Credentials and endpoint come from the environment when the root is made: ``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``, ``AWS_ENDPOINT_URL`` (an S3-compatible store such as
MinIO) and ``AWS_REGION``. Without keys, both pyarrow and delta-rs fall back to the AWS default chain
(instance profile, web identity). The Airflow layer may fill these from an Airflow connection
(``GPDATA_STORE_CONN_ID``, see plugins/gpdata_airflow/store_connection.py); this module imports no Airflow.

Concurrent writers: delta-rs 1.x commits to S3 with conditional writes (put-if-absent, ``If-None-Match``),
so two writers racing for the same table version cannot overwrite each other's commit; the loser retries
or fails with a commit conflict. ``delta_options`` asks for it explicitly (``conditional_put``) and never
sets ``AWS_S3_ALLOW_UNSAFE_RENAME``. The object store must support conditional writes (AWS S3 since 2024,
MinIO, and moto's server do).
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from upath.implementations.cloud import S3Path

from gpdata.errors import GpdataError

REMOTE_SCHEMES = ("s3://",)
_ENV = {"key": "AWS_ACCESS_KEY_ID", "secret": "AWS_SECRET_ACCESS_KEY", "token": "AWS_SESSION_TOKEN",
        "endpoint_url": "AWS_ENDPOINT_URL", "region": "AWS_REGION"}


class StorePath(S3Path):
    """An ``s3://`` path whose file operations go through pyarrow's S3 filesystem (no s3fs needed)."""

    _protocol_dispatch = False

    @classmethod
    def _fs_factory(cls, urlpath: str, protocol: str, storage_options: Any):
        from fsspec.implementations.arrow import ArrowFSWrapper
        from pyarrow.fs import S3FileSystem

        opts = dict(storage_options)
        kwargs: dict[str, Any] = {"region": opts.get("region") or "us-east-1"}
        if opts.get("key"):
            kwargs.update(access_key=opts["key"], secret_key=opts.get("secret"), session_token=opts.get("token"))
        if opts.get("endpoint_url"):
            endpoint = urlsplit(opts["endpoint_url"])
            kwargs.update(endpoint_override=endpoint.netloc, scheme=endpoint.scheme or "https")
        return ArrowFSWrapper(S3FileSystem(**kwargs))


# Every file gpdata writes is for its owner and group only (0640, folders 0750): the pipeline, the CLI and the
# dissemination tasks run under this umask. The public register is the one exception (share.register).
UMASK = 0o027


def restrict_umask() -> int:
    """Tighten the process umask to at least ``UMASK`` (never loosen a stricter one); returns the old one."""
    old = os.umask(UMASK)
    os.umask(old | UMASK)
    return old


def is_remote(path: Any) -> bool:
    return isinstance(path, StorePath) or str(path).startswith(REMOTE_SCHEMES)


def s3_options(env: dict[str, str] | None = None) -> dict[str, str]:
    """Credentials, endpoint and region for S3 from the environment (only those that are set)."""
    env = os.environ if env is None else env
    out = {name: env[var] for name, var in _ENV.items() if env.get(var)}
    if "endpoint_url" not in out and env.get("AWS_ENDPOINT_URL_S3"):
        out["endpoint_url"] = env["AWS_ENDPOINT_URL_S3"]
    if "region" not in out and env.get("AWS_DEFAULT_REGION"):
        out["region"] = env["AWS_DEFAULT_REGION"]
    return out


def root(value: Any, env: dict[str, str] | None = None) -> Path | StorePath:
    """A store location as a path object: ``Path`` for a folder, ``StorePath`` for an ``s3://`` URI
    (credentials from ``env``, default the process environment). A path object is returned as it is."""
    if isinstance(value, StorePath):
        return value
    text = str(value)
    if "://" in text and not text.startswith(REMOTE_SCHEMES):
        raise GpdataError(f"store location {text!r}: only local folders and s3:// URIs are supported")
    if text.startswith(REMOTE_SCHEMES):
        if not urlsplit(text).netloc:
            raise GpdataError(f"store location {text!r}: no bucket named")
        return StorePath(text.rstrip("/"), protocol="s3", **s3_options(env))
    return Path(value)


def uri(path: Any) -> str:
    return str(path)


def delta_options(path: Any) -> dict[str, str] | None:
    """deltalake ``storage_options`` for a table under the store (None for a local folder)."""
    if not isinstance(path, StorePath):
        return None
    opts = dict(path.storage_options)
    out = {"conditional_put": "etag"}  # put-if-absent commits: safe with concurrent writers
    out.update({_ENV[k]: v for k, v in opts.items() if k in _ENV and v})
    if opts.get("endpoint_url", "").startswith("http://"):
        out["AWS_ALLOW_HTTP"] = "true"
    return out


def delta_table(path: Any, version: int | None = None):
    """The Delta table at ``path`` (a local folder or under an s3:// root)."""
    from deltalake import DeltaTable

    return DeltaTable(uri(path), version=version, storage_options=delta_options(path))


def write_delta(path: Any, data, **kwargs) -> None:
    from deltalake import write_deltalake

    write_deltalake(uri(path), data, storage_options=delta_options(path), **kwargs)


def write_bytes_atomic(path: Any, data: bytes) -> None:
    """Readers see the old content or the new, never part: rename locally; one PUT (atomic) on S3."""
    if isinstance(path, StorePath):
        path.write_bytes(data)
        return
    import tempfile

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.replace(tmp, path)


@contextlib.contextmanager
def file_lock(path: Path):
    """An exclusive lock on a local lock file (made if missing), held for the ``with`` block."""
    import fcntl

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def append_text(path: Any, text: str) -> None:
    """Append to a log file (locally with fsync). On S3, where objects cannot be appended to, the object is
    rewritten whole: callers serialise their appends (one writer at a time)."""
    if isinstance(path, StorePath):
        before = path.read_text() if path.exists() else ""
        path.write_text(before + text)
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())


def write_parquet(path: Any, table) -> None:
    import io

    import pyarrow.parquet as pq

    buf = io.BytesIO()
    pq.write_table(table, buf)
    write_bytes_atomic(path, buf.getvalue())


def read_parquet(path: Any):
    import pyarrow.parquet as pq

    if isinstance(path, StorePath):
        with path.open("rb") as fh:
            return pq.read_table(fh)
    return pq.read_table(path)


def write_json_atomic(path: Path, doc: dict) -> None:
    """Write JSON atomically (by rename locally, one PUT on S3): a reader sees the old file or the new one,
    never half of one."""
    write_bytes_atomic(root(path), json.dumps(doc, indent=2, sort_keys=True, default=str).encode())


def read_json(path: Path) -> dict | None:
    """A JSON document written by write_json_atomic, or None if there is none."""
    path = root(path)
    return json.loads(path.read_text()) if path.exists() else None
