"""The type 1 opt-out's building blocks, pinned one decision at a time (issue 23: every mutant of a guard is
caught): the store-wide register (versions, merge, re-keying), the refusals of untied or undated codes, the
scan of every event table, and the exclusion of every record of a dissenter."""

import datetime as dt

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gpdata import storage
from gpdata.codes import optout_codes
from gpdata.errors import GpdataError, SourceError
from gpdata.privacy import type1
from tests import factory as f

D1, D2, D3 = dt.date(2020, 1, 1), dt.date(2021, 1, 1), dt.date(2022, 1, 1)


def _events(*rows):
    return pa.table({"patient_pid": [r[0] for r in rows], "event_date": [r[1] for r in rows],
                     "dissent": [r[2] for r in rows]}, schema=type1.EVENTS)


def _status(table):
    return dict(zip(table["patient_pid"].to_pylist(), table["dissent"].to_pylist(), strict=True))


def test_the_register_is_the_union_of_every_practice_at_one_key_version(tmp_path):
    assert type1.load_register(tmp_path, None)[1] is None
    empty, version = type1.load_register(tmp_path, "v1")
    assert empty.num_rows == 0 and version == "v1"

    type1.record(tmp_path, "A81001", _events(("P1", D1, True)), "v1")
    type1.record(tmp_path, "B82002", _events(("P2", D1, True), ("P3", D1, False)), "v1")
    for wanted in ("v1", None):
        events, version = type1.load_register(tmp_path, wanted)
        assert version == "v1"
        assert _status(events) == {"P1": True, "P2": True, "P3": False}
    assert sorted(type1.active_dissenters(tmp_path)[0].to_pylist()) == ["P1", "P2"]

    with pytest.raises(GpdataError, match=r"register of 2 practice\(s\) \(A81001, B82002\) is not at key version v2"):
        type1.load_register(tmp_path, "v2")


def test_the_register_status_is_read_again_whenever_any_file_changes(tmp_path):
    """The status and active dissenters are computed once per register content (England's 6,500 files cost
    about 1.4 s to compute, bench.register): a file rewritten with other events, even of the same size, is seen."""
    type1.record(tmp_path, "A81001", _events(("P1", D1, True)), "v1")
    type1.record(tmp_path, "B82002", _events(("P2", D1, True)), "v1")
    assert sorted(type1.active_dissenters(tmp_path, "v1")[0].to_pylist()) == ["P1", "P2"]
    type1.write(tmp_path, "B82002", _events(("P2", D1, False)), "v1")  # the same shape: a withdrawal
    assert type1.active_dissenters(tmp_path, "v1")[0].to_pylist() == ["P1"]
    assert _status(type1.register_status(tmp_path, "v1")[0]) == {"P1": True, "P2": False}
    type1.write(tmp_path, "C83003", _events(("P3", D1, True)), "v1")  # a new practice's file
    assert sorted(type1.active_dissenters(tmp_path, "v1")[0].to_pylist()) == ["P1", "P3"]
    type1._practice_file(tmp_path, "A81001").unlink()
    assert type1.active_dissenters(tmp_path, "v1")[0].to_pylist() == ["P3"]
    with pytest.raises(GpdataError, match="not at key version v2"):  # the version is checked on every read
        type1.active_dissenters(tmp_path, "v2")


_pids = st.sampled_from(["P1", "P2", "P3", "P4", None])
_dates = st.one_of(st.none(), st.dates(dt.date(2018, 1, 1), dt.date(2026, 1, 1)))
_rows = st.lists(st.tuples(_pids, _dates, st.booleans()), max_size=12)


@settings(max_examples=300, deadline=None)
@given(_rows, _rows)
def test_adding_events_to_a_status_is_the_status_of_all_the_events(register, delivery):
    """``with_events`` recomputes only the patients a delivery names: the same latest event per patient as
    ``status`` of every event together (dates null or not, same-day dissent and withdrawal, null pseudonyms)."""
    best, added = type1.status(_events(*register)), _events(*delivery)
    whole = type1.status(pa.concat_tables([_events(*register), added]))
    assert sorted(type1.with_events(best, added).to_pylist(), key=str) == sorted(whole.to_pylist(), key=str)


_ops = st.lists(st.tuples(st.sampled_from(["record", "write", "remove"]), st.sampled_from(["A81001", "B82002"]),
                          _rows), min_size=1, max_size=8)


def _apply(root, op, practice, rows):
    """A practice records events, its file is rewritten with these (perhaps earlier ones), or it is removed; then
    the status of every file's events, computed from scratch."""
    if op == "record":
        type1.record(root, practice, _events(*rows), "v1")
    elif op == "write":
        type1.write(root, practice, _events(*rows), "v1")
    else:
        type1._practice_file(root, practice).unlink(missing_ok=True)
    return type1.status(type1.load_register(root, "v1")[0])


@settings(max_examples=150, deadline=None)
@given(_ops)
def test_the_register_status_brought_forward_is_the_status_of_every_file(ops):
    """Whatever happens to the files between reads (a practice records, a file is rewritten with earlier events, a
    file is removed), the status read is the status of every file's events as they are now: the status brought
    forward from the changed files alone (``record``) equals the one computed from scratch."""
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        for op, practice, rows in ops:
            whole = _apply(root, op, practice, rows)
            assert sorted(type1.register_status(root, "v1")[0].to_pylist(), key=str) == \
                sorted(whole.to_pylist(), key=str)
            assert sorted(type1.active_dissenters(root, "v1")[0].to_pylist()) == \
                sorted(whole.filter(whole["dissent"])["patient_pid"].to_pylist())


@settings(max_examples=150, deadline=None)
@given(_rows, st.lists(_ops, min_size=1, max_size=3))
def test_who_dissented_since_a_read_is_who_dissents_now_and_did_not_then(start, rounds):
    """A commit's check after its write (``dissented_since``) looks only at the files changed since its read; after
    each round of changes (records, rewrites with earlier events, removals), asked again of the same read, it
    names exactly the patients dissenting now (status computed from scratch) who were not at the read."""
    import tempfile
    from pathlib import Path

    everyone = pa.array(["P1", "P2", "P3", "P4", "P5"])
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        type1.record(root, "A81001", _events(*start), "v1")
        read = type1.snapshot(root, "v1")
        then = set(read.active.to_pylist())
        for ops in rounds:
            whole = [_apply(root, *op) for op in ops][-1]
            now = set(whole.filter(whole["dissent"])["patient_pid"].to_pylist())
            assert sorted(type1.dissented_since(root, read, everyone).to_pylist()) == sorted(now - then)


def test_an_unchanged_file_is_not_read_again_and_any_replacement_is_seen(tmp_path, monkeypatch):
    """A file is remembered by its identity and times once its change time has settled; a replacement of the same
    size with its modification time set back (``os.utime``) still has a new inode and change time, so it is read."""
    import os

    path = type1._practice_file(tmp_path, "A81001")
    type1.write(tmp_path, "A81001", _events(("P1", D1, True)), "v1")
    assert type1._bytes_and_digest(path)[0] is not None
    assert type1._bytes_and_digest(path)[0] is not None  # just written: not yet settled, read every time
    monkeypatch.setattr(storage, "SETTLED_NS", -10**15)  # as if it had settled long ago
    type1._bytes_and_digest(path)
    assert type1._bytes_and_digest(path)[0] is None  # remembered: not read
    assert type1.active_dissenters(tmp_path, "v1")[0].to_pylist() == ["P1"]

    before = path.stat()
    type1.write(tmp_path, "A81001", _events(("P1", D1, False)), "v1")  # a withdrawal: the same size
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert path.stat().st_size == before.st_size and path.stat().st_mtime_ns == before.st_mtime_ns
    assert type1.active_dissenters(tmp_path, "v1")[0].to_pylist() == []


def test_a_register_mixing_key_versions_is_refused(tmp_path):
    type1.record(tmp_path, "A81001", _events(("P1", D1, True)), "v1")
    type1.write(tmp_path, "B82002", _events(("P2", D1, True)), "v2")
    with pytest.raises(GpdataError, match="mixes key versions"):
        type1.load_register(tmp_path, None)
    with pytest.raises(GpdataError, match=r"1 practice\(s\) \(B82002\)"):
        type1.load_register(tmp_path, "v1")


def test_recording_keeps_a_dissent_until_a_later_withdrawal_and_refuses_another_key_version(tmp_path):
    type1.record(tmp_path, "A81001", _events(("P1", D2, True), ("P2", D1, True)), "v1")
    merged = type1.record(tmp_path, "A81001", _events(("P1", D1, False), ("P2", D3, False)), "v1")
    assert _status(merged) == {"P1": True, "P2": False}
    assert _status(type1.load_register(tmp_path, "v1")[0]) == {"P1": True, "P2": False}
    with pytest.raises(GpdataError, match="practice A81001.*key version v1, not v2") as caught:
        type1.record(tmp_path, "A81001", _events(("P3", D1, True)), "v2")
    assert caught.value.practice == "A81001"
    assert _status(type1.load_register(tmp_path, "v1")[0]) == {"P1": True, "P2": False}


def test_rekeying_rewrites_only_the_files_not_yet_at_the_new_version(tmp_path):
    type1.record(tmp_path, "A81001", _events(("P1", D1, True)), "v1")
    type1.record(tmp_path, "B82002", _events(("P2", D1, True)), "v2")
    calls = []

    def rekey(pids, version):
        calls.append(version)
        return pa.array([f"{p}-new" for p in pids.to_pylist()])

    assert type1.rekey(tmp_path, rekey, "v2") == 1
    assert calls == ["v1"]
    events, version = type1.load_register(tmp_path, "v2")
    assert version == "v2" and _status(events) == {"P1-new": True, "P2": True}
    assert type1.rekey(tmp_path, rekey, "v2") == 0  # an interrupted rotation resumes: nothing left to do


def _found(refs, dates, files=("a.json", "b.json", "c.json")):
    n = len(refs)
    return pa.table({"patient_ref": pa.array(refs, pa.string()), "nhs_number": pa.nulls(n, pa.string()),
                     "event_date": pa.array(dates, pa.date32()), "dissent": [True] * n,
                     "_src_file": list(files[:n]), "_src_entry": pa.array(range(1, n + 1), pa.int32())})


def test_an_undated_code_stops_the_batch_naming_the_first_file_and_row():
    type1.require_dates(_found(["p1", "p2"], [D1, D2]), "A81001")  # every code dated: nothing refused
    with pytest.raises(SourceError, match="has no date; a type 1") as caught:
        type1.require_dates(_found(["p1", "p2"], [D1, None]), "A81001")
    assert (caught.value.practice, caught.value.file, caught.value.row) == ("A81001", "b.json", 2)
    assert "such rows" not in str(caught.value)
    with pytest.raises(SourceError, match=r"has no date \(2 such rows\)"):
        type1.require_dates(_found(["p1", "p2", "p3"], [None, D1, None]), "A81001")


def test_a_code_tied_to_nobody_stops_the_batch():
    found = _found(["p1", "p2", "p3"], [D1, D1, D1])
    pids = pa.array(["P1", None, None])
    type1.require_patients(found, pids, pa.array([False, True, True]), "A81001")  # every row tied or named
    for tied in ([False, False, True], [False, None, True]):  # an unknown tie counts as no tie (fail closed)
        with pytest.raises(SourceError, match="cannot be tied to a patient") as caught:
            type1.require_patients(found, pids, pa.array(tied, pa.bool_()), "A81001")
        assert caught.value.row == 2


def _observations(codes):
    n = len(codes)
    return pa.table({"patient_ref": [f"p{i}" for i in range(n)], "code": codes,
                     "event_date": pa.array([D1] * n, pa.date32()), "_src_file": ["x.csv"] * n,
                     "_src_entry": pa.array(range(n), pa.int32())})


def test_every_event_table_is_scanned_even_without_the_adapters_evidence():
    codes = optout_codes()
    tables = {"observations": _observations(["123", f.DISSENT]), "referrals": _observations([f.WITHDRAWN]),
              "medications": _observations([]), "appointments": pa.table({"patient_ref": ["p0"]})}
    found = type1.evidence(tables, codes)  # no type1_evidence table, one event table missing altogether
    assert sorted(zip(found["patient_ref"].to_pylist(), found["dissent"].to_pylist(), strict=True)) == \
        [("p0", False), ("p1", True)]
    assert type1.evidence({"observations": _observations(["123"])}, codes).num_rows == 0
    assert type1.type1_status(_observations([f.DISSENT, f.WITHDRAWN]), codes) == {"p0": True, "p1": False}


def test_the_adapters_evidence_is_used_and_removed():
    codes = optout_codes()
    adapter = pa.table({"patient_ref": ["p7"], "nhs_number": ["N"], "event_date": pa.array([D1], pa.date32()),
                        "kind": ["dissent"], "_src_file": ["x.json"], "_src_entry": pa.array([3], pa.int32())})
    tables = {"type1_evidence": adapter, "observations": _observations(["123"])}
    found = type1.evidence(tables, codes)
    assert found["patient_ref"].to_pylist() == ["p7"] and found["dissent"].to_pylist() == [True]
    assert "type1_evidence" not in tables
    empty = type1.evidence({"type1_evidence": adapter.slice(0, 0), "observations": _observations(["123"])}, codes)
    assert empty.num_rows == 0
