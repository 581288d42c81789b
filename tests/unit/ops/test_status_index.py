"""The GP data page at national scale (issue 24): the status index kept at commit time, the page's filters,
late deliveries and the trend charts' data."""

import datetime as dt
import json

import pytest

from gpdata import settings, store
from gpdata.model import TABLES
from gpdata.ops import status
from gpdata.store import statusindex


def _manifest(cfg, ods, run_id, status_, finished="2026-11-23T10:00:00+00:00", **extra):
    doc = {"practice": ods, "run_id": run_id, "status": status_, "finished_at": finished, **extra}
    store.write_manifest(cfg.manifests, ods, run_id, doc)
    return doc


def _counts(patients=10, excluded=2, q=(3, 1), passed=True, committed=True, seconds=(1.0, 2.0, 0.5)):
    quality = {"quarantined": {"observations": {"future_date": q[0]}, "medications": {"invalid_code": q[1]}},
               "rows_in": {t: 10 for t in TABLES}, "passed": passed, "failures": [] if passed else ["x: too many"],
               "expectations": {"evaluated": 7, "failed": 0 if passed else 1}}
    doc = {"patients_read": patients, "type1_optout": {"patients_excluded": excluded}, "quality": quality,
           "seconds": dict(zip(("extract", "quality", "commit"), seconds, strict=False))}
    if committed:
        doc["committed_rows"] = {t: patients + i for i, t in enumerate(TABLES)}
    return doc


def _from_manifests(cfg):
    """Each practice's row as the manifests give it (the record of truth), without the trend."""
    out = {}
    for folder in sorted(cfg.manifests.iterdir()):
        row = status.practice_status(cfg, folder.name)
        out[folder.name] = {k: row[k] for k in ("status", "kind", "run_id", "error", "patients_read",
                                                "type1_excluded", "rows", "quarantined", "quarantined_total",
                                                "quality", "expectations", "last_committed_run_id")}
    return out


def _from_index(cfg):
    out = {}
    for ods, row in statusindex.read_index(cfg.manifests).items():
        p = status.present(cfg, row)
        out[ods] = {k: p[k] for k in ("status", "kind", "run_id", "error", "patients_read", "type1_excluded", "rows",
                                      "quarantined", "quarantined_total", "quality", "expectations",
                                      "last_committed_run_id")}
    return out


def _trend_from_manifests(cfg, ods):
    runs = [json.loads(p.read_text()) for p in (cfg.manifests / ods).glob("*.json")
            if p.name not in ("latest.json", "committed.json")]
    runs.sort(key=lambda d: d["finished_at"])
    return [{"run_id": d["run_id"], "rows_committed": sum(d["committed_rows"].values()) if "committed_rows" in d
             else None, "type1_excluded": d["type1_optout"]["patients_excluded"],
             "quarantine_rate": round(sum(sum(r.values()) for r in d["quality"]["quarantined"].values())
                                      / sum(d["quality"]["rows_in"].values()), 6),
             "duration_seconds": round(sum(d["seconds"].values()), 3)}
            for d in runs if "patients_read" in d]


def _trend_from_index(cfg, ods):
    row = statusindex.decode(statusindex.read_index(cfg.manifests)[ods])
    return [{k: p[k] for k in ("run_id", "rows_committed", "type1_excluded", "quarantine_rate", "duration_seconds")}
            for p in row["trend"]]


def test_index_and_manifests_agree_after_commits_a_failure_and_a_rebuild(home):
    cfg = settings.load()
    _manifest(cfg, "A81001", "r1", "committed", "2026-11-20T10:00:00+00:00", **_counts(patients=10))
    _manifest(cfg, "A81001", "r2", "committed", "2026-11-21T10:00:00+00:00", **_counts(patients=12, q=(5, 0)))
    _manifest(cfg, "B82002", "r1", "committed", "2026-11-20T10:00:00+00:00", **_counts(patients=20))
    _manifest(cfg, "B82002", "r2", "failed_quality", "2026-11-21T10:00:00+00:00",
              **_counts(patients=21, passed=False, committed=False))
    _manifest(cfg, "C83003", "r1", "failed", error={"stage": "extract", "cause": "no delivery found"})
    _manifest(cfg, "A81001", "r3", "unchanged", "2026-11-22T10:00:00+00:00")
    truth = _from_manifests(cfg)
    assert _from_index(cfg) == truth
    assert truth["B82002"]["error"] == {"stage": "quality", "cause": "x: too many"}
    assert truth["A81001"]["status"] == "unchanged" and truth["A81001"]["patients_read"] == 12
    for ods in ("A81001", "B82002"):
        assert _trend_from_index(cfg, ods) == _trend_from_manifests(cfg, ods)
    assert [p["rows_committed"] for p in _trend_from_index(cfg, "B82002")] == [
        sum(20 + i for i in range(len(TABLES))), None]

    # The index is thrown away (or was never there): the rebuild gives the same rows and trends.
    before = {ods: statusindex.decode(r) for ods, r in statusindex.read_index(cfg.manifests).items()}
    status_root = cfg.store / "_status"
    (status_root / "index.parquet").unlink()
    for path in (status_root / "practices").iterdir():
        path.unlink()
    assert statusindex.read_index(cfg.manifests) == {}
    assert statusindex.rebuild(cfg.manifests) == 3
    after = {ods: statusindex.decode(r) for ods, r in statusindex.read_index(cfg.manifests).items()}
    strip = lambda rows: {o: {k: v for k, v in r.items() if k != "stamp"} for o, r in rows.items()}  # noqa: E731
    assert strip(after) == strip(before)
    assert _from_index(cfg) == truth


def test_a_row_lost_from_the_index_is_read_from_its_own_object(home, monkeypatch):
    """Two writers racing for index.parquet (S3 has no lock) may lose a row there: the reader still finds it.
    (Locally the lock prevents it, and the reader skips the listing when nothing changed: as on S3, it may not.)"""
    monkeypatch.setattr(statusindex, "_unchanged_since_index", lambda *a: False)
    cfg = settings.load()
    _manifest(cfg, "A81001", "r1", "committed", **_counts(patients=10))
    _manifest(cfg, "B82002", "r1", "committed", **_counts(patients=20))
    stale = {r["practice"]: r for r in statusindex._read_index_table(cfg.manifests).to_pylist()
             if r["practice"] == "A81001"}
    statusindex._write_index_rows(cfg.manifests, stale)  # B82002's update lost
    rows = statusindex.read_index(cfg.manifests)
    assert sorted(rows) == ["A81001", "B82002"] and rows["B82002"]["patients_read"] == 20


def test_a_chunk_holds_the_index_back_and_the_page_still_reads_every_practice(home):
    """A chunk (``statusindex.held``) writes each practice's object at once and the index only every so often and
    at the end: meanwhile the reader finds the rows the index lacks from their objects (the listing is not
    skipped, since the folder changed after the index), and at the end the index agrees with the manifests."""
    cfg = settings.load()
    _manifest(cfg, "A81001", "r0", "committed", **_counts(patients=5))
    with statusindex.held(cfg.manifests, seconds=1e9):
        _manifest(cfg, "A81001", "r1", "committed", **_counts(patients=10))
        _manifest(cfg, "B82002", "r1", "failed_quality", **_counts(patients=20, passed=False, committed=False))
        index = {r["practice"]: r for r in statusindex._read_index_table(cfg.manifests).to_pylist()}
        assert set(index) == {"A81001"} and index["A81001"]["run_id"] == "r0"  # held back
        assert _from_index(cfg) == _from_manifests(cfg)
    index = {r["practice"]: r for r in statusindex._read_index_table(cfg.manifests).to_pylist()}
    assert index["A81001"]["run_id"] == "r1" and set(index) == {"A81001", "B82002"}
    assert _from_index(cfg) == _from_manifests(cfg)


def test_a_failure_recorded_on_a_counted_run_replaces_its_trend_point(home):
    cfg = settings.load()
    doc = _manifest(cfg, "A81001", "r1", "failed_quality", **_counts(passed=False, committed=False))
    store.write_manifest(cfg.manifests, "A81001", "r1", {**doc, "error": {"stage": "quality", "cause": "gate"}})
    row = statusindex.decode(statusindex.read_index(cfg.manifests)["A81001"])
    assert [p["run_id"] for p in row["trend"]] == ["r1"] and row["error_cause"] == "gate"


def test_the_trend_keeps_the_last_runs_only(home, monkeypatch):
    monkeypatch.setattr(statusindex, "TREND_RUNS", 3)
    cfg = settings.load()
    for i in range(5):
        _manifest(cfg, "A81001", f"r{i}", "committed", f"2026-11-2{i}T10:00:00+00:00", **_counts(patients=10 + i))
    row = statusindex.decode(statusindex.read_index(cfg.manifests)["A81001"])
    assert [p["run_id"] for p in row["trend"]] == ["r2", "r3", "r4"]
    statusindex.rebuild(cfg.manifests)
    row = statusindex.decode(statusindex.read_index(cfg.manifests)["A81001"])
    assert [p["run_id"] for p in row["trend"]] == ["r2", "r3", "r4"]


def _feed(cfg, ods, schedule="@daily", name=None, supplier="EMIS", active=True):
    cfg.feeds_dir.mkdir(parents=True, exist_ok=True)
    (cfg.feeds_dir / f"{ods}.yaml").write_text(
        f"ods_code: {ods}\nname: {name or 'Surgery ' + ods}\nsupplier: {supplier}\nlocation: x\n"
        f"schedule: '{schedule}'\nactive: {str(active).lower()}\n")


def test_a_practice_without_a_delivery_for_longer_than_its_schedule_is_late(home):
    cfg = settings.load()
    _feed(cfg, "A81001", "@daily")
    _feed(cfg, "B82002", "0 2 * * *")   # daily at 02:00, as cron
    _feed(cfg, "C83003", "@weekly")
    _feed(cfg, "D84004", "@once")
    for ods in ("A81001", "B82002", "C83003", "D84004"):
        _manifest(cfg, ods, "r1", "committed", "2026-11-20T02:30:00+00:00", **_counts())
    _manifest(cfg, "A81001", "r2", "unchanged", "2026-11-21T02:30:00+00:00")  # a run, but no new delivery
    on_time = dt.datetime(2026, 11, 21, 3, 0, tzinfo=dt.UTC)           # 24.5 h after: within 24 h + 60 min
    doc = status.overview(cfg, now=on_time)
    assert doc["summary"]["by_state"]["late"] == 0 and doc["attention"] == []
    later = dt.datetime(2026, 11, 21, 4, 0, tzinfo=dt.UTC)             # 25.5 h after: late
    doc = status.overview(cfg, now=later)
    assert doc["summary"]["by_state"]["late"] == 2
    late = {p["practice"]: p["late"] for p in doc["attention"]}
    assert sorted(late) == ["A81001", "B82002"]
    assert late["A81001"] == {"schedule": "@daily", "expected_every_hours": 24.0,
                              "last_delivery": "2026-11-20T02:30:00+00:00", "overdue_hours": 0.5}
    assert late["B82002"]["expected_every_hours"] == 24.0
    assert {p["practice"]: p["state"] for p in doc["practices"]}["C83003"] == "committed"
    # The grace period is a setting; the weekly feed is late a week (and the grace) on.
    assert status.overview(cfg, now=later.replace(hour=2, minute=45), query=None)["summary"]["by_state"]["late"] == 0
    week = dt.datetime(2026, 11, 27, 3, 31, tzinfo=dt.UTC)
    assert {p["practice"] for p in status.late_practices(cfg, week)} == {"A81001", "B82002", "C83003"}


def test_late_deliveries_raise_the_failure_alert(home, monkeypatch):
    from gpdata.ops.airflow_env import REPO_ROOT

    monkeypatch.syspath_prepend(str(REPO_ROOT / "plugins"))
    from gpdata_airflow import alerts

    cfg = settings.load()
    _feed(cfg, "A81001", "@hourly")
    _manifest(cfg, "A81001", "r1", "committed", "2026-11-20T02:30:00+00:00", **_counts())
    sent = []

    class Notifier:
        def __init__(self, **kw):
            pass

        def __call__(self, context):
            sent.append(context["gpdata_alert"])

    monkeypatch.setattr("tests.unit.ops.test_status_index.Notifier", Notifier, raising=False)
    env = {alerts.NOTIFIER_ENV: "tests.unit.ops.test_status_index.Notifier"}
    now = dt.datetime(2026, 11, 20, 4, 31, tzinfo=dt.UTC)
    lines = alerts.late_delivery_alerts(cfg, now=now, env=env)
    assert lines == sent == ["gpdata late: practice=A81001 schedule=@hourly "
                             "last_delivery=2026-11-20T02:30:00+00:00 overdue_hours=0.0"]
    assert alerts.late_delivery_alerts(cfg, now=now.replace(hour=3), env=env) == []


def test_the_page_filters_sorts_and_pages_on_the_server(home):
    cfg = settings.load()
    for i in range(12):
        ods = f"A8{i:04d}"
        _feed(cfg, ods, "@daily" if i % 2 else "@weekly", name=f"Surgery {i}", supplier="EMIS" if i < 6 else "TPP")
        _manifest(cfg, ods, "r1", "committed", **_counts(patients=100 + i))
    _manifest(cfg, "A80003", "r2", "failed", error={"stage": "commit", "cause": "conflict"})
    now = dt.datetime(2026, 11, 23, 11, 0, tzinfo=dt.UTC)
    doc = status.overview(cfg, {"per_page": 5}, now=now)
    assert doc["summary"]["by_state"] == {**{s: 0 for s in status.STATES}, "committed": 11, "failed": 1}
    assert doc["summary"]["failed_by_stage"] == {"commit": 1}
    assert [p["practice"] for p in doc["attention"]] == ["A80003"]
    assert doc["matching"] == 12 and doc["pages"] == 3 and len(doc["practices"]) == 5
    page3 = status.overview(cfg, {"per_page": 5, "page": 3}, now=now)
    assert [p["practice"] for p in page3["practices"]] == ["A80010", "A80011"]
    found = status.overview(cfg, {"q": "surgery 7"}, now=now)
    assert [p["practice"] for p in found["practices"]] == ["A80007"]
    assert [p["practice"] for p in status.overview(cfg, {"q": "a80011"}, now=now)["practices"]] == ["A80011"]
    tpp = status.overview(cfg, {"supplier": "TPP", "schedule": "@daily", "sort": "patients_read", "order": "desc"},
                          now=now)
    assert [p["practice"] for p in tpp["practices"]] == ["A80011", "A80009", "A80007"]
    assert [p["practice"] for p in status.overview(cfg, {"state": "failed"}, now=now)["practices"]] == ["A80003"]
    assert status.query_from({"sort": "nonsense", "per_page": "100000", "state": "x"})["sort"] == "practice"
    assert status.query_from({"per_page": "100000"})["per_page"] == status.MAX_PER_PAGE


def test_broken_feed_files_are_listed_with_their_cause_and_the_others_still_show(home):
    cfg = settings.load()
    _feed(cfg, "A81001")
    (cfg.feeds_dir / "broken.yaml").write_text("ods_code: A81002\nname: x\nlocation: x\nschedule: whenever\n")
    doc = status.overview(cfg)
    [broken] = doc["broken_feeds"]
    assert broken["file"] == "broken.yaml" and "schedule" in broken["cause"]
    assert [p["practice"] for p in doc["practices"]] == ["A81001"]
    # The survey is cached until the folder changes.
    (cfg.feeds_dir / "broken.yaml").unlink()
    assert status.overview(cfg)["broken_feeds"] == []


@pytest.mark.parametrize("route", ["/", "/status.json"])
def test_the_json_endpoint_and_the_page_take_the_same_filters(home, monkeypatch, route):
    from fastapi.testclient import TestClient

    from gpdata.ops.airflow_env import REPO_ROOT

    monkeypatch.syspath_prepend(str(REPO_ROOT / "plugins"))
    from gpdata_ui import ui_app

    cfg = settings.load()
    for i in range(3):
        _feed(cfg, f"A8100{i}", name=f"Surgery {i}")
        _manifest(cfg, f"A8100{i}", "r1", "committed", **_counts())
    client = TestClient(ui_app.create_app(dependencies=[]))
    r = client.get(route, params={"q": "Surgery 1"})
    assert r.status_code == 200
    if route == "/status.json":
        assert [p["practice"] for p in r.json()["practices"]] == ["A81001"]
    else:
        assert 'data-practice="A81001"' in r.text and 'tr class="practice" data-practice="A81000"' not in r.text
        detail = client.get("/practice/A81001")
        assert detail.status_code == 200 and 'data-metric="rows_committed"' in detail.text
        assert client.get("/practice/Z99999").status_code == 404


def test_trend_charts_plot_the_recorded_values(home, monkeypatch):
    from gpdata.ops.airflow_env import REPO_ROOT

    monkeypatch.syspath_prepend(str(REPO_ROOT / "plugins"))
    from gpdata_ui import ui_app

    trend = [{"run_id": "r1", "rows_committed": 10, "quarantine_rate": 0.1, "type1_excluded": 2,
              "duration_seconds": 1.5},
             {"run_id": "r2", "rows_committed": 20, "quarantine_rate": None, "type1_excluded": 0,
              "duration_seconds": 3.0}]
    charts = {c["metric"]: c for c in ui_app.trend_charts(trend)}
    assert [p["value"] for p in charts["rows_committed"]["points"]] == [10, 20]
    assert [p["value"] for p in charts["quarantine_rate"]["points"]] == [0.1]
    top, bottom = charts["rows_committed"]["points"][1]["y"], charts["rows_committed"]["points"][0]["y"]
    assert top < bottom  # the larger value is drawn higher


def test_gpdata_status_rebuild_and_late_on_the_command_line(home, capsys, monkeypatch):
    from gpdata.ops import cli

    cfg = settings.load()
    _feed(cfg, "A81001", "@hourly")
    _manifest(cfg, "A81001", "r1", "committed", "2020-01-01T00:00:00+00:00", **_counts())
    (cfg.store / "_status" / "index.parquet").unlink()
    assert cli.main(["status", "rebuild"]) == 0
    assert "1 practice(s)" in capsys.readouterr().out
    assert _from_index(cfg) == _from_manifests(cfg)
    assert cli.main(["status", "late"]) == 1
    assert capsys.readouterr().out.startswith("gpdata late: practice=A81001 schedule=@hourly")
    monkeypatch.setenv(status.GRACE_ENV, str(60 * 24 * 365 * 100))  # a century's grace: nothing is late
    assert cli.main(["status", "late"]) == 0


def test_the_index_keeps_only_its_own_count_fields_of_a_manifest(home):
    """The index is a new place gpdata writes to: it takes named counts and causes from a manifest, never the
    manifest whole, so a value a future manifest field might carry cannot reach the page's data."""
    cfg = settings.load()
    planted = "9434765919"  # NHS-number-shaped, in fields the index does not know
    _manifest(cfg, "A81001", "r1", "committed", **_counts(), unexpected=planted, source={"note": planted})
    stored = [(cfg.store / "_status" / "index.parquet").read_bytes(),
              (cfg.store / "_status" / "practices" / "A81001.json").read_bytes()]
    assert all(planted.encode() not in data for data in stored)
    assert planted not in json.dumps(status.overview(cfg), default=str)
