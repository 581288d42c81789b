"""Failure callback and deadline alert (plugins/gpdata_airflow/alerts.py), without a scheduler."""

import asyncio
import datetime as dt
import json
import logging
import types

import pytest

from gpdata import settings, store
from gpdata.errors import ConfigError, GpdataError, QualityGateError
from gpdata.ops.airflow_env import REPO_ROOT

NOTIFIED: list[str] = []


@pytest.fixture
def alerts(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO_ROOT / "plugins"))
    monkeypatch.delenv("GPDATA_ALERT_NOTIFIER", raising=False)
    monkeypatch.delenv("GPDATA_DEADLINE_MINUTES", raising=False)
    NOTIFIED.clear()
    from gpdata_airflow import alerts

    return alerts


def _recording_notifier():
    from airflow.sdk import BaseNotifier

    class RecordingNotifier(BaseNotifier):
        template_fields = ("message",)

        def __init__(self, message: str, fail: bool = False):
            super().__init__()
            self.message, self.fail = message, fail

        def notify(self, context):
            if self.fail:
                raise ConnectionError("smtp down")
            NOTIFIED.append(self.message)

    return RecordingNotifier


RecordingNotifier = None  # set on first use: a module attribute, so the notifier has a dotted path


@pytest.fixture
def notifier(monkeypatch):
    global RecordingNotifier
    RecordingNotifier = RecordingNotifier or _recording_notifier()
    monkeypatch.setenv("GPDATA_ALERT_NOTIFIER", f"{__name__}.RecordingNotifier")
    monkeypatch.setenv("GPDATA_ALERT_NOTIFIER_KWARGS", json.dumps({"message": "ALERT {{ gpdata_alert }}"}))


def _context(exc, task_id="A81001.quality", run_id="manual__1", ods_code=None):
    ti = types.SimpleNamespace(task_id=task_id, dag_id="gpdata_extract", run_id=run_id, map_index=-1,
                               rendered_map_index=None)
    task = types.SimpleNamespace(task_id=task_id, ods_code=ods_code)
    return {"exception": exc, "ti": ti, "task_instance": ti, "task": task, "run_id": run_id}


def _lines(caplog):
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith("gpdata failure:")]


def test_a_gpdata_error_gives_one_line_and_a_failed_manifest(home, alerts, caplog):
    caplog.set_level(logging.INFO)
    exc = GpdataError("delivery folder not found", practice="A81001", stage="extract", file="deliveries/A81001")
    line = alerts.failure_callback(_context(exc, task_id="A81001.extract"))
    assert _lines(caplog) == [line]
    assert line == ("gpdata failure: practice=A81001 stage=extract "
                    "cause=delivery folder not found (file deliveries/A81001)")
    latest = store.latest_manifests(settings.load().manifests)["A81001"]
    assert latest["status"] == "failed" and latest["run_id"] == "manual__1"
    assert latest["error"]["stage"] == "extract" and latest["error"]["cause"].startswith("delivery folder not found")
    assert store.last_committed(settings.load().manifests, "A81001") is None


def test_a_failed_quality_manifest_of_the_same_run_keeps_its_counts(home, alerts):
    cfg = settings.load()
    counts = {"run_id": "manual__1", "status": "failed_quality", "patients_read": 12,
              "quality": {"passed": False, "failures": ["observations: 9 of 20 rows quarantined"]}}
    store.write_manifest(cfg.manifests, "A81001", "manual__1", counts)
    exc = QualityGateError("quality gate failed, nothing committed: observations: 9 of 20 rows quarantined",
                           practice="A81001", stage="quality")
    alerts.failure_callback(_context(exc))
    latest = store.latest_manifests(cfg.manifests)["A81001"]
    assert latest["status"] == "failed_quality" and latest["patients_read"] == 12
    assert latest["error"]["cause"] == exc.cause
    # a later run's failure writes its own manifest and leaves the earlier run's file alone
    alerts.failure_callback(_context(exc, run_id="manual__2"))
    assert store.latest_manifests(cfg.manifests)["A81001"]["status"] == "failed"
    assert store.read_json(cfg.manifests / "A81001" / "manual__1.json")["status"] == "failed_quality"


def test_other_errors_are_named_by_type_only_and_the_practice_comes_from_the_task(home, alerts, caplog):
    caplog.set_level(logging.INFO)
    line = alerts.failure_callback(_context(ValueError("bad value 9990000018 for Quinlan"), task_id="x.commit",
                                            ods_code="B82002"))
    assert line.startswith("gpdata failure: practice=B82002 stage=commit cause=ValueError")
    assert "9990000018" not in caplog.text and "Quinlan" not in caplog.text
    assert "Quinlan" not in (settings.load().manifests / "B82002" / "latest.json").read_text()
    mapped = _context(KeyError("k"), task_id="practices.extract")
    mapped["ti"].rendered_map_index = "C83003"
    assert alerts.describe_failure(mapped)[:2] == ("C83003", "extract")


def test_a_chunk_task_records_no_practice_of_its_own(home, alerts, caplog):
    """A chunk of practices recorded each failure in the failed practice's manifest; its own failure (naming
    them) is put on no practice, even when its label is one ODS code."""
    from gpdata_airflow.operators import PracticeChunkOperator

    caplog.set_level(logging.INFO)
    exc = GpdataError("1 of 2 practices failed: B82002 (extract)", stage="chunk")
    for label in ("A81001 +1", "A81001"):
        context = _context(exc, task_id="practices_001.chunk")
        context["task"] = PracticeChunkOperator(task_id="chunk", ods_codes=["A81001", "B82002"], feeds_dir="x")
        context["ti"].rendered_map_index = label
        line = alerts.failure_callback(context)
        assert line == "gpdata failure: practice=- stage=chunk cause=1 of 2 practices failed: B82002 (extract)"
    assert not settings.load().manifests.exists()


def test_a_task_with_no_practice_logs_but_writes_no_manifest(home, alerts, caplog):
    caplog.set_level(logging.INFO)
    line = alerts.failure_callback(_context(GpdataError("no release while a commit is unfinished"),
                                            task_id="release"))
    assert line == "gpdata failure: practice=- stage=release cause=no release while a commit is unfinished"
    assert not settings.load().manifests.exists()


def test_a_multi_line_cause_is_one_line(alerts):
    exc = GpdataError("first\nsecond   third", practice="A81001", stage="quality")
    assert alerts.describe_failure(_context(exc))[2] == "first second third"


def test_the_configured_notifier_gets_the_line(home, alerts, notifier):
    line = alerts.failure_callback(_context(GpdataError("boom", practice="A81001", stage="commit")))
    assert NOTIFIED == [f"ALERT {line}"]


def test_a_failing_notifier_is_logged_not_raised(home, alerts, notifier, monkeypatch, caplog):
    monkeypatch.setenv("GPDATA_ALERT_NOTIFIER_KWARGS", json.dumps({"message": "x", "fail": True}))
    alerts.failure_callback(_context(GpdataError("boom", practice="A81001", stage="commit")))
    assert NOTIFIED == [] and "notifier" in caplog.text and "ConnectionError" in caplog.text
    monkeypatch.setenv("GPDATA_ALERT_NOTIFIER_KWARGS", "{not json")
    assert alerts.notify({}, "line") is False


def test_no_notifier_by_default(alerts):
    assert alerts.load_notifier({}) is None and alerts.notify({}, "line", env={}) is False


def test_deadline_alert_is_off_unless_configured(alerts):
    assert alerts.deadline_alert({}) is None and alerts.deadline_alert({"GPDATA_DEADLINE_MINUTES": "0"}) is None
    alert = alerts.deadline_alert({"GPDATA_DEADLINE_MINUTES": "90"})
    from airflow.sdk import AsyncCallback, DeadlineReference

    assert alert.interval == dt.timedelta(minutes=90) and alert.reference == DeadlineReference.DAGRUN_QUEUED_AT
    assert isinstance(alert.callback, AsyncCallback)
    assert alert.callback.path == "gpdata_airflow.alerts.late_run" and alert.callback.kwargs == {"minutes": 90}
    for bad in ("soon", "-5", "1.5"):
        with pytest.raises(ConfigError, match="GPDATA_DEADLINE_MINUTES"):
            alerts.deadline_alert({"GPDATA_DEADLINE_MINUTES": bad})


def test_late_run_logs_and_notifies(alerts, notifier, caplog):
    caplog.set_level(logging.INFO)
    context = {"dag_run": {"dag_id": "gpdata_extract", "run_id": "scheduled__1"},
               "deadline": {"deadline_time": "2026-11-23T12:00:00+00:00"}}
    line = asyncio.run(alerts.late_run(context=context, minutes=90))
    assert line.startswith("gpdata late run: dag=gpdata_extract run=scheduled__1 not finished 90 minutes")
    assert line in caplog.text and NOTIFIED == [f"ALERT {line}"]


def test_the_extraction_dag_wires_the_callback_and_no_deadline_by_default(home, alerts, monkeypatch):
    monkeypatch.setenv("AIRFLOW_HOME", str(home / "airflow"))
    cfg = settings.load()
    cfg.feeds_dir.mkdir(parents=True)
    (cfg.feeds_dir / "A81001.yaml").write_text("ods_code: A81001\nname: P\nlocation: x\n")
    from gpdata_airflow.dag_factory import build_extraction_dag

    dag = build_extraction_dag()
    assert all(alerts.failure_callback in dag.task_dict[t].on_failure_callback for t in dag.task_ids)
    # task docs say what each stage does
    assert "type 1 opt-outs" in dag.task_dict["practices_001.practice.extract"].doc_md
    assert "Great Expectations" in dag.task_dict["practices_001.practice.quality"].doc_md
    assert "one gpdata failure line" in dag.task_dict["practices_001.chunk"].doc_md
    assert not dag.deadline
    monkeypatch.setenv("GPDATA_DEADLINE_MINUTES", "45")
    [deadline] = build_extraction_dag().deadline
    assert deadline.interval == dt.timedelta(minutes=45)


def test_a_practice_that_failed_at_extraction_is_summarised_without_none(home, alerts):
    from gpdata.ops.report import practice_lines
    from gpdata_airflow.operators import _headline

    exc = GpdataError("not valid JSON", practice="A81001", stage="extract", file="b.json")
    alerts.failure_callback(_context(exc, task_id="A81001.extract"))
    latest = store.latest_manifests(settings.load().manifests)["A81001"]
    headline, lines = _headline(latest), practice_lines("A81001", latest)
    assert headline.startswith("nothing read (failed at extract: not valid JSON")
    assert lines[1].startswith("    nothing read: failed at extract: not valid JSON")
    assert "None" not in headline + "".join(lines)
