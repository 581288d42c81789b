"""The environment that points Airflow at this project (the demo, `make airflow` and the system tests).

Builds environment variables only; imports no Airflow.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from gpdata.settings import PACKAGE_DIR, Settings

REPO_ROOT = PACKAGE_DIR.parents[1]


def _secret(path: Path) -> str:
    """A per-installation secret kept beside the metadata database (all Airflow processes share it)."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(secrets.token_urlsafe(32))
        path.chmod(0o600)
    return path.read_text().strip()


def airflow_env(cfg: Settings, key_file: Path | None = None) -> dict[str, str]:
    home = cfg.airflow_home
    home.mkdir(parents=True, exist_ok=True)
    env = {
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO_ROOT / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO_ROOT / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
        "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(home / "logs"),
        "AIRFLOW__API_AUTH__JWT_SECRET": _secret(home / ".jwt_secret"),
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
        "GPDATA_HOME": str(cfg.home),
        "GPDATA_FEEDS_DIR": str(cfg.feeds_dir),
        "GPDATA_STORE": str(cfg.store),
        "GX_ANALYTICS_ENABLED": "False",
    }
    if key_file is not None:
        env["GPDATA_MASTER_KEY_FILE"] = str(key_file)
    return env


def write_airflow_cfg(cfg: Settings) -> Path:
    """Write ``airflow.cfg`` under the Airflow home from :func:`airflow_env`'s ``AIRFLOW__SECTION__KEY``
    settings, so a plain ``airflow`` command with AIRFLOW_HOME set (the venv's activate script sets it) works
    against this project: its DAGs and plugins, its metadata database, no example DAGs. The GPDATA_*
    settings reach Airflow through GPDATA_HOME and its settings file (gpdata.toml), not through this file."""
    sections: dict[str, dict[str, str]] = {}
    for name, value in airflow_env(cfg).items():
        if name.startswith("AIRFLOW__"):
            section, key = name.removeprefix("AIRFLOW__").split("__", 1)
            sections.setdefault(section.lower(), {})[key.lower()] = value
    lines = ["# Written by gpdata (gpdata.ops.airflow_env.write_airflow_cfg) for this checkout's Airflow home;",
             "# rewritten by every `make demo`. Variables AIRFLOW__SECTION__KEY still win over it."]
    for section, values in sections.items():
        lines += ["", f"[{section}]"] + [f"{k} = {v}" for k, v in values.items()]
    path = cfg.airflow_home / "airflow.cfg"
    tmp = path.with_name("airflow.cfg.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # it holds the API's JWT secret
    with os.fdopen(fd, "w") as fh:
        fh.write("\n".join(lines) + "\n")
    os.replace(tmp, path)
    return path
