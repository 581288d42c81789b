"""The data dictionary pages of the GP data plugin: the dictionary each release was published with, browsable.

Routes (registered on the GP data app by :func:`register`, so behind the same Airflow auth dependency):

- ``/dictionary/``                      every release, newest first, and the reference code lists;
- ``/dictionary/<release id>``          that release's tables, columns (type, required, description, a
                                        synthetic example, sensitivity) and code lists with their terms, read from
                                        the ``data_dictionary.json`` and ``code_lists.json`` written beside its
                                        ``release.json`` (gpdata.store.dictionary);
- ``/dictionary/code-lists/<name>``     a reference code list shipped in ``include/config/codelists/``.

Metadata only: nothing is read from a table. A release id must be ``<date>.<n>`` and a code list name one of the
shipped files, so no URL reaches another file. Pages have no script, no image and no link to another host, and
are served under a Content-Security-Policy that lets them load nothing.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse

TEMPLATES = Path(__file__).resolve().parent / "templates"
RELEASE_ID = re.compile(r"^\d{4}-\d{2}-\d{2}\.\d{1,9}$")
CSP = ("default-src 'none'; style-src 'unsafe-inline'; img-src 'none'; form-action 'none'; base-uri 'none'; "
       "frame-ancestors 'self'")
HEADERS = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer",
           "Content-Security-Policy": CSP}


def _render(**context) -> HTMLResponse:
    import jinja2

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True,
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    return HTMLResponse(env.get_template("dictionary.html").render(**context), headers=HEADERS)


def _base(request: Request) -> str:
    return request.scope.get("root_path", "").rstrip("/") + "/"


def release_dictionary(store_root, release_id: str) -> dict:
    """A release's manifest, dictionary entries and code lists; ``LookupError`` if there is none to show."""
    from gpdata.errors import GpdataError
    from gpdata.store import release

    if not RELEASE_ID.match(release_id):
        raise LookupError("not a release id")
    try:
        manifest = release.get_release(store_root, release_id)
    except GpdataError:
        raise LookupError("no such release") from None
    folder = release.releases_dir(store_root) / release_id
    if not (folder / "data_dictionary.json").exists():
        raise LookupError("this release has no data dictionary")
    entries = json.loads((folder / "data_dictionary.json").read_text())
    code_lists = (json.loads((folder / "code_lists.json").read_text())
                  if (folder / "code_lists.json").exists() else None)
    tables: dict[str, list[dict]] = {}
    for entry in entries:
        tables.setdefault(entry["table"], []).append(entry)
    return {"release": manifest, "tables": tables, "code_lists": code_lists}


def register(app: FastAPI, settings: Callable) -> None:
    """Add the dictionary routes to ``app``; ``settings()`` gives gpdata's settings (its ``store``)."""

    @app.get("/dictionary/", response_class=HTMLResponse)
    def dictionary_index(request: Request) -> HTMLResponse:
        from gpdata.store import dictionary, release

        releases = list(reversed(release.list_releases(settings().store)))
        return _render(view="index", base=_base(request), releases=releases,
                       reference=dictionary.reference_code_lists())

    @app.get("/dictionary/code-lists/{name}", response_class=HTMLResponse)
    def reference_code_list(name: str, request: Request) -> HTMLResponse:
        from gpdata.errors import GpdataError
        from gpdata.store import dictionary

        try:
            code_list = dictionary.reference_code_list(name)
        except GpdataError:
            raise HTTPException(status_code=404, detail="no such code list") from None
        return _render(view="code_list", base=_base(request), code_list=code_list)

    @app.get("/dictionary/{release_id}", response_class=HTMLResponse)
    def release_page(release_id: str, request: Request) -> HTMLResponse:
        try:
            doc = release_dictionary(settings().store, release_id)
        except LookupError as exc:
            raise HTTPException(status_code=404, detail=str(exc)) from None
        return _render(view="release", base=_base(request), **doc)
