"""Releases, the data dictionary and erasure after a late type 1 opt-out."""

import datetime as dt
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from gpdata import pipeline, settings, store
from gpdata.errors import GpdataError
from gpdata.ingest.feeds import Feed
from gpdata.model import CURATED, TABLES
from gpdata.ops.cli import main as cli
from gpdata.privacy import keys
from gpdata.privacy.deid import Pseudonymiser
from gpdata.store import dictionary, release
from tests import factory as f
from tests.conftest import practice_resources


@pytest.fixture
def committed(home):
    f.write_bundle(home / "sources" / "A81001", practice_resources())
    feed = Feed(ods_code="A81001", name="t", location=str(home / "sources" / "A81001"), max_quarantine_fraction=1)
    cfg = settings.load()
    pipeline.run_practice(feed, cfg, "r1")
    return feed, cfg


def test_a_release_reads_back_exactly_as_made_after_later_changes(committed, home, capsys):
    feed, cfg = committed
    made = release.create_release(cfg.store, today=dt.date(2026, 3, 1))
    assert made["release_id"] == "2026-03-01.1"
    snapshot = {t: release.read_release_table(cfg.store, made["release_id"], t) for t in TABLES}
    assert snapshot["patients"].num_rows == made["tables"]["patients"]["rows"] == 2

    resources = practice_resources() + [f.patient("p9", "9990000042", family="Newcomer", given="Nia")]
    f.write_bundle(home / "sources" / "A81001", resources)
    pipeline.run_practice(feed, cfg, "r2")  # the store moves on
    assert store.read_table(cfg.store, "patients").num_rows == 3
    second = release.create_release(cfg.store, today=dt.date(2026, 3, 1))
    assert second["release_id"] == "2026-03-01.2"
    for table in TABLES:
        assert release.read_release_table(cfg.store, made["release_id"], table).equals(snapshot[table]), table

    assert cli(["release", "list"]) == 0
    out = capsys.readouterr().out
    assert "2026-03-01.1" in out and "2026-03-01.2" in out and "published" in out
    assert cli(["release", "show", "2026-03-01.1"]) == 0
    assert json.loads(capsys.readouterr().out)["tables"]["patients"]["rows"] == 2
    with pytest.raises(GpdataError, match="no release 'nope'"):
        release.get_release(cfg.store, "nope")

    exported = release.export_snapshot(cfg.store, made["release_id"], home / "export")
    assert pq.read_table(exported[0]).num_rows == 2 and (home / "export" / "data_dictionary.md").exists()


def test_data_dictionary_covers_every_column_of_every_table(committed):
    _, cfg = committed
    made = release.create_release(cfg.store)
    published = json.loads((release.releases_dir(cfg.store) / made["release_id"] / "data_dictionary.json")
                           .read_text())
    assert {(e["table"], e["column"]) for e in published} == {(t, c) for t, s in CURATED.items() for c in s.names}
    for entry in published:
        assert entry["description"] and entry["sensitivity"] and entry["example"] is not None
        assert entry["type"] == str(CURATED[entry["table"]].field(entry["column"]).type)
    dates = [e["example"] for e in published if "date" in e["type"] or "timestamp" in e["type"]]
    assert dates and all(str(d)[8:10] == "01" for d in dates)  # never a plausible full date of birth
    md = dictionary.markdown()
    assert all(f"## {t}" in md for t in TABLES)


def test_late_optout_is_erased_from_store_history_and_releases(committed, home):
    feed, cfg = committed
    pseudo = Pseudonymiser(keys.load_master_key())
    pid = pseudo(pa.array(["9990000018"]), "nhs_number")[0].as_py()  # patient p1
    for _ in range(2):  # several versions on disk hold the patient
        pipeline.run_practice(feed, cfg, "again", force=True)
    made = release.create_release(cfg.store)
    assert pid in store.read_table(cfg.store, "observations")["patient_pid"].to_pylist()

    late = practice_resources() + [f.observation("late", "p1", f.DISSENT, "2025-01-01")]
    f.write_bundle(home / "sources" / "A81001", late)
    counts = pipeline.run_practice(feed, cfg, "late")
    assert counts["erasure"]["patients"] == 1 and counts["erasure"]["releases_reissued"] == [made["release_id"]]

    for table in TABLES:
        if "patient_pid" in CURATED[table].names:
            assert pid not in store.read_table(cfg.store, table)["patient_pid"].to_pylist()
            assert pid not in release.read_release_table(cfg.store, made["release_id"], table)["patient_pid"] \
                .to_pylist()
    for path in cfg.store.rglob("*.parquet"):  # every retained file, every table, every release copy
        if "_type1" in path.parts:  # the type 1 register keeps the pseudonym, to exclude the patient everywhere
            continue
        t = pq.read_table(path)
        if "patient_pid" in t.column_names:
            assert pid not in t["patient_pid"].to_pylist(), path
    reissued = release.get_release(cfg.store, made["release_id"])
    assert reissued["status"] == "reissued" and reissued["tables"]["patients"]["rows"] == 1
    log = (cfg.store / "_erasures" / "log.jsonl").read_text()
    assert pid not in log and '"patients": 1' in log
    from gpdata import audit

    erasures = [e for e in audit.entries(cfg.store) if e["event"] == "erasure"]
    assert len(erasures) == 1 and erasures[0]["patients"] == 1 and pid not in json.dumps(erasures)
    assert [e["event"] for e in audit.entries(cfg.store)] == ["release", "erasure"] and audit.verify(cfg.store) == 2
    other = pseudo(pa.array(["9990000026"]), "nhs_number")[0].as_py()
    assert other in release.read_release_table(cfg.store, made["release_id"], "patients")["patient_pid"].to_pylist()


def test_an_erasure_cut_short_is_finished_by_the_next_one(committed, monkeypatch):
    from gpdata.store import erasure

    feed, cfg = committed
    pipeline.run_practice(feed, cfg, "again", force=True)  # an older version on disk holds the patient
    pid = Pseudonymiser(keys.load_master_key())(pa.array(["9990000018"]), "nhs_number")[0].as_py()

    def crash(*args, **kwargs):
        raise OSError("worker lost before vacuum")

    monkeypatch.setattr(erasure.release, "pinned_versions", crash)
    with pytest.raises(OSError):
        erasure.erase(cfg.store, pa.array([pid]))
    assert erasure.pending(cfg.store).to_pylist() == [pid]
    monkeypatch.undo()
    assert erasure.erase(cfg.store, pa.array([], pa.string()))["patients"] == 1
    assert len(erasure.pending(cfg.store)) == 0
    for path in cfg.store.rglob("*.parquet"):
        if "_type1" in path.parts:
            continue
        t = pq.read_table(path)
        if "patient_pid" in t.column_names:
            assert pid not in t["patient_pid"].to_pylist(), path


def test_a_store_unchanged_since_the_latest_release_is_recognised_and_a_commit_or_retirement_ends_it(committed):
    feed, cfg = committed
    assert release.unchanged_since(cfg.store) is None  # no release yet
    made = release.create_release(cfg.store, today=dt.date(2026, 3, 1))
    assert release.unchanged_since(cfg.store)["release_id"] == made["release_id"]
    pipeline.run_practice(feed, cfg, "r2", force=True)  # the same delivery again, committed on purpose
    assert release.unchanged_since(cfg.store) is None
    again = release.create_release(cfg.store, today=dt.date(2026, 3, 1))
    assert release.unchanged_since(cfg.store)["release_id"] == again["release_id"]
    release.retire(cfg.store, again["release_id"], "test")
    assert release.unchanged_since(cfg.store) is None  # the latest readable release pins older versions
