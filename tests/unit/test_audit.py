"""The audit chain proves its length: each way an attacker who can write the store would rewrite history is
detected, and concurrent writers never fork the chain."""

import hashlib
import json
import multiprocessing
import os

import pytest

from gpdata import audit, settings
from gpdata.errors import GpdataError


@pytest.fixture
def store(home):
    root = settings.load().store
    for i in range(5):
        audit.append(root, "extract", project=f"P{i}")
    return root


def _log(root):
    return audit.audit_dir(root) / "audit.jsonl"


def _rewrite(root, entries):
    _log(root).write_text("".join(json.dumps(e, sort_keys=True) + "\n" for e in entries))
    last = entries[-1] if entries else {"seq": 0, "hash": audit.GENESIS}
    (audit.audit_dir(root) / "audit.head").write_text(json.dumps({"seq": last["seq"], "hash": last["hash"]}))


def test_an_intact_log_verifies_and_the_head_is_published_outside_the_store(store):
    assert audit.verify(store) == 5
    published = json.loads(audit.published_head_path().read_text())
    assert [h["seq"] for h in published["stores"].values()] == [5]
    assert not audit.published_head_path().is_relative_to(store)


def test_truncating_the_log_and_rewriting_its_head_is_detected(store):
    _rewrite(store, audit.entries(store)[:3])
    with pytest.raises(GpdataError, match="published in the register records 5 entries but the log holds 3"):
        audit.verify(store)


def test_deleting_the_log_and_its_head_is_detected(store):
    _log(store).unlink()
    (audit.audit_dir(store) / "audit.head").unlink()
    with pytest.raises(GpdataError, match="records 5 entries but the log holds 0"):
        audit.verify(store)


@pytest.mark.parametrize("digest", ["plain sha-256", "another key"])
def test_recomputing_the_chain_without_the_audit_key_is_detected(store, digest):
    """An attacker removes entry 2 and recomputes every later hash, as a chain without a key would allow."""
    kept = [e for e in audit.entries(store) if e["seq"] != 2]
    prev = audit.GENESIS
    for seq, entry in enumerate(kept, start=1):
        entry.update(seq=seq, prev_hash=prev)
        body = json.dumps({k: v for k, v in entry.items() if k != "hash"}, sort_keys=True, default=str)
        if digest == "plain sha-256":
            entry["hash"] = hashlib.sha256((prev + body).encode()).hexdigest()
        else:
            entry["hash"] = audit._digest(b"\x01" * 32, prev, entry)
        prev = entry["hash"]
    _rewrite(store, kept)
    with pytest.raises(GpdataError, match="entry 1 was altered or written without the audit key"):
        audit.verify(store)


def test_a_release_manifest_anchors_the_chain_when_the_register_is_lost_too(store):
    entries = audit.entries(store)
    anchor = ("release 2026-11-30.1's manifest", {"seq": 4, "hash": entries[3]["hash"]})
    audit.published_head_path().unlink()  # the register is rebuilt from scratch, say
    _rewrite(store, entries[:2])
    with pytest.raises(GpdataError, match="release 2026-11-30.1's manifest records 4 entries but the log holds 2"):
        audit.verify(store, [anchor])


def test_an_empty_store_verifies_as_zero_entries_not_as_intact_history(home):
    assert audit.verify(settings.load().store) == 0


def test_production_mode_refuses_to_write_without_an_audit_key(home, monkeypatch):
    monkeypatch.setenv("GPDATA_MODE", "Production")
    with pytest.raises(audit.AuditKeyError, match="production mode needs an audit key"):
        audit.append(settings.load().store, "extract")
    key_file = home / "audit.key"
    key_file.write_text("ab" * 32)
    key_file.chmod(0o600)
    monkeypatch.setenv(audit.KEY_FILE_ENV, str(key_file))
    audit.append(settings.load().store, "extract")
    assert audit.verify(settings.load().store) == 1


def _writer(home: str, n: int) -> None:
    os.environ["GPDATA_HOME"] = home
    root = settings.load().store
    for i in range(n):
        audit.append(root, "extract", writer=os.getpid(), i=i)


def test_four_concurrent_writers_leave_one_chain_that_verifies(home):
    root = settings.load().store
    audit.append(root, "genesis")
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(str(home), 50)) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0, 0, 0]
    assert audit.verify(root) == 201
    assert sorted(e["seq"] for e in audit.entries(root)) == list(range(1, 202))


def test_production_refuses_an_audit_key_file_others_can_read(home, monkeypatch):
    key_file = home / "audit.key"
    key_file.write_text("cd" * 32)
    key_file.chmod(0o644)
    monkeypatch.setenv("GPDATA_MODE", "production")
    monkeypatch.setenv(audit.KEY_FILE_ENV, str(key_file))
    with pytest.raises(GpdataError, match="audit key file .* is open to group or others"):
        audit.append(settings.load().store, "extract")
    key_file.chmod(0o600)
    assert audit.append(settings.load().store, "extract")["seq"] == 1
