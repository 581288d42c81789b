"""`gpdata secrets init` writes the .env docker compose needs: a generated value for every secret the compose
file requires, the two key files it names (0600, outside the project, never replaced), nothing printed."""

import json
import shutil
import stat

import pytest

from gpdata.errors import ConfigError
from gpdata.ops import cli, compose_secrets
from tests.stack import compose
from tests.stack.compose import COMPOSE_FILE, REPO


@pytest.fixture
def project(tmp_path):
    """A copy of the project's compose file and .env.example, with a keys folder outside it."""
    folder = tmp_path / "project"
    folder.mkdir()
    shutil.copy(COMPOSE_FILE, folder / "docker-compose.yaml")
    shutil.copy(REPO / ".env.example", folder / ".env.example")
    return folder


def _read_env_text(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines() if line and not line.startswith("#"))


def _read_env(path) -> dict[str, str]:
    return _read_env_text(path.read_text())


def _mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_every_variable_the_compose_file_requires_gets_a_value(project, tmp_path, capsys):
    keys_dir = tmp_path / "keys"
    assert cli.main(["secrets", "init", "--compose-file", str(project / "docker-compose.yaml"),
                     "--keys-dir", str(keys_dir)]) == 0
    out = capsys.readouterr().out
    env_file = project / ".env"
    values = _read_env(env_file)
    required = [n for n, req in compose_secrets.compose_variables(COMPOSE_FILE.read_text()).items() if req]
    assert len(required) >= 10 and all(values.get(n) for n in required), [n for n in required if not values.get(n)]
    doc = compose.load(project / "docker-compose.yaml", values)  # interpolates as docker compose would
    common = compose.environment(doc["x-airflow-common"])
    assert common["AIRFLOW__CORE__FERNET_KEY"] == values["AIRFLOW_FERNET_KEY"]
    from cryptography.fernet import Fernet

    Fernet(values["AIRFLOW_FERNET_KEY"])  # a valid Fernet key
    # the key files: made, 0600, where the compose secrets point, in the formats gpdata reads
    for name, entry in doc["secrets"].items():
        path = compose.Path(entry["file"])
        assert path.parent == keys_dir.resolve() and _mode(path) == 0o600, name
    assert json.loads((keys_dir / "master.key").read_text())["keys"][0]["key"]
    assert len(bytes.fromhex((keys_dir / "audit.key").read_text())) == 32
    assert _mode(env_file) == 0o600
    # no value is printed (the key file paths are not secrets)
    secret_values = [v for n, v in values.items() if v and any(s in n for s in ("PASSWORD", "SECRET", "KEY", "USER"))
                     and not n.endswith("_PATH") and n != "_AIRFLOW_WWW_USER_USERNAME"]
    assert len(secret_values) >= 7 and not [v for v in secret_values if v in out]
    # fresh values: a second project gets others
    other = tmp_path / "other"
    shutil.copytree(project, other, ignore=shutil.ignore_patterns(".env"))
    compose_secrets.init(other / "docker-compose.yaml", keys_dir=tmp_path / "keys2")
    again = _read_env(other / ".env")
    assert all(again[n] != values[n] for n in compose_secrets.GENERATED)


def test_an_existing_env_is_kept_without_force_and_key_files_are_never_replaced(project, tmp_path, capsys):
    keys_dir = tmp_path / "keys"
    compose_secrets.init(project / "docker-compose.yaml", keys_dir=keys_dir)
    before = (project / ".env").read_text()
    master = (keys_dir / "master.key").read_text()
    args = ["secrets", "init", "--compose-file", str(project / "docker-compose.yaml"), "--keys-dir", str(keys_dir)]
    assert cli.main(args) == 2
    assert "exists already" in capsys.readouterr().err and (project / ".env").read_text() == before
    assert cli.main([*args, "--force"]) == 0
    assert "kept the existing" in capsys.readouterr().out
    after = _read_env(project / ".env")
    assert after["POSTGRES_PASSWORD"] != _read_env_text(before)["POSTGRES_PASSWORD"]
    assert (keys_dir / "master.key").read_text() == master  # the store's pseudonyms depend on it


def test_key_files_inside_the_project_folder_are_refused(project):
    with pytest.raises(ConfigError, match="outside the project folder"):
        compose_secrets.init(project / "docker-compose.yaml", keys_dir=project / ".secrets")
    assert not (project / ".secrets").exists() and not (project / ".env").exists()


def test_a_required_variable_nobody_declares_stops_it_naming_the_variable(project, tmp_path):
    compose_file = project / "docker-compose.yaml"
    compose_file.write_text(compose_file.read_text().replace("${POSTGRES_PASSWORD:?set in .env}",
                                                             "${NEW_SECRET:?set in .env}"))
    with pytest.raises(ConfigError, match="requires NEW_SECRET"):
        compose_secrets.init(compose_file, keys_dir=tmp_path / "keys")
    assert not (project / ".env").exists()
    (project / ".env.example").write_text((project / ".env.example").read_text() + "NEW_SECRET=\n")
    with pytest.raises(ConfigError, match="leaves NEW_SECRET empty and gpdata cannot generate it"):
        compose_secrets.init(compose_file, keys_dir=tmp_path / "keys")
    assert not (project / ".env").exists()
