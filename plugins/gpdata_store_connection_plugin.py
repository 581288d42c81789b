"""Airflow plugin: before each task runs, the s3:// store's credentials from the Airflow connection named by
GPDATA_STORE_CONN_ID (if set) are put in the task's environment (gpdata_airflow.store_connection)."""

from __future__ import annotations

from airflow.listeners import hookimpl
from airflow.plugins_manager import AirflowPlugin

from gpdata_airflow import store_connection


class StoreConnectionListener:
    @hookimpl
    def on_task_instance_running(self, previous_state, task_instance):
        store_connection.apply()


class GpdataStoreConnectionPlugin(AirflowPlugin):
    name = "gpdata_store_connection"
    listeners = [StoreConnectionListener()]
