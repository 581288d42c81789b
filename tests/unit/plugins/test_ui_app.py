"""The GP data page's FastAPI app: every route behind Airflow's auth, escaped HTML, Data Docs confined."""

import re

import pytest
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient

from gpdata import settings, store
from gpdata.ops.airflow_env import REPO_ROOT


@pytest.fixture
def ui(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO_ROOT / "plugins"))
    from gpdata_ui import ui_app

    return ui_app


def _paths(app):
    """Every route of the app, with sample path parameters."""
    out = []
    for route in app.routes:
        if isinstance(route, APIRoute):
            out.append(re.sub(r"\{(\w+)(:path)?\}", lambda m: "A81001" if m.group(1) == "practice" else "index.html",
                              route.path))
    return out


def test_every_route_refuses_a_request_without_a_login(home, ui):
    app = ui.create_app()
    paths = _paths(app)
    assert set(paths) >= {"/", "/status.json", "/data-docs/A81001/index.html"}
    client = TestClient(app)
    for path in paths:
        assert client.get(path).status_code == 401, path  # refused before any auth manager is asked
    for path in ("/docs", "/redoc", "/openapi.json"):  # app dependencies would not cover FastAPI's own pages
        assert client.get(path).status_code == 404, path


def test_the_plugin_registers_the_app_and_a_nav_entry(home, ui):
    from gpdata_ui.ui_plugin import GpdataUiPlugin

    [app] = GpdataUiPlugin.fastapi_apps
    [view] = GpdataUiPlugin.external_views
    assert app["url_prefix"] == ui.URL_PREFIX and view["href"] == f"{ui.URL_PREFIX}/"
    assert view["destination"] == "nav" and view["url_route"]
    assert app["app"].router.dependencies, "the Airflow auth dependency is on the app"


def test_page_escapes_what_it_shows_and_serves_only_data_docs(home, ui):
    cfg = settings.load()
    cfg.feeds_dir.mkdir(parents=True)
    store.write_manifest(cfg.manifests, "A81001", "r<1>", {
        "run_id": "r<1>", "status": "<b>odd</b>", "error": {"stage": "extract", "cause": "<script>alert(1)</script>"}})
    docs = cfg.data_docs / "A81001"
    docs.mkdir(parents=True)
    (docs / "index.html").write_text("<html>docs</html>")
    (cfg.data_docs / "secret.txt").write_text("outside")
    client = TestClient(ui.create_app(dependencies=[]))
    page = client.get("/")
    assert page.status_code == 200 and page.headers["cache-control"] == "no-store"
    assert "<script>alert" not in page.text and "&lt;script&gt;alert(1)&lt;/script&gt;" in page.text
    assert "&lt;b&gt;odd&lt;/b&gt;" in page.text and 'class="badge unknown"' in page.text
    assert client.get("/status.json").json()["practices"][0]["error"]["cause"] == "<script>alert(1)</script>"
    assert client.get("/data-docs/A81001/index.html").text == "<html>docs</html>"
    assert client.get("/data-docs/A81001/").text == "<html>docs</html>"
    for path in ("/data-docs/A81001/..%2Fsecret.txt", "/data-docs/A81001/../secret.txt", "/data-docs/a81001/x",
                 "/data-docs/A81001/missing.html"):
        assert client.get(path).status_code == 404, path


def test_page_shows_unmapped_fhir_resources_escaped(home, ui):
    cfg = settings.load()
    cfg.feeds_dir.mkdir(parents=True)
    store.write_manifest(cfg.manifests, "A81001", "r1", {
        "run_id": "r1", "status": "committed", "patients_read": 3,
        "source": {"unmapped_resources": {"Encounter": 3, "<i>List</i>": 2}}})
    page = TestClient(ui.create_app(dependencies=[])).get("/")
    assert 'data-field="unmapped_resources"' in page.text and "Encounter 3" in page.text
    assert "&lt;i&gt;List&lt;/i&gt; 2" in page.text
