"""The GP data page: a small FastAPI app, rendered on the server from ``gpdata.ops.status`` (JSON documents only).

Routes, all under ``/gpdata`` and all behind Airflow's authentication and the Plugins view permission
(an app-level dependency, so a route added later is covered too; FastAPI's own /docs, /redoc and
/openapi.json are switched off because app dependencies do not cover them):

- ``/``                              the page;
- ``/status.json``                   the same data as JSON;
- ``/data-docs/<ODS>/<path>``        the practice's Great Expectations Data Docs (counts, never values),
                                     self-contained (no request to another host) and served under
                                     ``Content-Security-Policy: sandbox`` (see gpdata_ui.datadocs).
"""

from __future__ import annotations

from pathlib import Path

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response

URL_PREFIX = "/gpdata"
TEMPLATES = Path(__file__).resolve().parent / "templates"
HEADERS = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"}


def _number(value) -> str:
    return "–" if value is None else f"{value:,}"


def _environment():
    import jinja2

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True,
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters["n"] = _number
    return env


def render_page(doc: dict, base: str = f"{URL_PREFIX}/") -> str:
    """The page's HTML (autoescaped) from a ``gpdata.ops.status.overview`` document."""
    practices = doc["practices"]
    summary = {kind: sum(1 for p in practices if p["kind"] == kind) for kind in ("ok", "failed", "unknown", "none")}
    return _environment().get_template("gp_data.html").render(doc=doc, base=base, summary=summary)


def _settings():
    from gpdata import settings

    return settings.load()


def _auth_dependency():
    from airflow.api_fastapi.auth.managers.models.resource_details import AccessView
    from airflow.api_fastapi.core_api.security import requires_access_view

    return Depends(requires_access_view(AccessView.PLUGINS))


def create_app(dependencies: list | None = None) -> FastAPI:
    """The app. ``dependencies`` replaces Airflow's auth dependency in unit tests only."""
    app = FastAPI(title="gpdata: GP data", docs_url=None, redoc_url=None, openapi_url=None, redirect_slashes=False,
                  dependencies=[_auth_dependency()] if dependencies is None else dependencies)

    @app.get("/", response_class=HTMLResponse)
    def page(request: Request) -> HTMLResponse:
        from gpdata.ops import status

        base = request.scope.get("root_path", "").rstrip("/") + "/"
        return HTMLResponse(render_page(status.overview(_settings()), base=base), headers=HEADERS)

    @app.get("/status.json")
    def status_json() -> JSONResponse:
        from gpdata.ops import status

        return JSONResponse(status.overview(_settings()), headers=HEADERS)

    @app.get("/data-docs/{practice}/{path:path}")
    def data_docs(practice: str, path: str = "") -> Response:
        from gpdata import store
        from gpdata_ui import datadocs

        if not store.ODS_RE.match(practice):
            raise HTTPException(status_code=404, detail="no such practice")
        root = (_settings().data_docs / practice).resolve()
        target = (root / (path or "index.html")).resolve()
        if not target.is_relative_to(root) or not target.is_file():
            raise HTTPException(status_code=404, detail="no such Data Docs page")
        headers = {**HEADERS, **datadocs.HEADERS}
        if target.suffix.lower() in (".html", ".htm"):
            page = datadocs.offline_page(target.read_text(errors="replace"), target, root)
            return HTMLResponse(page, headers=headers)
        if target.suffix.lower() == ".css":
            return Response(datadocs.clean_css(target.read_text(errors="replace")), media_type="text/css",
                            headers=headers)
        return FileResponse(target, headers=headers)

    from gpdata_ui import dictionary_page  # /dictionary/...: each release's data dictionary (its own module)
    dictionary_page.register(app, _settings)
    return app
