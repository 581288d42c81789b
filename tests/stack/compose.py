"""Reading docker-compose.yaml the way `docker compose config` would, and starting its Airflow parts natively.

Docker cannot run here, so the stack test takes the Airflow settings (the ``AIRFLOW__*`` environment of the
``x-airflow-common`` anchor) from the compose file itself and changes only what differs on this machine:
host names and ports (postgres, redis, airflow-apiserver), the database name and role (a database of the
test's own on the machine's PostgreSQL), and container paths (mapped through the compose volumes to the
repository or a temporary folder). Each Airflow component is started with the command its service runs.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import yaml

REPO = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO / "docker-compose.yaml"
AIRFLOW = str(Path(sys.executable).with_name("airflow"))
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}|\$\$")


class ComposeError(Exception):
    """The compose file is malformed or a value it needs is missing."""


class StackStartupError(Exception):
    """A component of the native stack did not start; the message names it and ends with its output."""


def interpolate(value, env: dict[str, str]):
    """Compose's variable substitution: ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?error}, $$."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def sub(m: re.Match) -> str:
        if m.group(0) == "$$":
            return "$"
        name, op, arg = m.group(1), m.group(2), m.group(3)
        present = name in env and (env[name] != "" or op in ("-", "?"))
        if op in (":-", "-"):
            return env[name] if present else arg
        if op in (":?", "?"):
            if not present:
                raise ComposeError(f"compose variable {name} is required: {arg}")
            return env[name]
        return env.get(name, "")

    return _VAR.sub(sub, value)


def load(path: Path = COMPOSE_FILE, env: dict[str, str] | None = None) -> dict:
    """The compose document with anchors and merge keys resolved (PyYAML) and variables substituted."""
    doc = yaml.safe_load(Path(path).read_text())
    if not isinstance(doc, dict) or "services" not in doc:
        raise ComposeError(f"{path}: no services")
    return interpolate(doc, env or {}) if env is not None else doc


def environment(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):  # the KEY=VALUE form
        env = dict(item.split("=", 1) for item in env)
    return {k: "" if v is None else str(v) for k, v in env.items()}


def secret_files(doc: dict, service: dict) -> dict[str, Path]:
    """The service's compose secrets as {container path (/run/secrets/<name>): host file}."""
    return {f"/run/secrets/{name}": Path(doc["secrets"][name]["file"]) for name in service.get("secrets") or []}


def command(service: dict) -> list[str]:
    cmd = service.get("command") or []
    return cmd.split() if isinstance(cmd, str) else list(cmd)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Native:
    """Where the native run puts what the compose stack puts in containers and volumes."""

    work: Path
    database: str
    redis_db: int
    api_port: int
    pg_host: str = "127.0.0.1"
    pg_port: int = 5432
    pg_user: str = "postgres"
    redis_host: str = "127.0.0.1"
    redis_port: int = 6379
    volume_paths: dict[str, Path] = field(default_factory=dict)

    def host_path(self, volume: str, compose_dir: Path) -> tuple[str, Path]:
        """A compose volume entry (``source:target``) as (container path, host path)."""
        source, target = volume.split(":")[:2]
        if source.startswith((".", "/")):
            return target, (compose_dir / source).resolve()
        return target, self.volume_paths.setdefault(source, self.work / "volumes" / source)


def _rewrite_url(url: str, native: Native) -> str:
    """Point a postgres or redis URL at this machine, keeping its scheme (driver) and everything else."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if host == "postgres":
        netloc = f"{native.pg_user}@{native.pg_host}:{native.pg_port}"
        return urlunsplit((parts.scheme, netloc, f"/{native.database}", parts.query, parts.fragment))
    if host == "redis":
        netloc = f"{native.redis_host}:{native.redis_port}"
        return urlunsplit((parts.scheme, netloc, f"/{native.redis_db}", parts.query, parts.fragment))
    if host == "airflow-apiserver":
        return urlunsplit((parts.scheme, f"127.0.0.1:{native.api_port}", parts.path, parts.query, parts.fragment))
    return url


def native_airflow_env(doc: dict, native: Native, compose_dir: Path = REPO) -> dict[str, str]:
    """The AIRFLOW__* settings of x-airflow-common, with host names, ports and paths made native."""
    common = doc.get("x-airflow-common")
    if not isinstance(common, dict):
        raise ComposeError("docker-compose.yaml has no x-airflow-common block")
    mounts = dict(native.host_path(v, compose_dir) for v in common.get("volumes", []))
    out = {}
    for key, value in environment(common).items():
        if not key.startswith("AIRFLOW__"):
            continue
        if "://" in value:
            value = _rewrite_url(value, native)
        for target, host in sorted(mounts.items(), key=lambda m: -len(m[0])):
            if value == target or value.startswith(target + "/"):
                value = str(host) + value[len(target):]
                break
        out[key] = value
    out["AIRFLOW__API__PORT"] = str(native.api_port)  # the container's 8080, on a free port here
    out["AIRFLOW__API__HOST"] = "127.0.0.1"
    out["AIRFLOW__API__BASE_URL"] = f"http://127.0.0.1:{native.api_port}"
    out["AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_SERVER_PORT"] = str(free_port())
    out["AIRFLOW__CELERY__WORKER_LOG_SERVER_PORT"] = str(free_port())
    out["AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT"] = out["AIRFLOW__CELERY__WORKER_LOG_SERVER_PORT"]
    out["AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT"] = str(free_port())
    out["AIRFLOW_HOME"] = str(native.work / "airflow-home")  # the image's /opt/airflow
    return out


@dataclass
class Component:
    name: str
    proc: subprocess.Popen
    log: Path

    def output(self, tail: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-tail:] if self.log.exists() else ""


class NativeStack:
    """Starts the compose file's Airflow services as local processes; ``stop`` ends every one of them."""

    def __init__(self, env: dict[str, str], doc: dict, work: Path):
        self.env, self.doc, self.work = env, doc, work
        self.components: list[Component] = []

    def run(self, name: str, args: list[str], timeout: float = 300) -> str:
        log = self.work / f"{name}.log"
        with open(log, "w") as fh:
            try:
                proc = subprocess.run([AIRFLOW, *args], env=self.env, stdout=fh, stderr=subprocess.STDOUT,
                                      timeout=timeout, cwd=self.work)
            except subprocess.TimeoutExpired:
                raise StackStartupError(f"{name}: `airflow {' '.join(args[:3])}` timed out after {timeout}s\n"
                                        + log.read_text(errors="replace")[-4000:]) from None
        if proc.returncode != 0:
            raise StackStartupError(f"{name}: `airflow {' '.join(args[:3])}` exited {proc.returncode}\n"
                                    + log.read_text(errors="replace")[-4000:])
        return log.read_text(errors="replace")

    def start(self, service: str) -> Component:
        """`airflow <the service's command>` in its own process group."""
        args = command(self.doc["services"][service])
        if not args:
            raise ComposeError(f"service {service} has no command")
        log = self.work / f"{service}.log"
        fh = open(log, "w")  # noqa: SIM115 - closed when the process ends
        proc = subprocess.Popen([AIRFLOW, *args], env=self.env, stdout=fh, stderr=subprocess.STDOUT,
                                cwd=self.work, start_new_session=True)
        fh.close()
        component = Component(service, proc, log)
        self.components.append(component)
        return component

    def check_alive(self) -> None:
        for c in self.components:
            if c.proc.poll() is not None:
                raise StackStartupError(f"{c.name} exited with {c.proc.returncode} during startup\n{c.output()}")

    def wait_for(self, what: str, ready, timeout: float, component: Component | None = None) -> None:
        """Poll ``ready()`` until true; fail early if any component died (naming it)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check_alive()
            if ready():
                return
            time.sleep(1)
        detail = component.output() if component else ""
        raise StackStartupError(f"{what} not ready after {timeout:.0f}s\n{detail}")

    def stop(self) -> None:
        for c in reversed(self.components):
            if c.proc.poll() is None:
                try:
                    os.killpg(c.proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + 30
        for c in reversed(self.components):
            try:
                c.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            try:  # whatever is left of the group (task processes, pool children)
                os.killpg(c.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            c.proc.wait(timeout=10) if c.proc.poll() is None else None
