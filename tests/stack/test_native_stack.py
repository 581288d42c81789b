"""The compose stack, proven natively: the Airflow settings of docker-compose.yaml (CeleryExecutor, PostgreSQL,
Redis, FAB auth, shared JWT secret and Fernet key) start a scheduler, dag-processor, api-server and Celery
worker here; the extraction DAG is triggered through the authenticated REST API and lands curated rows, and
the leak scanner finds no identifier in the S3 store or anything the stack wrote.
A deliberately broken copy of the compose file (executor, broker or database) must stop the startup."""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

from gpdata import settings, store
from gpdata.ops.leakscan import collect_identifiers, dump_findings, scan_tree
from gpdata.synth import generate
from gpdata.synth.feeds import write_synthetic_feeds
from tests.stack import compose, stack
from tests.stack.compose import COMPOSE_FILE, REPO, StackStartupError
from tests.support.s3 import create_bucket, moto_server

pytestmark = pytest.mark.system
DAG = "gpdata_extract"


@pytest.fixture(scope="module")
def database():
    with stack.postgres_database() as name:
        yield name


@pytest.fixture(scope="module")
def redis_db():
    with stack.redis_database() as number:
        yield number


def _gpdata(home: Path, variables: dict[str, str], endpoint: str):
    """gpdata's settings from the compose file (store on s3://, credentials, production mode, key), with the
    object store's host and port and the container paths made native; two tiny synthetic practices."""
    doc = compose.load(COMPOSE_FILE, variables)
    worker = doc["services"]["airflow-worker"]  # the worker's environment: the keys are its secrets
    files = compose.secret_files(doc, worker)
    env = {k: str(files.get(v, v)) for k, v in compose.environment(worker).items()
           if k.startswith(("GPDATA_", "AWS_", "GX_"))}
    assert env["GPDATA_STORE"].startswith("s3://") and urlsplit(env["AWS_ENDPOINT_URL"]).hostname == "object-store"
    projects = env["GPDATA_PROJECTS_DIR"].replace("/opt/gpdata/include", str(REPO / "include"))
    env.update({"GPDATA_HOME": str(home), "GPDATA_FEEDS_DIR": str(home / "feeds"), "AWS_ENDPOINT_URL": endpoint,
                "GPDATA_PROJECTS_DIR": projects})
    create_bucket(endpoint, urlsplit(env["GPDATA_STORE"]).netloc, env["AWS_ACCESS_KEY_ID"],
                  env["AWS_SECRET_ACCESS_KEY"], env["AWS_REGION"])  # what object-store-init does
    cfg = settings.load(env)
    truths = generate(home, n_practices=2, n_patients=50, events_per_patient=20, dirty_fraction=0.0,
                      optout_fraction=0.1, seed=11)
    write_synthetic_feeds([t.ods_code for t in truths], cfg.sources, cfg.feeds_dir)
    return env, cfg, sorted(t.ods_code for t in truths)


def _wait_for_run(started: stack.Started, token: str, run_id: str, timeout: float = 420) -> str:
    deadline = time.monotonic() + timeout
    state = "queued"
    while time.monotonic() < deadline:
        started.stack.check_alive()
        state = stack.http("GET", f"{started.api}/api/v2/dags/{DAG}/dagRuns/{run_id}", token=token)["state"]
        if state in ("success", "failed"):
            return state
        time.sleep(3)
    raise AssertionError(f"run {run_id} still {state} after {timeout}s")


def _extract_through_the_api(started: stack.Started, cfg, practices: list[str]) -> None:
    assert started.env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    token = started.token()
    with pytest.raises(Exception, match="401|403"):  # the API refuses a request without the token
        stack.http("GET", f"{started.api}/api/v2/dags/{DAG}")
    deadline = time.monotonic() + 180
    while True:  # the dag-processor has parsed the DAG file
        try:
            stack.http("GET", f"{started.api}/api/v2/dags/{DAG}", token=token)
            break
        except Exception:
            if time.monotonic() > deadline:
                raise
            started.stack.check_alive()
            time.sleep(2)
    stack.http("PATCH", f"{started.api}/api/v2/dags/{DAG}", body='{"is_paused": false}', token=token)
    run = stack.http("POST", f"{started.api}/api/v2/dags/{DAG}/dagRuns", body='{"logical_date": null}',
                     token=token)
    state = _wait_for_run(started, token, run["dag_run_id"])
    tis = stack.http("GET", f"{started.api}/api/v2/dags/{DAG}/dagRuns/{run['dag_run_id']}/taskInstances",
                     token=token)["task_instances"]
    assert state == "success", [(t["task_id"], t["state"]) for t in tis]
    assert tis and all(t["state"] in ("success", "skipped") for t in tis)
    # Every task ran on the Celery worker (not in the scheduler): its log names each task it executed.
    worker_log = next(c for c in started.stack.components if c.name == "airflow-worker").output(10**7)
    ran = [t for t in tis if t["task_id"] != "all_practices_ok"]  # an EmptyOperator: the scheduler settles it
    assert all(t["task_id"] in worker_log for t in ran), worker_log[-3000:]
    for practice in practices:
        counts = store.row_counts(cfg.store, practice)
        assert all(n > 0 for n in counts.values()), (practice, counts)
        # unpausing may start a scheduled run first; then this run finds nothing new and skips the practice
        assert store.last_committed(cfg.manifests, practice)["committed_rows"] == counts


def test_the_compose_stack_runs_the_extraction_dag_on_celery(tmp_path, database, redis_db):
    variables = stack.compose_variables()
    work = tmp_path / "stack"
    work.mkdir()
    began = time.monotonic()
    with moto_server() as endpoint:  # the compose file's object-store service
        gp_env, cfg, practices = _gpdata(tmp_path / "gpdata", variables, endpoint)
        started = None
        try:
            started = stack.start(COMPOSE_FILE, work, database, redis_db, gp_env, variables)
            _extract_through_the_api(started, cfg, practices)
        except BaseException as err:
            if started is None and getattr(err, "stack", None):
                err.stack.stop()
            raise
        finally:
            if started is not None:
                started.stack.stop()
        # nothing identifying in the store on S3, the stack's logs (every component, every task) or its folders
        findings = scan_tree([cfg.store, cfg.extracts, cfg.register, work], collect_identifiers(cfg.sources))
        assert findings == [], dump_findings(findings)
    print(f"native compose stack: startup to curated rows on S3 in {time.monotonic() - began:.0f}s")


def _broken_copy(tmp_path: Path, key: str, value: str) -> Path:
    doc = yaml.safe_load(COMPOSE_FILE.read_text())
    assert key in doc["x-airflow-common"]["environment"]
    doc["x-airflow-common"]["environment"][key] = value
    shutil.copy(COMPOSE_FILE.parent / "Dockerfile", tmp_path / "Dockerfile")
    path = tmp_path / "docker-compose.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


@pytest.mark.parametrize(("key", "value", "names"), [
    ("AIRFLOW__CORE__EXECUTOR", "CeleryExecuter", "CeleryExecuter"),
    ("AIRFLOW__CELERY__BROKER_URL", "redis://:@redis-broker:6379/0", "broker"),
    ("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", "postgresql+psycopg2://airflow:${POSTGRES_PASSWORD}@postgress:5432/airflow",
     "airflow-init-migrate"),
])
def test_a_broken_compose_setting_stops_the_stack(tmp_path, database, redis_db, key, value, names):
    variables = stack.compose_variables()
    broken = _broken_copy(tmp_path, key, value)
    work = tmp_path / "stack"
    work.mkdir()
    gp_env = {"GPDATA_HOME": str(tmp_path / "gpdata"), "GPDATA_FEEDS_DIR": str(tmp_path / "feeds"),
              "GPDATA_SECRETS_DIR": str(tmp_path / "secrets")}
    with pytest.raises(StackStartupError, match=names) as failure:
        try:
            started = stack.start(broken, work, database, redis_db, gp_env, variables, timeout=90)
        except BaseException as err:
            if getattr(err, "stack", None):
                err.stack.stop()
            raise
        started.stack.stop()
    assert key.split("__")[-1].lower() in failure.value.args[0].lower() or names in failure.value.args[0]
