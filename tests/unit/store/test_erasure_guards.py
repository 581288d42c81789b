"""Erasure's guards one decision at a time, on one store built once per module and copied for each test (issue
23: every mutant of a guard is caught, and ``make mutate`` runs these in seconds). The store: practice A81001
committed (p1 and p2 valid), one release."""

import json

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from gpdata import audit, pipeline, settings, storage, store
from gpdata.errors import GpdataError
from gpdata.ingest.feeds import Feed
from gpdata.model import TABLES
from gpdata.privacy import keys
from gpdata.privacy.deid import Pseudonymiser
from gpdata.store import erasure, release
from tests import factory as f
from tests.conftest import built_once, copy_of, practice_resources


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    def build(home):
        f.write_lookup(home / "reference" / "postcode_lsoa.csv", [("LS1 4AB", "E01000001")])
        f.write_bundle(home / "sources" / "A81001", practice_resources())
        cfg = settings.load()
        pipeline.run_practice(Feed(ods_code="A81001", name="t", location=str(home / "sources" / "A81001"),
                                   max_quarantine_fraction=1), cfg, "r1")
        return release.create_release(cfg.store)["release_id"]

    return built_once(tmp_path_factory, "include/gpdata/store/erasure.py", __file__, build)


@pytest.fixture
def world(template, tmp_path, monkeypatch):
    rid = template[1]
    copy_of(template, tmp_path, monkeypatch)
    cfg = settings.load()
    pids = Pseudonymiser(keys.load_master_key())(pa.array(["9990000018", "9990000026"]), "nhs_number").to_pylist()
    return cfg.store, rid, dict(zip(["p1", "p2"], pids, strict=True))


def _holders(root, rid, pid):
    """Which current tables and which release tables hold ``pid``."""
    now = [t for t in TABLES if t != "practitioners"
           and pid in storage.delta_table(store.table_path(root, t)).to_pyarrow_table(columns=["patient_pid"])
           ["patient_pid"].to_pylist()]
    then = [t for t in TABLES if t != "practitioners"
            and pid in release.read_release_table(root, rid, t)["patient_pid"].to_pylist()]
    return now, then


def test_present_finds_the_store_and_release_holders_only(world):
    root, rid, pids = world
    other = "ab" * 32
    assert erasure.present(root, pa.array([pids["p1"], other])).to_pylist() == [pids["p1"]]
    assert erasure.present(root, pa.array([], pa.string())).to_pylist() == []
    for name in TABLES:
        if name != "practitioners":
            storage.delta_table(store.table_path(root, name)).delete(f"patient_pid = '{pids['p2']}'")
    assert _holders(root, rid, pids["p2"])[0] == []
    assert erasure.present(root, pa.array([pids["p2"]])).to_pylist() == [pids["p2"]]  # held by the release only


def test_erase_removes_the_patient_everywhere_and_records_counts_only(world):
    root, rid, pids = world
    before = release.get_release(root, rid)
    assert _holders(root, rid, pids["p1"]) != ([], [])
    entry = erasure.erase(root, pa.array([pids["p1"]]))
    assert _holders(root, rid, pids["p1"]) == ([], [])
    assert _holders(root, rid, pids["p2"])[0]  # the other patient stays
    assert entry["patients"] == 1 and entry["rows_deleted"]["patients"] == 1 and entry["releases_reissued"] == [rid]
    made = release.get_release(root, rid)
    assert made["status"] == "reissued" and made["reissues"][-1]["reason"] == "erasure after a type 1 opt-out"
    assert made["tables"]["patients"]["rows"] == before["tables"]["patients"]["rows"] - 1
    assert made["tables"]["patients"]["path"] == "tables/patients"
    log = (storage.root(root) / "_erasures" / "log.jsonl").read_text().splitlines()
    assert [json.loads(line)["patients"] for line in log] == [1]
    last = audit.entries(root)[-1]
    assert last["event"] == "erasure" and last["patients"] == 1 and last["releases_reissued"] == [rid]
    assert pids["p1"] not in json.dumps(audit.entries(root)) + "".join(log)
    assert not (storage.root(root) / "_erasures" / "pending.parquet").exists()
    assert erasure.pending(root).to_pylist() == []


def test_a_release_that_does_not_hold_the_patient_is_left_alone(world):
    root, rid, pids = world
    for name in TABLES:
        if name != "practitioners":
            storage.delta_table(store.table_path(root, name)).delete(f"patient_pid = '{pids['p2']}'")
    rid2 = release.create_release(root)["release_id"]  # made without p2
    entry = erasure.erase(root, pa.array([pids["p2"]]))
    assert entry["releases_reissued"] == [rid]
    assert release.get_release(root, rid2).get("status") != "reissued"


def test_an_unfinished_erasure_is_finished_by_the_next_and_nothing_is_a_no_op(world):
    root, rid, pids = world
    assert erasure.erase(root, pa.array([], pa.string())) == {}
    storage.write_parquet(storage.root(root) / "_erasures" / "pending.parquet",  # a marker of earlier versions
                          pa.table({"patient_pid": pa.array([pids["p1"]])}))
    entry = erasure.erase(root, pa.array([None], pa.string()))
    assert entry["patients"] == 1 and _holders(root, rid, pids["p1"]) == ([], [])


def test_erasure_refuses_values_that_are_not_pseudonyms(world):
    root, rid, pids = world
    for bad in ("9990000018", pids["p1"].upper(), pids["p1"] + "0", pids["p1"][:-1] + "g"):
        with pytest.raises(GpdataError, match="pseudonyms only"):
            erasure.erase(root, pa.array([pids["p2"], bad]))
    assert _holders(root, rid, pids["p2"])[0]  # nothing was erased


def _files_holding(root, pid):
    """Every Parquet file on disk under the store (every version, every release copy) that holds ``pid``."""
    import pyarrow.parquet as pq

    found = []
    for path in storage.root(root).rglob("*.parquet"):
        table = pq.read_table(path)
        if "patient_pid" in table.column_names and pid in table["patient_pid"].to_pylist():
            found.append(str(path.relative_to(storage.root(root))))
    return found


def test_no_file_on_disk_holds_an_erased_patient_and_pinned_versions_stay_readable(world):
    root, rid, pids = world
    for name in TABLES:
        if name != "practitioners":
            storage.delta_table(store.table_path(root, name)).delete(f"patient_pid = '{pids['p2']}'")
    rid2 = release.create_release(root)["release_id"]  # pins versions without p2, and holds p1
    assert _files_holding(root, pids["p1"])
    erasure.erase(root, pa.array([pids["p1"]]))  # both releases re-issued as copies
    assert _files_holding(root, pids["p1"]) == []
    erasure.erase(root, pa.array([pids["p2"]]))  # the first release's copy is rewritten again
    assert _files_holding(root, pids["p2"]) == []
    assert release.read_release_table(root, rid2, "patients").num_rows == 0


def test_a_retired_release_is_skipped_and_a_pinned_version_outlives_the_vacuum(world):
    root, rid, pids = world
    release.retire(root, rid, "superseded")
    for name in TABLES:
        if name != "practitioners":
            storage.delta_table(store.table_path(root, name)).delete(f"patient_pid = '{pids['p2']}'")
    rid2 = release.create_release(root)["release_id"]  # pins the versions without p2, holds p1 only
    assert erasure.present(root, pa.array([pids["p2"]])).to_pylist() == []  # only the retired release held p2
    entry = erasure.erase(root, pa.array([pids["p2"]]))
    assert entry["releases_reissued"] == []
    assert pids["p1"] in release.read_release_table(root, rid2, "patients")["patient_pid"].to_pylist()


def test_the_vacuum_keeps_the_versions_a_release_still_pins(world):
    root, rid, pids = world
    for name in TABLES:  # a later change rewrites the files the release pins
        if name != "practitioners":
            storage.delta_table(store.table_path(root, name)).delete(f"patient_pid = '{pids['p2']}'")
    erasure.erase(root, pa.array(["cd" * 32]))  # held nowhere: nothing deleted, every table vacuumed
    assert pids["p2"] in release.read_release_table(root, rid, "patients")["patient_pid"].to_pylist()


def _erase_one(pid: str) -> None:  # in a process of its own (spawned: the test's environment, no fork of its state)
    from gpdata import settings as s

    erasure.erase(s.load().store, pa.array([pid], pa.string()))


def test_an_erasure_under_way_is_finished_by_another_and_its_record_removed_only_then(world):
    """Another erasure's record (its marker) is read, its patients erased too, and only then removed."""
    root, rid, pids = world
    other = storage.root(root) / "_erasures" / "pending" / "another.parquet"
    storage.write_parquet(other, pa.table({"patient_pid": pa.array([pids["p2"]])}))
    entry = erasure.erase(root, pa.array([pids["p1"]], pa.string()))
    assert entry["patients"] == 2
    assert _holders(root, rid, pids["p1"]) == ([], []) and _holders(root, rid, pids["p2"]) == ([], [])
    assert not other.exists() and erasure.pending(root).to_pylist() == []


def test_concurrent_erasures_each_finish_and_leave_no_record_behind(world):
    """Two practices' commits erasing at once (a shared marker made the second fail with FileNotFoundError when
    the first removed it, and lost its record): both finish, every patient is gone, nothing is left pending."""
    import multiprocessing

    root, rid, pids = world
    ctx = multiprocessing.get_context("spawn")
    workers = [ctx.Process(target=_erase_one, args=(pid,)) for pid in pids.values()]
    for w in workers:
        w.start()
    for w in workers:
        w.join(120)
    assert [w.exitcode for w in workers] == [0, 0]
    assert all(_holders(root, rid, pid) == ([], []) for pid in pids.values())
    assert erasure.pending(root).to_pylist() == []
    assert not list((storage.root(root) / "_erasures" / "pending").glob("*.parquet"))


def test_present_reads_again_when_another_erasure_vacuumed_the_files_it_was_reading(world, monkeypatch):
    """A late opt-out's check runs while another practice's erasure deletes and vacuums (retention 0): the files of
    the version it opened are gone. It reads the newest version again instead of failing the practice's commit."""
    from deltalake import DeltaTable

    root, rid, pids = world
    path = store.table_path(root, "observations")
    storage.delta_table(path).delete(f"patient_pid = '{pids['p2']}'")  # a version no release pins
    stale = DeltaTable(str(path))  # opened before the other writer's erasure
    rows = stale.to_pyarrow_table(columns=["patient_pid", "record_id"])
    mine = rows.filter(pc.equal(rows["patient_pid"], pids["p1"]))["record_id"].to_pylist()
    assert len(mine) > 1
    storage.delta_table(path).delete(f"record_id = '{mine[0]}'")  # the other writer: rewrites the file, then
    storage.delta_table(path).vacuum(retention_hours=0, enforce_retention_duration=False, dry_run=False,
                                     keep_versions=release.pinned_versions(root, "observations"))  # as erasure
    with pytest.raises(FileNotFoundError):
        stale.to_pyarrow_dataset().to_table(columns=["patient_pid"])
    fresh, handed = storage.delta_table, []

    def stale_first(where, *args, **kwargs):
        if str(where) == str(path) and not handed:
            handed.append(where)
            return stale
        return fresh(where, *args, **kwargs)

    monkeypatch.setattr(storage, "delta_table", stale_first)
    assert erasure.present(root, pa.array([pids["p1"], pids["p2"]])).to_pylist() == sorted(pids.values())
    assert handed  # the stale version was read first; p2 is still in the release
