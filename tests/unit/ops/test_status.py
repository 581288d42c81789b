"""The operators' page data (gpdata.ops.status): built from manifests only, one run's counts at a time."""

import json

import pytest

from gpdata import pipeline, settings, storage, store
from gpdata.ingest.feeds import Feed
from gpdata.model import TABLES
from gpdata.ops import status
from gpdata.store import release
from gpdata.synth import generate


def _manifest(cfg, ods, run_id, status_, **extra):
    doc = {"practice": ods, "run_id": run_id, "status": status_, "finished_at": "2026-11-23T10:00:00+00:00", **extra}
    store.write_manifest(cfg.manifests, ods, run_id, doc)
    return doc


def _counts(patients=10, excluded=2, quarantined=None, passed=True, committed=True):
    quality = {"quarantined": quarantined or {"observations": {"future_date": 3, "invalid_code": 1},
                                              "medications": {"future_date": 2}},
               "rows_in": {t: 5 for t in TABLES}, "passed": passed, "failures": [] if passed else ["x: too many"],
               "expectations": {"evaluated": 7, "failed": 0 if passed else 1}}
    doc = {"patients_read": patients, "type1_optout": {"patients_excluded": excluded}, "quality": quality}
    if committed:
        doc["committed_rows"] = {t: i + 1 for i, t in enumerate(TABLES)}
    return doc


def test_a_committed_run_shows_its_counts_summed_by_reason(home):
    cfg = settings.load()
    _manifest(cfg, "A81001", "r1", "committed", **_counts())
    p = status.practice_status(cfg, "A81001")
    assert (p["status"], p["kind"], p["run_id"]) == ("committed", "ok", "r1")
    assert p["patients_read"] == 10 and p["type1_excluded"] == 2
    assert p["quarantined"] == {"future_date": 5, "invalid_code": 1} and p["quarantined_total"] == 6
    assert p["rows"] == {t: i + 1 for i, t in enumerate(TABLES)} and p["rows_state"] == "committed"
    assert p["quality"] == "passed" and p["expectations"] == {"evaluated": 7, "failed": 0}
    assert p["error"] is None and p["data_docs"] is False


def test_unmapped_fhir_resources_are_shown_by_type(home):
    cfg = settings.load()
    _manifest(cfg, "A81001", "r1", "committed", source={"unmapped_resources": {"List": 2, "Encounter": 3, "x": "?"}},
              **_counts())
    assert status.practice_status(cfg, "A81001")["unmapped_resources"] == {"Encounter": 3, "List": 2}
    _manifest(cfg, "A81001", "r2", "committed", **_counts())
    assert status.practice_status(cfg, "A81001")["unmapped_resources"] == {}


def test_a_failed_quality_run_keeps_its_counts_and_names_the_cause(home):
    cfg = settings.load()
    _manifest(cfg, "A81001", "r1", "committed", **_counts())
    _manifest(cfg, "A81001", "r2", "failed_quality", **_counts(patients=11, passed=False, committed=False))
    p = status.practice_status(cfg, "A81001")
    assert (p["status"], p["kind"], p["counts_run_id"]) == ("failed_quality", "failed", "r2")
    assert p["patients_read"] == 11 and p["quality"] == "failed"
    assert p["rows_state"] == "delivered, not committed" and p["rows"] == {t: 5 for t in TABLES}
    assert p["error"] == {"stage": "quality", "cause": "x: too many"}
    assert p["last_committed_run_id"] == "r1"


def test_a_run_that_failed_before_counting_shows_the_last_committed_counts(home):
    cfg = settings.load()
    _manifest(cfg, "A81001", "r1", "committed", **_counts(patients=9))
    _manifest(cfg, "A81001", "r2", "failed", error={"stage": "extract", "cause": "no delivery found"})
    p = status.practice_status(cfg, "A81001")
    assert (p["status"], p["kind"], p["run_id"]) == ("failed", "failed", "r2")
    assert p["error"] == {"stage": "extract", "cause": "no delivery found"}
    assert p["counts_run_id"] == "r1" and not p["counts_from_last_run"] and p["patients_read"] == 9


@pytest.mark.parametrize(("status_", "kind"), [("unchanged", "ok"), ("failed_somehow", "failed"),
                                               ("archived", "unknown"), (None, "none")])
def test_any_status_string_is_shown_with_a_kind(home, status_, kind):
    cfg = settings.load()
    cfg.feeds_dir.mkdir(parents=True)
    if status_ is not None:
        _manifest(cfg, "A81001", "r1", status_)
    else:
        (cfg.feeds_dir / "A81001.yaml").write_text("ods_code: A81001\nname: New Surgery\nlocation: x\n")
    [p], feeds_error = status.practices(cfg)
    assert feeds_error is None
    assert (p["practice"], p["status"], p["kind"]) == ("A81001", status_, kind)
    assert p["patients_read"] is None and p["rows"] is None


def test_a_broken_feed_folder_is_reported_and_manifests_still_listed(home):
    cfg = settings.load()
    _manifest(cfg, "B82002", "r1", "committed", **_counts())
    cfg.feeds_dir.mkdir(parents=True, exist_ok=True)
    (cfg.feeds_dir / "bad.yaml").write_text("ods_code: nope\nname: x\nlocation: x\n")
    rows, feeds_error = status.practices(cfg)
    assert [p["practice"] for p in rows] == ["B82002"]
    assert "bad.yaml" in feeds_error


def test_unreadable_manifest_does_not_break_the_page(home):
    cfg = settings.load()
    (cfg.manifests / "A81001").mkdir(parents=True)
    (cfg.manifests / "A81001" / "latest.json").write_text("{not json")
    [p], _ = status.practices(cfg)
    assert p["status"] is None and p["kind"] == "none"


def test_releases_and_projects_come_from_their_manifests(home):
    cfg = settings.load()
    for rid, created, rows in (("2026-01-01.1", "2026-01-01T00:00:00+00:00", 5),
                               ("2026-02-01.1", "2026-02-01T00:00:00+00:00", 8)):
        store.write_json_atomic(cfg.store / "_releases" / rid / "release.json", {
            "release_id": rid, "created_at": created, "status": "published",
            "tables": {t: {"version": 3, "rows": rows} for t in TABLES}})
    for rid, created in (("2026-01-01.1", "2026-01-02T00:00:00+00:00"), ("2026-02-01.1", "2026-02-02T00:00:00+00:00")):
        store.write_json_atomic(cfg.extracts / "DARS-X" / rid / "manifest.json", {
            "project": "DARS-X", "organisation": "Org", "release": rid, "created_at": created,
            "national_data_optout": "apply", "tables": {"patients": {"rows": 4, "columns": ["a"]}}})
    doc = status.overview(cfg)
    assert [r["release_id"] for r in doc["releases"]] == ["2026-02-01.1", "2026-01-01.1"]
    assert doc["releases"][0]["tables"]["observations"] == {"version": 3, "rows": 8}
    [project] = doc["projects"]
    assert project["release"] == "2026-02-01.1" and project["rows"] == {"patients": 4} and project["extracts"] == 2
    json.dumps(doc)  # the JSON route serves it as it is


def test_a_real_run_matches_its_manifest_and_reads_no_table(home, monkeypatch):
    truth = generate(home, n_practices=1, n_patients=40, events_per_patient=15, dirty_fraction=0.02, seed=11)[0]
    feed = Feed(ods_code=truth.ods_code, name="p", location=str(home / "sources" / truth.ods_code),
                max_quarantine_fraction=0.5)
    cfg = settings.load()
    pipeline.run_practice(feed, cfg, "r1")
    release.create_release(cfg.store)
    manifest = store.latest_manifests(cfg.manifests)[truth.ods_code]

    def no_tables(*args, **kwargs):
        raise AssertionError("the status page must not open a table")

    monkeypatch.setattr(store, "read_table", no_tables)
    monkeypatch.setattr(release, "read_release_table", no_tables)
    monkeypatch.setattr("deltalake.DeltaTable.__init__", no_tables)
    storage.forget_delta_tables()  # the run's cached handles would read a table without making a DeltaTable
    p = status.practice_status(cfg, truth.ods_code)
    assert p["rows"] == manifest["committed_rows"]
    assert p["patients_read"] == manifest["patients_read"] == truth.resources["Patient"]
    assert p["type1_excluded"] == manifest["type1_optout"]["patients_excluded"]
    assert p["quarantined_total"] == sum(sum(r.values()) for r in manifest["quality"]["quarantined"].values()) > 0
    assert p["expectations"]["evaluated"] == manifest["quality"]["expectations"]["evaluated"] > 0
    assert p["data_docs"] is True
    assert status.releases(cfg)[0]["tables"]["patients"]["rows"] == manifest["committed_rows"]["patients"]
