"""The GP data page: a small FastAPI app, rendered on the server from ``gpdata.ops.status`` (JSON documents only).

Routes, all under ``/gpdata`` and all behind Airflow's authentication and the Plugins view permission
(an app-level dependency, so a route added later is covered too; FastAPI's own /docs, /redoc and
/openapi.json are switched off because app dependencies do not cover them):

- ``/``                              the page: summary, failures and late practices (with trend charts), then
                                     one page of the practice table (query parameters: q, state, supplier,
                                     format, schedule, sort, order, page, per_page; filtered on the server);
- ``/status.json``                   the same data as JSON, with the same query parameters;
- ``/practice/<ODS>``                one practice: its row and its trend charts (inline SVG, drawn here);
- ``/data-docs/<ODS>/<path>``        the practice's Great Expectations Data Docs (counts, never values),
                                     self-contained (no request to another host) and served under
                                     ``Content-Security-Policy: sandbox`` (see gpdata_ui.datadocs).
"""

from __future__ import annotations

import functools
from pathlib import Path

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response

URL_PREFIX = "/gpdata"
TEMPLATES = Path(__file__).resolve().parent / "templates"
HEADERS = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"}


def _number(value) -> str:
    return "–" if value is None else f"{value:,}"


@functools.cache
def _environment():
    """One template environment per process: templates are compiled once, not on every request."""
    import jinja2

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True,
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters["n"] = _number
    return env


TREND_METRICS = (("rows_committed", "Rows committed", "{:,.0f}"), ("quarantine_rate", "Quarantine rate", "{:.2%}"),
                 ("type1_excluded", "Type 1 opt-outs excluded", "{:,.0f}"),
                 ("duration_seconds", "Duration (s)", "{:,.1f}"))
CHART_W, CHART_H, CHART_PAD = 220, 56, 4


def trend_charts(trend: list[dict] | None) -> list[dict]:
    """Each trend metric as a small line chart drawn on the server (inline SVG: no script, no other host):
    its points' coordinates and the values they plot (the runs that did not record the metric are left out)."""
    charts = []
    for metric, label, fmt in TREND_METRICS:
        points = [(p, p.get(metric)) for p in trend or [] if isinstance(p.get(metric), int | float)]
        if not points:
            continue
        top = max(v for _, v in points) or 1
        step = (CHART_W - 2 * CHART_PAD) / max(len(points) - 1, 1)
        left = CHART_W / 2 if len(points) == 1 else CHART_PAD  # one run: drawn in the middle
        drawn = [{"x": round(left + i * step, 1),
                  "y": round(CHART_H - CHART_PAD - (v / top) * (CHART_H - 2 * CHART_PAD), 1),
                  "value": v, "run_id": p.get("run_id"), "status": p.get("status"), "text": fmt.format(v)}
                 for i, (p, v) in enumerate(points)]
        charts.append({"metric": metric, "label": label, "points": drawn, "max": fmt.format(top),
                       "last": drawn[-1]["text"], "line": " ".join(f"{d['x']},{d['y']}" for d in drawn),
                       "width": CHART_W, "height": CHART_H})
    return charts


def render_page(doc: dict, base: str = f"{URL_PREFIX}/") -> str:
    """The page's HTML (autoescaped) from a ``gpdata.ops.status.overview`` document."""
    from urllib.parse import urlencode

    def link(**changes) -> str:
        q = {**doc["query"], **changes}
        return "?" + urlencode({k: v for k, v in q.items() if v not in ("", None)})

    return _environment().get_template("gp_data.html").render(doc=doc, base=base, link=link, charts=trend_charts)


def render_practice(doc: dict, base: str = f"{URL_PREFIX}/") -> str:
    """One practice's detail view (autoescaped) from a ``gpdata.ops.status.practice_detail`` document."""
    return _environment().get_template("gp_practice.html").render(doc=doc, base=base, charts=trend_charts)


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
        doc = status.overview(_settings(), status.query_from(request.query_params))
        return HTMLResponse(render_page(doc, base=base), headers=HEADERS)

    @app.get("/status.json")
    def status_json(request: Request) -> JSONResponse:
        from gpdata.ops import status

        return JSONResponse(status.overview(_settings(), status.query_from(request.query_params)), headers=HEADERS)

    @app.get("/practice/{practice}", response_class=HTMLResponse)
    def practice(practice: str, request: Request) -> HTMLResponse:
        from gpdata import store
        from gpdata.ops import status

        if not store.ODS_RE.match(practice):
            raise HTTPException(status_code=404, detail="no such practice")
        doc = status.practice_detail(_settings(), practice)
        if doc is None:
            raise HTTPException(status_code=404, detail="no such practice")
        base = request.scope.get("root_path", "").rstrip("/") + "/"
        return HTMLResponse(render_practice(doc, base=base), headers=HEADERS)

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
