"""Registers the GP data page with Airflow: the FastAPI app under /gpdata and a navigation entry.

Airflow loads every ``.py`` file in ``plugins/`` and keeps the AirflowPlugin subclasses it finds; this is the
only one of this package.
"""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin

from gpdata_ui.ui_app import URL_PREFIX, create_app


class GpdataUiPlugin(AirflowPlugin):
    name = "gpdata_ui"
    fastapi_apps = [{"app": create_app(), "url_prefix": URL_PREFIX, "name": "GP data"}]
    external_views = [{
        "name": "GP data",
        "href": f"{URL_PREFIX}/",
        "destination": "nav",
        "url_route": "gp-data",
    }]
