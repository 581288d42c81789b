"""One home for every command: GPDATA_HOME's settings file (gpdata.toml) gives every command its folders and the
demo's development key, under the environment; airflow.cfg under the Airflow home points Airflow at the project."""

import configparser
import json

import pytest

from gpdata import settings
from gpdata.errors import GpdataError, KeyConfigError
from gpdata.ops.airflow_env import REPO_ROOT, write_airflow_cfg
from gpdata.privacy import keys

KEY_VARS = (keys.KEY_ENV, keys.KEY_FILE_ENV, keys.MODE_ENV, "GPDATA_FEEDS_DIR", "GPDATA_STORE")


@pytest.fixture
def demo_home(tmp_path, monkeypatch):
    """A home as `make demo` leaves it: a development key outside it, named with the folders by gpdata.toml;
    the environment names only GPDATA_HOME."""
    for name in KEY_VARS:
        monkeypatch.delenv(name, raising=False)
    home = tmp_path / "var"
    monkeypatch.setenv("GPDATA_HOME", str(home))
    secrets_dir = tmp_path / "secrets"
    monkeypatch.setenv("GPDATA_SECRETS_DIR", str(secrets_dir))
    key_file = secrets_dir / "dev-master.key"
    keys.write_development_key(key_file)
    cfg = settings.Settings(home=home, feeds_dir=home / "feeds", store=tmp_path / "elsewhere" / "store",
                            secrets=secrets_dir)
    monkeypatch.delenv("GPDATA_SECRETS_DIR")
    settings.write_settings_file(cfg, key_file)
    return {"home": home, "key_file": key_file, "cfg": cfg}


def test_the_settings_file_gives_every_folder_and_the_environment_wins(demo_home, tmp_path, monkeypatch):
    cfg = settings.load()
    assert (cfg.home, cfg.feeds_dir, cfg.store, cfg.secrets) == (
        demo_home["home"], demo_home["home"] / "feeds", tmp_path / "elsewhere" / "store", tmp_path / "secrets")
    monkeypatch.setenv("GPDATA_FEEDS_DIR", str(tmp_path / "mine"))
    monkeypatch.setenv("GPDATA_STORE", str(tmp_path / "my-store"))
    cfg = settings.load()
    assert (cfg.feeds_dir, cfg.store, cfg.secrets) == (tmp_path / "mine", tmp_path / "my-store",
                                                       tmp_path / "secrets")


def test_relative_paths_in_the_settings_file_are_taken_from_gpdata_home(tmp_path):
    (tmp_path / settings.SETTINGS_FILE).write_text('feeds_dir = "feeds"\nstore = "../shared/store"\n')
    cfg = settings.load({"GPDATA_HOME": str(tmp_path)})
    assert cfg.feeds_dir == tmp_path / "feeds" and cfg.store == (tmp_path.parent / "shared" / "store").resolve()


@pytest.mark.parametrize("text, cause", [
    ("feeds_dir = \"unterminated\n", "cannot read the settings file"),
    ('feed_dir = "feeds"\n', "unknown: feed_dir"),
    ("store = 3\n", "non-empty text values"),
])
def test_a_bad_settings_file_is_an_error_naming_the_file(tmp_path, text, cause):
    (tmp_path / settings.SETTINGS_FILE).write_text(text)
    with pytest.raises(GpdataError, match=cause) as err:
        settings.load({"GPDATA_HOME": str(tmp_path)})
    assert err.value.file == str(tmp_path / settings.SETTINGS_FILE)


def test_without_a_settings_file_nothing_changes(tmp_path):
    cfg = settings.load({"GPDATA_HOME": str(tmp_path)})
    assert (cfg.feeds_dir, cfg.store) == (settings.DEFAULT_FEEDS_DIR, tmp_path / "store")


def test_the_development_key_is_found_through_the_settings_file(demo_home):
    key = keys.load_master_key()
    assert key.development
    assert key.checks() == keys.load_master_key({keys.KEY_FILE_ENV: str(demo_home["key_file"])}).checks()


def test_an_explicit_environment_is_taken_as_given(demo_home):
    with pytest.raises(KeyConfigError, match="no pseudonymisation key"):
        keys.load_master_key({"GPDATA_HOME": str(demo_home["home"])})


def test_production_mode_never_takes_the_key_from_the_settings_file(demo_home, monkeypatch):
    """Guard: in production the key must be configured explicitly (GPDATA_MASTER_KEY or _FILE)."""
    monkeypatch.setenv(keys.MODE_ENV, "production")
    with pytest.raises(KeyConfigError, match="no pseudonymisation key"):
        keys.load_master_key()


def test_a_real_key_named_only_by_the_settings_file_is_refused(demo_home, tmp_path):
    """Guard: the settings file lives in GPDATA_HOME, which is copied and shared; it may name the demo's
    development key only, told by the key material itself (not the file's ``kind``)."""
    real = tmp_path / "secrets" / "real.key"
    keys.write_key_file(real)
    doc = json.loads(real.read_text())
    real.write_text(json.dumps({**doc, "kind": "development"}))  # a flag cannot make a real key a development one
    settings.write_settings_file(demo_home["cfg"], real)
    with pytest.raises(KeyConfigError, match="is not a development key") as err:
        keys.load_master_key()
    assert doc["keys"][0]["key"] not in str(err.value)
    assert keys.load_master_key({keys.KEY_FILE_ENV: str(real)}).version == "v1"  # named explicitly: used


def test_airflow_cfg_points_airflow_at_the_project(tmp_path):
    cfg = settings.load({"GPDATA_HOME": str(tmp_path)})
    path = write_airflow_cfg(cfg)
    assert path == tmp_path / "airflow" / "airflow.cfg" and path.stat().st_mode & 0o077 == 0
    parsed = configparser.ConfigParser(interpolation=None)
    parsed.read(path)
    assert parsed["core"]["dags_folder"] == str(REPO_ROOT / "dags")
    assert parsed["core"]["load_examples"] == "False"
    assert parsed["database"]["sql_alchemy_conn"] == f"sqlite:///{tmp_path / 'airflow' / 'airflow.db'}"
