"""The demo's progress lines (followed from Airflow's task states) and its failure report (the cause last)."""

import io
import sqlite3
import sys

import pytest

from gpdata.ops import demo


def _db(path):
    con = sqlite3.connect(path)
    con.executescript("""
        CREATE TABLE dag_run (id INTEGER PRIMARY KEY, dag_id TEXT, run_id TEXT);
        CREATE TABLE task_instance (task_id TEXT, dag_id TEXT, run_id TEXT, map_index INTEGER,
                                    rendered_map_index TEXT, state TEXT, duration REAL, start_date TEXT);
        INSERT INTO dag_run VALUES (1, 'gpdata_extract', 'old');
        INSERT INTO task_instance VALUES ('prepare_store', 'gpdata_extract', 'old', -1, NULL, 'success', 1, '1');
    """)
    con.commit()
    return con


def test_each_practice_and_stage_is_reported_once_per_state_from_the_new_run_only(tmp_path):
    con = _db(tmp_path / "airflow.db")
    lines = []
    follower = demo.TaskFollower(tmp_path / "airflow.db", "gpdata_extract", lambda line, *_: lines.append(line))
    con.executescript("""
        INSERT INTO dag_run VALUES (2, 'gpdata_extract', 'new');
        INSERT INTO task_instance VALUES ('prepare_store', 'gpdata_extract', 'new', -1, NULL, 'success', 4.2, '2');
        INSERT INTO task_instance VALUES ('practices_001.extract', 'gpdata_extract', 'new', 0, 'A81001', 'running',
                                          NULL, '3');
        INSERT INTO task_instance VALUES ('practices_001.commit', 'gpdata_extract', 'new', 0, NULL, 'running',
                                          NULL, '4');
    """)
    con.commit()
    follower.poll()
    follower.poll()  # nothing changed: nothing more said
    con.execute("UPDATE task_instance SET state = 'failed', duration = 12.4 WHERE task_id = 'practices_001.extract'")
    con.commit()
    follower.poll()
    assert lines == ["prepare_store: done in 4 s", "A81001 extract: running", "A81001 commit: running",
                     "A81001 extract: FAILED in 12 s"]
    assert follower.failed() == ["A81001 extract"]


def test_a_busy_or_unready_database_skips_the_poll(tmp_path):
    lines = []
    follower = demo.TaskFollower(tmp_path / "missing.db", "gpdata_extract", lambda line, *_: lines.append(line))
    follower.poll()
    assert lines == []


def test_the_causes_are_the_exception_lines_last_first_without_repeats():
    log = "\n".join([
        "[2026-12-01] INFO - starting",
        "Traceback (most recent call last):",
        '  File "x.py", line 1, in <module>',
        "gpdata.errors.KeyConfigError: no pseudonymisation key: set GPDATA_MASTER_KEY or GPDATA_MASTER_KEY_FILE",
        "[2026-12-01] ERROR - again",
        "gpdata.errors.KeyConfigError: no pseudonymisation key: set GPDATA_MASTER_KEY or GPDATA_MASTER_KEY_FILE",
        "airflow.exceptions.AirflowException: Task failed",
        "[2026-12-01] INFO - 40 more lines of shutdown",
    ])
    assert demo.failure_causes(log) == [
        "AirflowException: Task failed",
        "KeyConfigError: no pseudonymisation key: set GPDATA_MASTER_KEY or GPDATA_MASTER_KEY_FILE"]


def test_a_failed_airflow_command_ends_with_its_cause(tmp_path, monkeypatch):
    """The demo's report of a failed step: the step, the log, and the cause as the very last line."""
    fake = tmp_path / "bin" / "airflow"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\necho 'KeyError: first'\necho 'Traceback (most recent call last):'\n"
                    "echo 'gpdata.errors.GpdataError: practice A81001: file x.json: not a FHIR bundle'\n"
                    "for i in $(seq 40); do echo \"log line $i\"; done\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setattr(sys, "executable", str(tmp_path / "bin" / "python"))
    log = tmp_path / "demo.log"
    log.write_text("an earlier step's RuntimeError: not this one\n")
    with pytest.raises(demo.DemoFailed) as failed:
        demo._airflow(["dags", "test", "gpdata_extract"], {"AIRFLOW_HOME": str(tmp_path)}, log)
    message = str(failed.value.code)
    assert message.splitlines()[0].endswith(f"failed (exit 1); full log: {log}")
    assert message.splitlines()[-1] == ("[gpdata demo] cause: GpdataError: practice A81001: file x.json: "
                                        "not a FHIR bundle")
    assert message.splitlines()[-2] == "[gpdata demo] earlier: KeyError: first"
    assert "log line" not in message and "not this one" not in message


def test_on_a_terminal_a_progress_bar_counts_the_finished_tasks_and_keeps_each_line(monkeypatch):
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.setattr(sys, "stdout", Terminal())
    with demo.Progress("gpdata_extract") as progress:
        progress("A81001 extract: running", False, 3)
        progress("A81001 extract: done in 3 s", True, 3)
    out = sys.stdout.getvalue()
    assert "[gpdata demo]   A81001 extract: running" in out and "[gpdata demo]   A81001 extract: done in 3 s" in out
    assert "[gpdata demo] gpdata_extract" in out and "1/3" in out
