"""Great Expectations Data Docs, served self-contained and sandboxed.

GX's page templates pull Bootstrap, jQuery, bootstrap-table, Font Awesome and Vega from public CDNs (floating
versions, no integrity attributes). Served from inside Airflow, with an operator's live session, that is
third-party code in the Airflow origin; offline (as on most NHS networks) the pages render blank. So every
page is rewritten on the way out:

- the stylesheets GX takes from CDNs are replaced by the copies vendored in ``vendor/`` (Bootstrap 4.3.1 and
  bootstrap-table 1.19.1, MIT, from the npm registry; see ``vendor/README.md``), inlined in the page; its own
  relative stylesheets are inlined too; any other external stylesheet is dropped;
- every script is removed (the response's ``Content-Security-Policy: sandbox`` would block them anyway); the
  tables that bootstrap-table would have drawn from data in an inline script are drawn here, as plain HTML;
- external links lose their ``href``; external images, frames and objects are removed; CSS ``url()``s to
  other hosts become ``none``.

The result makes no request to another host, and renders with its content without JavaScript.
"""

from __future__ import annotations

import ast
import base64
import html
import mimetypes
import re
from pathlib import Path

VENDOR = Path(__file__).resolve().parent / "vendor"
# CDN stylesheet (file name at the end of its URL) -> vendored copy
VENDORED_CSS = {"bootstrap.min.css": "bootstrap-4.3.1.min.css",
                "bootstrap-table.min.css": "bootstrap-table-1.19.1.min.css"}
# Served with every Data Docs response: no script, nothing from another origin, in a sandbox (a unique origin,
# so the page cannot read the Airflow session), framed only by Airflow itself.
CSP = ("sandbox; default-src 'self'; script-src 'none'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
       "font-src 'self' data:; connect-src 'none'; frame-src 'none'; object-src 'none'; form-action 'none'; "
       "base-uri 'none'; frame-ancestors 'self'")
HEADERS = {"Content-Security-Policy": CSP, "Referrer-Policy": "no-referrer", "X-Content-Type-Options": "nosniff",
           "Cache-Control": "no-store"}
MAX_INLINE_IMAGE = 256 * 1024
_EXTERNAL = re.compile(r"^\s*(?:[a-z][a-z0-9+.-]*:|//|\\\\)", re.I)
_CSS_URL = re.compile(r"url\(\s*(['\"]?)(?P<u>[^'\")]*)\1\s*\)", re.I)
_CSS_IMPORT = re.compile(r"@import\s+[^;]+;", re.I)
_TABLE_SCRIPT = re.compile(r"\$\(\s*['\"]#(?P<id>[\w-]+)['\"]\s*\)\s*\.bootstrapTable\(")


def is_external(url: str | None) -> bool:
    """True for anything but a relative URL or a fragment (a scheme, ``//host`` or ``\\\\host``); ``data:``
    URLs are external here too, except where a caller allows them."""
    return bool(url) and bool(_EXTERNAL.match(url))


def clean_css(css: str) -> str:
    """CSS with no ``@import`` and no ``url()`` to another host (or scheme other than data:)."""
    css = _CSS_IMPORT.sub("", css)

    def url(m: re.Match) -> str:
        u = m.group("u").strip()
        return m.group(0) if not is_external(u) or u.lower().startswith("data:") else "none"

    return _CSS_URL.sub(url, css)


def _vendored(href: str) -> str | None:
    name = VENDORED_CSS.get(href.split("?")[0].rstrip("/").rsplit("/", 1)[-1])
    return (VENDOR / name).read_text() if name else None


def _local(root: Path, page: Path, ref: str) -> Path | None:
    """A relative reference of ``page`` as a file inside ``root``, or None."""
    target = (page.parent / ref.split("#")[0].split("?")[0]).resolve()
    return target if target.is_relative_to(root) and target.is_file() else None


def _bracketed(text: str, start: int) -> str:
    """The bracketed literal that opens at ``text[start]``, quotes respected."""
    depth, quote, i = 0, None, start
    while i < len(text):
        c = text[i]
        if quote:
            if c == "\\":
                i += 1
            elif c == quote:
                quote = None
        elif c in "'\"":
            quote = c
        elif c in "[{(":
            depth += 1
        elif c in "]})":
            depth -= 1
            if depth == 0:
                return text[start:i + 1]
        i += 1
    raise ValueError("unbalanced")


def _literal_after(text: str, key: str) -> str:
    at = text.index(key) + len(key)
    at += len(text[at:]) - len(text[at:].lstrip())
    return _bracketed(text, at)


def _table_from_script(soup, script_text: str) -> None:
    """Draw the table a bootstrap-table call would draw, from its ``columns`` and ``data`` literals."""
    from bs4 import BeautifulSoup

    for m in _TABLE_SCRIPT.finditer(script_text):
        target = soup.find(id=m.group("id"))
        rest = script_text[m.end():]
        try:
            columns = ast.literal_eval(_literal_after(rest, "columns:"))
            data = ast.literal_eval(_literal_after(rest, "data:"))
        except (ValueError, SyntaxError):
            continue
        if target is None or not isinstance(columns, list) or not isinstance(data, list):
            continue
        head = "".join(f"<th>{html.escape(str(c.get('title', c.get('field', ''))))}</th>" for c in columns)
        rows = []
        for row in data:
            link = row.get("_table_row_link_path")
            cells = []
            for n, c in enumerate(columns):
                value = str(row.get(c.get("field"), ""))  # GX's own markup, as bootstrap-table would insert it
                if n == 0 and link and not is_external(link):
                    value = f'<a class="ge-offline-row-link" href="{html.escape(link, quote=True)}">{value}</a>'
                cells.append(f"<td>{value}</td>")
            rows.append("<tr>" + "".join(cells) + "</tr>")
        fragment = BeautifulSoup(f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>",
                                 "html.parser")
        target.clear()
        for part in list(fragment.table.contents):
            target.append(part)
        classes = target.get("class") or []
        target["class"] = [*classes, *[c for c in ("table", "table-sm") if c not in classes]]


def offline_page(text: str, page: Path, root: Path) -> str:
    """One Data Docs page (``page``, under the site folder ``root``) rewritten to be self-contained."""
    from bs4 import BeautifulSoup

    soup = BeautifulSoup(text, "lxml")
    for script in soup.find_all("script"):
        if not script.get("src"):
            _table_from_script(soup, script.string or "")
        script.decompose()
    for tag in soup.find_all(["base", "iframe", "frame", "object", "embed", "applet", "noscript"]):
        tag.decompose()
    for meta in soup.find_all("meta"):
        if (meta.get("http-equiv") or "").lower() in ("refresh", "content-security-policy"):
            meta.decompose()
    for link in soup.find_all("link"):
        href = link.get("href") or ""
        rel = [r.lower() for r in (link.get("rel") or [])]
        css = None
        if "stylesheet" in rel:
            if is_external(href):
                css = _vendored(href)
            elif (local := _local(root, page, href)) is not None and local.suffix == ".css":
                css = local.read_text(errors="replace")
        if css is None:
            link.decompose()
        else:
            style = soup.new_tag("style")
            style.string = clean_css(css)
            link.replace_with(style)
    for style in soup.find_all("style"):
        style.string = clean_css(style.string or "")
    for tag in soup.find_all(style=True):
        tag["style"] = clean_css(tag["style"])
    for tag in soup.find_all(["img", "source", "video", "audio", "track", "input"]):
        for attr in ("src", "srcset", "poster"):
            ref = tag.get(attr)
            if not ref:
                continue
            local = None if is_external(ref) or attr == "srcset" else _local(root, page, ref)
            if local is not None and local.stat().st_size <= MAX_INLINE_IMAGE:
                kind = mimetypes.guess_type(local.name)[0] or "application/octet-stream"
                tag[attr] = f"data:{kind};base64,{base64.b64encode(local.read_bytes()).decode()}"
            elif ref.lower().startswith("data:") and attr != "srcset":
                continue
            else:
                del tag[attr]
    for tag in soup.find_all(["a", "area", "form", "button"]):
        for attr in ("href", "action", "formaction", "ping"):
            if attr in tag.attrs and is_external(tag[attr]):
                del tag[attr]
    for tag in soup.find_all(True):  # event handlers (inert under the sandbox; removed all the same)
        for attr in [a for a in tag.attrs if a.lower().startswith("on")]:
            del tag[attr]
    return str(soup)
