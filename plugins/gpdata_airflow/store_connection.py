"""Credentials for an s3:// store from an Airflow connection.

The library reads the store's credentials from the environment (``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``,
``AWS_SESSION_TOKEN``, ``AWS_ENDPOINT_URL``, ``AWS_REGION``; see gpdata.storage) and imports no Airflow. When
``GPDATA_STORE_CONN_ID`` names an Airflow connection (type ``aws``: login = access key id, password = secret,
extra ``endpoint_url``, ``region_name``, ``aws_session_token``), ``apply`` copies it into the task process's
environment. The plugin in ``plugins/gpdata_store_connection_plugin.py`` calls it in every task before
``execute`` (an ``on_task_instance_running`` listener), so operators need no change.
"""

from __future__ import annotations

import logging
import os
from collections.abc import MutableMapping

CONN_ENV = "GPDATA_STORE_CONN_ID"
log = logging.getLogger("gpdata.store_connection")


def connection_environment(conn) -> dict[str, str]:
    """The AWS_* variables that an Airflow connection's fields stand for (only those it sets)."""
    extra = conn.extra_dejson or {}
    s3 = (extra.get("service_config") or {}).get("s3") or {}
    values = {
        "AWS_ACCESS_KEY_ID": conn.login or extra.get("aws_access_key_id"),
        "AWS_SECRET_ACCESS_KEY": conn.password or extra.get("aws_secret_access_key"),
        "AWS_SESSION_TOKEN": extra.get("aws_session_token"),
        "AWS_ENDPOINT_URL": s3.get("endpoint_url") or extra.get("endpoint_url") or conn.host or None,
        "AWS_REGION": extra.get("region_name"),
    }
    return {k: str(v) for k, v in values.items() if v}


def apply(env: MutableMapping[str, str] | None = None) -> list[str]:
    """Put the store connection's credentials into ``env`` (default: this process). Returns the variable
    names set (never their values); nothing when GPDATA_STORE_CONN_ID is unset."""
    env = os.environ if env is None else env
    conn_id = env.get(CONN_ENV)
    if not conn_id:
        return []
    from airflow.sdk import BaseHook

    try:
        conn = BaseHook.get_connection(conn_id)
    except Exception as exc:
        raise RuntimeError(f"{CONN_ENV}={conn_id!r}: the Airflow connection could not be read ({type(exc).__name__});"
                           " create it or unset the variable to use AWS_* from the environment") from None
    values = connection_environment(conn)
    env.update(values)
    log.info("store credentials from Airflow connection %s: %s", conn_id, ", ".join(sorted(values)) or "none")
    return sorted(values)
