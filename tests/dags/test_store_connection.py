"""Store credentials from an Airflow connection (GPDATA_STORE_CONN_ID), put into the task's environment."""

import json
import logging

import pytest

from gpdata.ops.airflow_env import REPO_ROOT

CONN = {"conn_type": "aws", "login": "AKIDSTORETEST", "password": "store-secret-value",
        "extra": {"endpoint_url": "http://127.0.0.1:9000", "region_name": "eu-west-2"}}


@pytest.fixture
def plugins(monkeypatch, tmp_path):
    monkeypatch.setenv("AIRFLOW_HOME", str(tmp_path / "airflow"))
    monkeypatch.syspath_prepend(str(REPO_ROOT / "plugins"))
    monkeypatch.setenv("AIRFLOW_CONN_GPDATA_STORE", json.dumps(CONN))


def test_an_aws_connection_becomes_the_store_environment(plugins, caplog, capsys):
    from gpdata_airflow import store_connection

    env = {"GPDATA_STORE_CONN_ID": "gpdata_store"}
    with caplog.at_level(logging.INFO):
        names = store_connection.apply(env)
    assert names == ["AWS_ACCESS_KEY_ID", "AWS_ENDPOINT_URL", "AWS_REGION", "AWS_SECRET_ACCESS_KEY"]
    assert env["AWS_ACCESS_KEY_ID"] == CONN["login"] and env["AWS_SECRET_ACCESS_KEY"] == CONN["password"]
    assert (env["AWS_ENDPOINT_URL"], env["AWS_REGION"]) == ("http://127.0.0.1:9000", "eu-west-2")
    logged = caplog.text + capsys.readouterr().out  # Airflow's structlog writes to stdout
    assert "gpdata_store" in logged and CONN["password"] not in logged and CONN["login"] not in logged


def test_without_a_connection_id_the_environment_is_left_alone(plugins):
    from gpdata_airflow import store_connection

    env = {"AWS_ACCESS_KEY_ID": "from-env"}
    assert store_connection.apply(env) == [] and env == {"AWS_ACCESS_KEY_ID": "from-env"}


def test_a_missing_connection_is_named(plugins):
    from gpdata_airflow import store_connection

    with pytest.raises(RuntimeError, match="GPDATA_STORE_CONN_ID='no_such_store'"):
        store_connection.apply({"GPDATA_STORE_CONN_ID": "no_such_store"})


def test_the_plugin_applies_it_before_each_task(plugins, monkeypatch):
    import os

    import gpdata_store_connection_plugin as plugin

    monkeypatch.setenv("GPDATA_STORE_CONN_ID", "gpdata_store")
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION"):
        monkeypatch.delenv(key, raising=False)
    [listener] = plugin.GpdataStoreConnectionPlugin.listeners
    listener.on_task_instance_running(previous_state=None, task_instance=None)
    assert os.environ["AWS_ENDPOINT_URL"] == "http://127.0.0.1:9000"
