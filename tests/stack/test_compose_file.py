"""What `docker compose config` would check, without a docker engine: the file parses (anchors and merge keys
resolved), the services and their dependencies exist, every Airflow service shares one environment (one
JWT secret, one Fernet key), volumes put include/, DAGs and plugins where the settings point, workers can
be scaled, and no credential is committed."""

from __future__ import annotations

import re
from urllib.parse import urlsplit

import pytest

from tests.stack import compose
from tests.stack.compose import COMPOSE_FILE, REPO, ComposeError
from tests.stack.stack import compose_variables

AIRFLOW_SERVICES = {"airflow-apiserver", "airflow-scheduler", "airflow-dag-processor", "airflow-triggerer",
                    "airflow-worker", "airflow-init"}
SECRETS = ("PASSWORD", "SECRET", "FERNET", "MASTER_KEY", "ACCESS_KEY")


@pytest.fixture(scope="module")
def variables():
    return compose_variables()


@pytest.fixture(scope="module")
def doc(variables):
    return compose.load(COMPOSE_FILE, variables)


def test_the_stack_has_every_service_and_its_dependencies_exist(doc):
    services = doc["services"]
    assert AIRFLOW_SERVICES | {"postgres", "redis", "object-store", "object-store-init"} <= set(services)
    for name, service in services.items():
        for dep, cond in (service.get("depends_on") or {}).items():
            assert dep in services, f"{name} depends on unknown service {dep}"
            if cond["condition"] == "service_healthy":
                assert "healthcheck" in services[dep], f"{name} waits for {dep} to be healthy; it has no healthcheck"
            if cond["condition"] == "service_completed_successfully":
                assert services[dep].get("restart") in (None, "no"), f"{dep} must run once and exit"
    for name in AIRFLOW_SERVICES - {"airflow-init"}:
        assert services[name]["depends_on"]["airflow-init"]["condition"] == "service_completed_successfully"
        assert compose.command(services[name]), f"{name} has no command"
    assert "db migrate" in " ".join(compose.command(services["airflow-init"]))


def test_every_airflow_service_shares_one_environment(doc):
    common = compose.environment(doc["x-airflow-common"])
    for name in AIRFLOW_SERVICES:
        env = compose.environment(doc["services"][name])
        shared = {k: env.get(k) for k in common}
        assert shared == common, f"{name}: {[k for k in common if shared[k] != common[k]]} differ from x-airflow-common"
        assert doc["services"][name]["image"] == doc["x-airflow-common"]["image"]
    assert common["AIRFLOW__API_AUTH__JWT_SECRET"] and common["AIRFLOW__CORE__FERNET_KEY"]
    assert common["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    assert common["AIRFLOW__CORE__AUTH_MANAGER"].endswith("fab_auth_manager.FabAuthManager")
    assert urlsplit(common["AIRFLOW__CELERY__BROKER_URL"]).hostname == "redis"
    for key in ("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", "AIRFLOW__CELERY__RESULT_BACKEND"):
        url = urlsplit(common[key])
        assert (url.hostname, url.path) == ("postgres", "/airflow"), key
    assert urlsplit(common["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"]).hostname == "airflow-apiserver"


def test_volumes_put_code_and_configuration_where_the_settings_point(doc):
    common = doc["x-airflow-common"]
    env = compose.environment(common)
    mounts = {target: source for source, target in (v.split(":")[:2] for v in common["volumes"])}
    assert mounts[env["AIRFLOW__CORE__DAGS_FOLDER"]] == "./dags"
    assert mounts[env["AIRFLOW__CORE__PLUGINS_FOLDER"]] == "./plugins"
    assert mounts["/opt/gpdata/include"] == "./include"
    for key, sub in (("GPDATA_FEEDS_DIR", "config/feeds"), ("GPDATA_PROJECTS_DIR", "config/projects")):
        assert env[key] == f"/opt/gpdata/include/{sub}" and (REPO / "include" / sub).is_dir()
    assert mounts[env["GPDATA_HOME"]] in doc["volumes"]
    for source in mounts.values():
        assert source.startswith("./") and (REPO / source).exists() or source in doc["volumes"], source
    assert env["GPDATA_STORE"].startswith("s3://")
    endpoint = urlsplit(env["AWS_ENDPOINT_URL"])
    assert endpoint.hostname == "object-store" and "object-store" in doc["services"]


def test_workers_can_be_scaled(doc):
    worker = doc["services"]["airflow-worker"]
    assert "container_name" not in worker and "ports" not in worker  # replicas would clash
    assert compose.command(worker) == ["celery", "worker"]


def test_no_credential_is_committed_and_every_variable_is_documented():
    raw = compose.load(COMPOSE_FILE)  # not interpolated
    env_example = (REPO / ".env.example").read_text()
    documented = set(re.findall(r"^#?\s*([A-Z_][A-Z0-9_]*)=", env_example, re.M))
    text = COMPOSE_FILE.read_text()
    used = set(re.findall(r"(?<!\$)\$\{([A-Za-z_][A-Za-z0-9_]*)", text))  # $${X} is the container's own
    assert used <= documented, f"undocumented in .env.example: {sorted(used - documented)}"
    for block in [raw["x-airflow-common"], *raw["services"].values()]:
        for key, value in compose.environment(block).items():
            if any(s in key for s in SECRETS):
                assert re.fullmatch(r"\$\{[A-Z_0-9]+:\?[^}]*\}", value), f"{key} must come from .env: {value!r}"
    for line in env_example.splitlines():
        key, _, value = line.partition("=")
        if not line.startswith("#") and any(s in key for s in SECRETS):
            assert value == "", f".env.example must not carry a value for {key}"
    assert ".env" in (REPO / ".gitignore").read_text().split()


def test_a_missing_variable_stops_interpolation_naming_it(variables):
    short = {k: v for k, v in variables.items() if k != "AIRFLOW_JWT_SECRET"}
    with pytest.raises(ComposeError, match="AIRFLOW_JWT_SECRET"):
        compose.load(COMPOSE_FILE, short)
    assert compose.interpolate("${A:-x}/${B-y}/$${C}", {"B": ""}) == "x//${C}"


def test_the_image_is_the_pinned_airflow_plus_requirements():
    dockerfile = (REPO / "Dockerfile").read_text()
    base = re.search(r"^FROM apache/airflow:([0-9.]+)-python3\.11", dockerfile, re.M)
    assert base, "Dockerfile must build on the official Airflow image"
    pinned = re.search(r"^apache-airflow==([0-9.]+)$", (REPO / "requirements.txt").read_text(), re.M).group(1)
    assert base.group(1) == pinned
    assert "requirements.txt" in dockerfile and "pip install" in dockerfile
