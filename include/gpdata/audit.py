"""Append-only, hash-chained audit log of every extract, refusal and erasure.

Each line is a JSON entry whose ``hash`` is SHA-256 over the previous entry's hash and the entry itself;
``audit.head`` keeps the last sequence number and hash, so removing the last entry is detected too.
``verify`` recomputes the chain and names the first entry that does not fit.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from pathlib import Path

from gpdata import storage
from gpdata.errors import GpdataError

GENESIS = "0" * 64


def _digest(prev: str, entry: dict) -> str:
    body = json.dumps({k: v for k, v in entry.items() if k != "hash"}, sort_keys=True, default=str)
    return hashlib.sha256((prev + body).encode()).hexdigest()


def audit_dir(store_root: Path) -> Path:
    return storage.root(store_root) / "_audit"


def entries(store_root: Path) -> list[dict]:
    path = audit_dir(store_root) / "audit.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line] if path.exists() else []


def append(store_root: Path, event: str, **fields) -> dict:
    folder = audit_dir(store_root)
    head_path = folder / "audit.head"
    head = json.loads(head_path.read_text()) if head_path.exists() else {"seq": 0, "hash": GENESIS}
    entry = {"seq": head["seq"] + 1, "at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), "event": event,
             **fields, "prev_hash": head["hash"]}
    entry["hash"] = _digest(head["hash"], entry)
    storage.append_text(folder / "audit.jsonl", json.dumps(entry, sort_keys=True, default=str) + "\n")
    storage.write_bytes_atomic(head_path, json.dumps({"seq": entry["seq"], "hash": entry["hash"]}).encode())
    return entry


def verify(store_root: Path) -> int:
    """Check the whole chain; returns the number of entries. Raises naming the first entry that fails."""
    prev, seq = GENESIS, 0
    for entry in entries(store_root):
        seq += 1
        if entry.get("seq") != seq:
            raise GpdataError(f"audit log: entry {seq} is missing or out of order (found {entry.get('seq')})")
        if entry.get("prev_hash") != prev or _digest(prev, entry) != entry.get("hash"):
            raise GpdataError(f"audit log: entry {seq} was altered (its hash does not match the chain)")
        prev = entry["hash"]
    head_path = audit_dir(store_root) / "audit.head"
    head = json.loads(head_path.read_text()) if head_path.exists() else {"seq": 0, "hash": GENESIS}
    if (head["seq"], head["hash"]) != (seq, prev):
        raise GpdataError(f"audit log: the head records {head['seq']} entries but the log holds {seq}: "
                          "entries were removed")
    return seq
