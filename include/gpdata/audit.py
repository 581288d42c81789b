"""Append-only audit log of every extract, refusal, release, erasure and key rotation, chained under a key and
anchored outside the store.

* **Keyed chain.** Each entry's ``hash`` is HMAC-SHA256, under the *audit key*, of the previous entry's hash and
  the entry itself. Someone who can write the store but does not hold the audit key cannot rewrite history and
  recompute a chain that verifies (plain SHA-256, or any other key, is detected). The audit key comes from
  ``GPDATA_AUDIT_KEY_FILE`` (a file holding 64 hex digits; in compose a file secret of the workers only) or
  ``GPDATA_AUDIT_KEY``; production mode (``GPDATA_MODE=production``) refuses to run without one. In
  development a key is made once at ``.secrets/dev-audit.key`` in the checkout (``GPDATA_SECRETS_DIR``).
* **One writer at a time.** Locally, appends hold an exclusive lock (``_audit/audit.lock``) while they read the
  head and write the entry, so concurrent tasks never fork the chain. On S3 each entry is its own object,
  ``_audit/entries/<seq>.json``, written put-if-absent (``If-None-Match: *``): of two writers racing for one
  sequence number one wins and the other re-reads the head and retries.
* **An anchor the store cannot rewrite.** At every append the head (sequence number and hash) is published
  outside the store, in the public register folder (``register/audit-head.json``); each release manifest
  records the head too. ``verify`` checks the chain against every anchor it is given, so truncating the log
  and rewriting ``audit.head`` beside it, or deleting both, is detected.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import hmac
import json
import os
import secrets
from pathlib import Path

from gpdata import settings as settings_mod
from gpdata import storage
from gpdata.errors import ConfigError, GpdataError

GENESIS = "0" * 64
KEY_ENV, KEY_FILE_ENV = "GPDATA_AUDIT_KEY", "GPDATA_AUDIT_KEY_FILE"
PUBLISHED_HEAD = "audit-head.json"
_S3_RETRIES = 50


class AuditKeyError(ConfigError):
    """The audit key is missing, unreadable or too short."""


def _parse_key(text: str, where: str) -> bytes:
    try:
        key = bytes.fromhex(text.strip())
    except ValueError:
        raise AuditKeyError(f"audit key {where} is not hexadecimal") from None
    if len(key) < 32:
        raise AuditKeyError(f"audit key {where} is {len(key)} bytes: at least 32 are needed")
    return key


def audit_key(env: dict[str, str] | None = None) -> bytes:
    env = os.environ if env is None else env
    if env.get(KEY_FILE_ENV):
        path = Path(env[KEY_FILE_ENV])
        settings_mod.check_secret_file(path, "audit key file", env)  # production: owner-only
        try:
            return _parse_key(path.read_text(), f"file {path}")
        except OSError as exc:
            raise AuditKeyError(f"audit key file {path} cannot be read ({exc.strerror})") from None
    if env.get(KEY_ENV):
        return _parse_key(env[KEY_ENV], f"in {KEY_ENV}")
    if settings_mod.production_mode(env):
        raise AuditKeyError(f"production mode needs an audit key: set {KEY_FILE_ENV} to a file holding 64 hex "
                            "digits, readable by the services that write the audit log only")
    return _development_key(settings_mod.load(env).secrets / "dev-audit.key")


def _development_key(path: Path) -> bytes:
    """Made once, atomically (the first of several processes to get here wins; the others read its key)."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(secrets.token_hex(32))
        tmp.chmod(0o600)
        with contextlib.suppress(FileExistsError):
            os.link(tmp, path)
        tmp.unlink()
    return _parse_key(path.read_text(), f"file {path}")


def _digest(key: bytes, prev: str, entry: dict) -> str:
    body = json.dumps({k: v for k, v in entry.items() if k != "hash"}, sort_keys=True, default=str)
    return hmac.new(key, (prev + body).encode(), hashlib.sha256).hexdigest()


def audit_dir(store_root: Path) -> Path:
    return storage.root(store_root) / "_audit"


def entries(store_root: Path) -> list[dict]:
    folder = audit_dir(store_root)
    if storage.is_remote(folder):
        return [json.loads(p.read_text()) for p in sorted((folder / "entries").glob("*.json"), key=lambda p: p.name)]
    path = folder / "audit.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line] if path.exists() else []


def head(store_root: Path) -> dict:
    """The last entry's sequence number and hash (``{"seq": 0, "hash": GENESIS}`` for an empty log)."""
    folder = audit_dir(store_root)
    if storage.is_remote(folder):
        return _last_s3(folder)
    path = folder / "audit.head"
    return json.loads(path.read_text()) if path.exists() else {"seq": 0, "hash": GENESIS}


def _last_s3(folder) -> dict:
    """On S3 the head is the last entry object: one listing, one read (the names sort by sequence number)."""
    names = sorted((folder / "entries").glob("*.json"), key=lambda p: p.name)
    last = json.loads(names[-1].read_text()) if names else {"seq": 0, "hash": GENESIS}
    return {"seq": last["seq"], "hash": last["hash"]}


def _new_entry(key: bytes, last: dict, event: str, fields: dict) -> dict:
    entry = {"seq": last["seq"] + 1, "at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), "event": event,
             **fields, "prev_hash": last["hash"]}
    entry["hash"] = _digest(key, last["hash"], entry)
    return entry


def append(store_root: Path, event: str, **fields) -> dict:
    key = audit_key()
    folder = audit_dir(store_root)
    if storage.is_remote(folder):
        entry = _append_s3(folder, key, event, fields)
    else:
        with storage.file_lock(folder / "audit.lock"):
            entry = _new_entry(key, head(store_root), event, fields)
            storage.append_text(folder / "audit.jsonl", json.dumps(entry, sort_keys=True, default=str) + "\n")
            storage.write_bytes_atomic(folder / "audit.head",
                                       json.dumps({"seq": entry["seq"], "hash": entry["hash"]}).encode())
    publish_head(store_root, {"seq": entry["seq"], "hash": entry["hash"]})
    return entry


def _append_s3(folder, key: bytes, event: str, fields: dict) -> dict:
    """Put-if-absent of ``entries/<seq>.json``: a writer that loses the race re-reads the head and retries."""
    import boto3
    from botocore.exceptions import ClientError

    opts = folder.storage_options
    client = boto3.client("s3", endpoint_url=opts.get("endpoint_url"), region_name=opts.get("region"),
                          aws_access_key_id=opts.get("key"), aws_secret_access_key=opts.get("secret"),
                          aws_session_token=opts.get("token"))
    bucket, _, prefix = str(folder).removeprefix("s3://").partition("/")
    for _ in range(_S3_RETRIES):
        entry = _new_entry(key, _last_s3(folder), event, fields)
        try:
            client.put_object(Bucket=bucket, Key=f"{prefix}/entries/{entry['seq']:012d}.json", IfNoneMatch="*",
                              Body=json.dumps(entry, sort_keys=True, default=str).encode())
            return entry
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") not in ("PreconditionFailed", "ConditionalRequestConflict"):
                raise
    raise GpdataError(f"audit log: {_S3_RETRIES} attempts to append lost the race to other writers")


def _store_id(store_root: Path) -> str:
    """How the published head names a store: a digest of its location (the register is public)."""
    return hashlib.sha256(storage.uri(storage.root(store_root)).encode()).hexdigest()[:16]


def published_head_path() -> Path:
    return settings_mod.load().register / PUBLISHED_HEAD


def publish_head(store_root: Path, last: dict) -> None:
    """Record the head in the register (outside the store) unless a later head is recorded already."""
    path = published_head_path()
    with storage.file_lock(path.with_name(".audit-head.lock")):
        doc = storage.read_json(path) or {"stores": {}}
        sid = _store_id(store_root)
        if doc["stores"].get(sid, {}).get("seq", 0) < last["seq"]:
            doc["stores"][sid] = {"seq": last["seq"], "hash": last["hash"],
                                  "at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")}
            storage.write_bytes_atomic(path, json.dumps(doc, indent=2, sort_keys=True).encode())
            path.chmod(0o644)  # public, like the register beside it


def published_head(store_root: Path) -> dict | None:
    doc = storage.read_json(published_head_path()) or {}
    return (doc.get("stores") or {}).get(_store_id(store_root))


def verify(store_root: Path, anchors: list[tuple[str, dict]] = ()) -> int:
    """Check the whole chain under the audit key, then against the head beside it, the head published in the
    register and every further ``(where, head)`` anchor (release manifests). Returns the number of entries;
    raises naming the first thing that does not fit."""
    key = audit_key()
    prev, seq, hashes = GENESIS, 0, {}
    for entry in entries(store_root):
        seq += 1
        if entry.get("seq") != seq:
            raise GpdataError(f"audit log: entry {seq} is missing or out of order (found {entry.get('seq')})")
        if entry.get("prev_hash") != prev or not hmac.compare_digest(_digest(key, prev, entry),
                                                                     str(entry.get("hash"))):
            raise GpdataError(f"audit log: entry {seq} was altered or written without the audit key (its hash "
                              "does not match the chain)")
        prev = hashes[seq] = entry["hash"]
    # on S3 the head is the last entry just read, so only a local log has a separate head to compare
    last = {"seq": seq, "hash": prev} if storage.is_remote(audit_dir(store_root)) else head(store_root)
    if (last["seq"], last["hash"]) != (seq, prev):
        raise GpdataError(f"audit log: the head records {last['seq']} entries but the log holds {seq}: "
                          "entries were removed")
    published = published_head(store_root)
    for where, anchor in [("the head published in the register", published), *anchors]:
        if not anchor:
            continue
        if anchor["seq"] > seq:
            raise GpdataError(f"audit log: {where} records {anchor['seq']} entries but the log holds {seq}: "
                              "entries were removed")
        if not hmac.compare_digest(hashes.get(anchor["seq"], GENESIS), anchor["hash"]):
            raise GpdataError(f"audit log: entry {anchor['seq']} differs from {where}: the log was rewritten")
    return seq
