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
    for path in ("/data-docs/A81001/index.html", "/data-docs/A81001/"):
        served = client.get(path)
        assert ">docs<" in served.text and served.headers["content-security-policy"].startswith("sandbox;")
    for path in ("/data-docs/A81001/..%2Fsecret.txt", "/data-docs/A81001/../secret.txt", "/data-docs/a81001/x",
                 "/data-docs/A81001/missing.html"):
        assert client.get(path).status_code == 404, path


# --- Data Docs: self-contained and sandboxed ---------------------------------------------------------------------

GX_LIKE = """<!doctype html><html><head>
<link rel="stylesheet" href="https://maxcdn.bootstrapcdn.com/bootstrap/4.3.1/css/bootstrap.min.css"/>
<link rel="stylesheet" href="https://cdnjs.cloudflare.com/ajax/libs/font-awesome/6.6.0/css/all.min.css">
<link rel="stylesheet" href="./static/styles/local.css">
<link rel="shortcut icon" href="./static/images/favicon.ico">
<script src="https://code.jquery.com/jquery-3.7.1.min.js"></script>
<style>@import url("https://evil.example/x.css"); .a { background: url('https://evil.example/t.png') }</style>
</head><body>
<img src="https://evil.example/pixel.gif"><img src="static/images/logo.png" onerror="alert(1)">
<a href="https://greatexpectations.io">GX</a> <a href="validations/x.html">run</a> <a href="//evil.example">x</a>
<iframe src="https://evil.example"></iframe><form action="https://evil.example/post"></form>
<div style="background-image: url(http://evil.example/bg.png)">styled</div>
<table id="results-table"></table>
<script>
  $('#results-table').bootstrapTable(Object.assign({columns: [{'field': 'suite', 'title': 'Suite'},
    {'field': 'ok', 'title': 'Status'}], data: [{'suite': 'gpdata_patients', 'ok': '<span>passed</span>',
    '_table_row_link_path': 'validations/gpdata_patients/r/t/p.html'}, {'suite': "it's", 'ok': 'x'}]}))
</script>
</body></html>"""


def _docs(cfg):
    docs = cfg.data_docs / "A81001"
    (docs / "static" / "styles").mkdir(parents=True)
    (docs / "static" / "images").mkdir(parents=True)
    (docs / "static" / "styles" / "local.css").write_text(".b { background: url(https://evil.example/b.png) }")
    (docs / "static" / "images" / "logo.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    (docs / "index.html").write_text(GX_LIKE)
    return docs


def test_data_docs_pages_reach_no_other_host_and_draw_their_tables_without_scripts(home, ui):
    from gpdata_ui import datadocs

    _docs(settings.load())
    client = TestClient(ui.create_app(dependencies=[]))
    served = client.get("/data-docs/A81001/index.html")
    page = served.text
    csp = served.headers["content-security-policy"]
    assert csp.startswith("sandbox;") and "default-src 'self'" in csp and "script-src 'none'" in csp
    assert "evil.example" not in page and "<script" not in page and "<iframe" not in page and "onerror" not in page
    assert "cdnjs" not in page and "code.jquery.com" not in page and "maxcdn" not in page
    assert "greatexpectations.io" not in page and ">GX</a>" in page  # the link text stays, its href goes
    assert 'href="validations/x.html"' in page  # relative links keep working under /gpdata/data-docs/<ODS>/
    vendored = (datadocs.VENDOR / "bootstrap-4.3.1.min.css").read_text()
    assert vendored[:2000] in page  # Bootstrap inlined from the vendored copy
    assert "data:image/png;base64," in page  # the local image inlined
    assert 'href="validations/gpdata_patients/r/t/p.html"' in page and "<span>passed</span>" in page
    assert "it's" in page and "<th>Suite</th>" in page
    assert client.get("/data-docs/A81001/static/styles/local.css").text == ".b { background: none }"
    assert client.get("/data-docs/A81001/static/images/logo.png").headers["content-security-policy"] == csp


def test_a_real_gx_site_is_served_self_contained(home, ui):
    """Pages GX 1.24 actually builds: no URL of another host in any attribute or stylesheet of any page."""
    from gpdata import pipeline
    from gpdata.ingest.feeds import Feed
    from tests import factory as f
    from tests.conftest import practice_resources

    cfg = settings.load()
    f.write_bundle(home / "sources" / "A81001", practice_resources())
    pipeline.run_practice(Feed(ods_code="A81001", name="A", location=str(home / "sources" / "A81001"),
                               max_quarantine_fraction=1), cfg, "r1")
    raw = (cfg.data_docs / "A81001" / "index.html").read_text()
    assert "cdn.jsdelivr.net" in raw and "code.jquery.com" in raw  # what GX's templates pull in
    client = TestClient(ui.create_app(dependencies=[]))
    pages = sorted(p.relative_to(cfg.data_docs / "A81001") for p in (cfg.data_docs / "A81001").rglob("*.html"))
    assert len(pages) >= 20
    external = re.compile(r"""(?:src|href|action|srcset|poster|data)\s*=\s*["']?\s*(?:https?:)?//|@import|"""
                          r"""url\(\s*['"]?\s*(?:https?:)?//""", re.I)
    for page in pages:
        text = client.get(f"/data-docs/A81001/{page}").text
        assert not external.findall(text), (page, external.findall(text)[:3])
        assert "<script" not in text.lower()
    index = client.get("/data-docs/A81001/index.html").text
    assert index.count('class="ge-offline-row-link"') >= 10  # validation results and suites, drawn without JS


def test_page_shows_unmapped_fhir_resources_escaped(home, ui):
    cfg = settings.load()
    cfg.feeds_dir.mkdir(parents=True)
    store.write_manifest(cfg.manifests, "A81001", "r1", {
        "run_id": "r1", "status": "committed", "patients_read": 3,
        "source": {"unmapped_resources": {"Encounter": 3, "<i>List</i>": 2}}})
    page = TestClient(ui.create_app(dependencies=[])).get("/")
    assert 'data-field="unmapped_resources"' in page.text and "Encounter 3" in page.text
    assert "&lt;i&gt;List&lt;/i&gt; 2" in page.text
