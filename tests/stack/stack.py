"""The native stack: the compose file's Airflow services, started here on real PostgreSQL and Redis."""

from __future__ import annotations

import json
import os
import secrets
import tempfile
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from cryptography.fernet import Fernet

from tests.stack import compose
from tests.stack.compose import Native, NativeStack, StackStartupError

ADMIN = "admin"
# The services the stack test starts (the triggerer is left out: no deferred task in gpdata's DAGs).
SERVICES = ("airflow-apiserver", "airflow-scheduler", "airflow-dag-processor", "airflow-worker")


def compose_variables() -> dict[str, str]:
    """Fresh values for every ${...} of .env.example (what an operator fills into .env), with the two key
    files the compose secrets point to (a production key file and an audit key, each 0600)."""
    from gpdata.privacy import keys

    folder = Path(tempfile.mkdtemp(prefix="gpdata-compose-keys-"))
    keys.write_key_file(folder / "master.key")
    fd = os.open(folder / "audit.key", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(secrets.token_hex(32))
    return {
        "AIRFLOW_UID": str(os.getuid()),
        "AIRFLOW_JWT_SECRET": secrets.token_hex(32),
        "AIRFLOW_FERNET_KEY": Fernet.generate_key().decode(),
        "POSTGRES_PASSWORD": secrets.token_hex(16),
        "_AIRFLOW_WWW_USER_USERNAME": ADMIN,
        # always starts with "-": a password read as a command-line option once broke airflow-init at random
        "_AIRFLOW_WWW_USER_PASSWORD": "-" + secrets.token_urlsafe(16),
        "GPDATA_MASTER_KEY_PATH": str(folder / "master.key"),
        "GPDATA_AUDIT_KEY_PATH": str(folder / "audit.key"),
        "S3_ROOT_USER": secrets.token_hex(8),
        "S3_ROOT_PASSWORD": secrets.token_hex(16),
        "S3_APP_ACCESS_KEY": secrets.token_hex(8),
        "S3_APP_SECRET_KEY": secrets.token_hex(16),
        "GPDATA_BUCKET": "gpdata",
        "AWS_REGION": "eu-west-2",
    }


@contextmanager
def postgres_database():
    """A database of our own on the machine's PostgreSQL, dropped afterwards."""
    import psycopg2

    name = f"gpdata_stack_test_{secrets.token_hex(4)}"
    conn = psycopg2.connect(host="127.0.0.1", port=5432, user="postgres", dbname="postgres")
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{name}"')
        yield name
    finally:
        with conn.cursor() as cur:
            cur.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,))
            cur.execute(f'DROP DATABASE IF EXISTS "{name}"')
        conn.close()


@contextmanager
def redis_database():
    """An empty Redis database other than 0 (others' tests use the same server); flushed afterwards."""
    import redis

    for number in secrets.SystemRandom().sample(range(1, 16), 15):
        client = redis.Redis(host="127.0.0.1", port=6379, db=number)
        if client.dbsize() == 0:
            try:
                yield number
            finally:
                client.flushdb()
                client.close()
            return
    raise RuntimeError("no empty Redis database among 1..15")


@dataclass
class Started:
    stack: NativeStack
    env: dict[str, str]
    variables: dict[str, str]
    api: str

    def token(self) -> str:
        body = json.dumps({"username": ADMIN, "password": self.variables["_AIRFLOW_WWW_USER_PASSWORD"]})
        return http("POST", f"{self.api}/auth/token", body=body)["access_token"]


def http(method: str, url: str, body: str | None = None, token: str | None = None) -> dict:
    headers = {"Content-Type": "application/json", "Accept": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(url, data=body.encode() if body else None, method=method, headers=headers)
    with urllib.request.urlopen(req, timeout=30) as resp:  # noqa: S310 - a local URL we built
        return json.loads(resp.read() or b"{}")


def _health(api: str) -> dict | None:
    try:
        return http("GET", f"{api}/api/v2/monitor/health")
    except (urllib.error.URLError, OSError, ValueError):
        return None


def _healthy(api: str, *parts: str) -> bool:
    health = _health(api)
    return bool(health) and all((health.get(p) or {}).get("status") == "healthy" for p in parts)


def start(compose_file: Path, work: Path, database: str, redis_db: int, gpdata_env: dict[str, str],
          variables: dict[str, str] | None = None, timeout: float = 180) -> Started:
    """Start the compose file's Airflow services natively. Raises StackStartupError naming what failed;
    the caller must call ``stack.stop()`` (also after a failure: ``err.stack``)."""
    variables = variables or compose_variables()
    doc = compose.load(compose_file, variables)
    native = Native(work=work, database=database, redis_db=redis_db, api_port=compose.free_port())
    airflow = compose.native_airflow_env(doc, native, compose_file.parent)
    base = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "GPDATA", "AWS_"))}
    bin_dir = str(Path(compose.AIRFLOW).parent)
    env = {**base, **gpdata_env, **airflow, "PATH": f"{bin_dir}:{base.get('PATH', '')}"}
    Path(env["AIRFLOW_HOME"]).mkdir(parents=True, exist_ok=True)
    stack = NativeStack(env, doc, work)
    started = Started(stack, env, variables, f"http://127.0.0.1:{native.api_port}")
    try:
        # airflow-init: migrate, then the admin user (FAB auth manager)
        stack.run("airflow-init-migrate", ["db", "migrate"])
        stack.run("airflow-init-user", ["users", "create", "--role", "Admin", "--username", ADMIN,
                                        f"--password={variables['_AIRFLOW_WWW_USER_PASSWORD']}",
                                        "--firstname", "Admin",
                                        "--lastname", "User", "--email", "admin@example.org"])
        api = stack.start("airflow-apiserver")
        for service in SERVICES[1:]:
            stack.start(service)
        worker = stack.components[-1]
        deadline = time.monotonic() + timeout
        stack.wait_for("airflow-apiserver (metadata database)", lambda: _healthy(started.api, "metadatabase"),
                       timeout, api)

        def worker_ready() -> bool:
            out = worker.output(tail=100_000)
            if "Cannot connect to" in out:
                raise StackStartupError(f"airflow-worker cannot reach its Celery broker\n{worker.output()}")
            return " ready." in out

        stack.wait_for("airflow-worker (Celery broker)", worker_ready, max(10, deadline - time.monotonic()), worker)
        stack.wait_for("airflow-scheduler and airflow-dag-processor",
                       lambda: _healthy(started.api, "scheduler", "dag_processor"),
                       max(10, deadline - time.monotonic()), stack.components[1])
    except Exception as err:
        err.stack = stack
        raise
    return started


__all__ = ["StackStartupError", "Started", "start", "postgres_database", "redis_database", "http"]
