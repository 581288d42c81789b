"""What `docker compose config` would check, without a docker engine: the file parses (anchors and merge keys
resolved), the services and their dependencies exist, every Airflow service shares one environment (one
JWT secret, one Fernet key), volumes put include/, DAGs and plugins where the settings point, workers can
be scaled, no credential is committed, the keys reach only the services that pseudonymise, every image is
pinned and the app reaches the object store as a least-privilege user, not as its root."""

from __future__ import annotations

import json
import re
import stat
from urllib.parse import urlsplit

import pytest

from tests.stack import compose
from tests.stack.compose import COMPOSE_FILE, REPO, ComposeError
from tests.stack.stack import compose_variables

AIRFLOW_SERVICES = {"airflow-apiserver", "airflow-scheduler", "airflow-dag-processor", "airflow-triggerer",
                    "airflow-worker", "airflow-init"}
SECRETS = ("PASSWORD", "SECRET", "FERNET", "MASTER_KEY", "ACCESS_KEY")
# The services that pseudonymise (extraction, dissemination) or re-key the store, and so hold the keys.
KEY_HOLDERS = {"airflow-worker", "gpdata-keys"}
KEY_SECRETS = {"gpdata_master_key": "GPDATA_MASTER_KEY_FILE", "gpdata_audit_key": "GPDATA_AUDIT_KEY_FILE"}


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
            if any(s in key for s in SECRETS) and not value.startswith("/run/secrets/"):
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


def test_the_keys_reach_only_the_services_that_pseudonymise(doc):
    services = doc["services"]
    assert set(doc["secrets"]) == set(KEY_SECRETS)
    for name, entry in doc["secrets"].items():
        assert set(entry) == {"file"}, f"secret {name} must be a file secret"
        assert stat.S_IMODE(compose.Path(entry["file"]).stat().st_mode) == 0o600, name
    for secret, variable in KEY_SECRETS.items():
        holders = {n for n, svc in services.items() if secret in (svc.get("secrets") or [])}
        assert holders == KEY_HOLDERS, f"{secret} is mounted on {sorted(holders)}"
        for name in KEY_HOLDERS:
            assert compose.environment(services[name])[variable] == f"/run/secrets/{secret}"
    for name, service in services.items():
        env = compose.environment(service)
        assert "GPDATA_MASTER_KEY" not in env, f"{name} has the key in its environment"
        if name not in KEY_HOLDERS:
            assert not service.get("secrets"), name
            assert not [k for k, v in env.items() if "/run/secrets/" in v or k.endswith("KEY_FILE")], name
    for name in ("airflow-apiserver", "airflow-scheduler", "airflow-dag-processor", "airflow-triggerer"):
        assert name not in KEY_HOLDERS and not services[name].get("secrets")
    keys = services["gpdata-keys"]
    assert keys.get("profiles") and keys.get("restart") in (None, "no")  # one-off: never started by `up`
    assert [keys["entrypoint"], *compose.command(keys)] == ["gpdata", "keys", "rekey"]
    assert compose.environment(keys)["GPDATA_MODE"] == "production"


def test_every_image_is_pinned_by_version():
    raw = compose.load(COMPOSE_FILE)
    version = re.search(r'^version = "([^"]+)"', (REPO / "pyproject.toml").read_text(), re.M).group(1)
    images = {name: svc.get("image") for name, svc in raw["services"].items()}
    images["x-airflow-common"] = raw["x-airflow-common"]["image"]
    for name, image in images.items():
        image = compose.interpolate(image, {})  # the default when .env names no image
        repo, _, tag = image.rpartition(":")
        assert repo and tag and tag != "latest" and re.search(r"\d+\.\d+|RELEASE\.\d{4}", tag), f"{name}: {image}"
    assert compose.interpolate(raw["x-airflow-common"]["image"], {}) == f"gpdata-airflow:{version}"


def test_the_app_uses_a_least_privilege_object_store_user_not_the_root(doc):
    raw = compose.load(COMPOSE_FILE)
    common = compose.environment(raw["x-airflow-common"])
    assert common["AWS_ACCESS_KEY_ID"].startswith("${S3_APP_ACCESS_KEY:")
    assert common["AWS_SECRET_ACCESS_KEY"].startswith("${S3_APP_SECRET_KEY:")
    for name, service in raw["services"].items():  # the root user is known to the object store and its init only
        uses_root = "S3_ROOT_" in json.dumps(compose.environment(service))
        assert uses_root == (name in ("object-store", "object-store-init")), name
    init = doc["services"]["object-store-init"]
    script = " ".join(compose.command(init))
    for step in ("mc admin user add", "mc admin policy create", "mc admin policy attach", "anonymous set none"):
        assert step in script, step
    policy = json.loads(compose.environment(init)["GPDATA_APP_POLICY"])
    actions = [a for st in policy["Statement"] for a in st["Action"]]
    resources = [r for st in policy["Statement"] for r in st["Resource"]]
    assert all(st["Effect"] == "Allow" for st in policy["Statement"])
    assert all(a.startswith("s3:") and "*" not in a for a in actions), actions
    assert not [a for a in actions if re.search(r"Bucket(Policy|Acl)?$|Policy|Acl|CreateBucket|DeleteBucket", a)
                and a not in ("s3:ListBucket", "s3:ListBucketMultipartUploads")], actions
    assert sorted(resources) == ["arn:aws:s3:::BUCKET", "arn:aws:s3:::BUCKET/store/*"]
    bucket = urlsplit(compose.environment(doc["x-airflow-common"])["GPDATA_STORE"])
    assert bucket.path.rstrip("/") == "/store"  # the policy's prefix is where the store lives
