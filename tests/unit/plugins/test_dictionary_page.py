"""The data dictionary pages: a release's tables, columns and code lists, browsable; ids confined; nothing loaded
from anywhere."""

import html
import json
import re

import pytest
from fastapi.testclient import TestClient

from gpdata import settings, store
from gpdata.model import CURATED
from gpdata.ops.airflow_env import REPO_ROOT
from gpdata.store import dictionary, release


@pytest.fixture
def ui(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO_ROOT / "plugins"))
    from gpdata_ui import ui_app

    return ui_app


def _publish(store_root, release_id, *, code_lists=True, status="published"):
    """A release folder as create_release leaves it: its manifest beside the dictionary files."""
    folder = release.releases_dir(store_root) / release_id
    dictionary.write(folder)
    if not code_lists:
        (folder / "code_lists.json").unlink()
    store.write_json_atomic(folder / "release.json", {
        "release_id": release_id, "created_at": "2026-11-30T10:00:00+00:00", "status": status, "tables": {}})
    return folder


@pytest.fixture
def client(home, ui):
    return TestClient(ui.create_app(dependencies=[]))


def _cells(page: str, marker: str) -> list[list[str]]:
    """The rows of the table carrying ``marker`` (an attribute), as lists of unescaped cell texts."""
    body = page[page.index(marker):]
    body = body[:body.index("</table>")]
    return [[html.unescape(re.sub(r"<[^>]+>", "", c)).strip() for c in re.findall(r"<td[^>]*>(.*?)</td>", row, re.S)]
            for row in re.findall(r"<tr>(.*?)</tr>", body, re.S) if "<td" in row]


def test_a_release_page_lists_its_tables_columns_and_code_list_terms(client):
    cfg = settings.load()
    _publish(cfg.store, "2026-11-30.9")
    _publish(cfg.store, "2026-11-30.10")

    index = client.get("/dictionary/")
    assert index.status_code == 200
    ids = re.findall(r'href="/dictionary/(\d{4}-\d\d-\d\d\.\d+)"', index.text)
    assert ids == ["2026-11-30.10", "2026-11-30.9"]  # newest first, by sequence number
    assert 'href="/dictionary/code-lists/opensafely-weight-snomed"' in index.text

    page = client.get("/dictionary/2026-11-30.10")
    assert page.status_code == 200 and page.headers["cache-control"] == "no-store"
    published = json.loads((release.releases_dir(cfg.store) / "2026-11-30.10" / "data_dictionary.json").read_text())
    for table, schema in CURATED.items():
        assert f'id="table-{table}"' in page.text
        rows = _cells(page.text, f'data-table="{table}"')
        assert [r[0] for r in rows] == schema.names, table
        for row, field in zip(rows, schema, strict=True):
            assert row[1].startswith(str(field.type)) and ("required" in row[1]) == (not field.nullable)
            assert row[2] == field.metadata[b"description"].decode()
        assert [r[4] for r in rows] == [e["sensitivity"] for e in published if e["table"] == table]

    lists = {cl["name"]: cl for cl in json.loads(
        (release.releases_dir(cfg.store) / "2026-11-30.10" / "code_lists.json").read_text())}
    assert {"sex", "ethnic_category", "code_system", "medication_type", "category"} <= set(lists)
    for name, cl in lists.items():
        assert _cells(page.text, f'data-code-list="{name}"') == [[t["code"], t["term"]] for t in cl["terms"]]
    ethnic = dict(_cells(page.text, 'data-code-list="ethnic_category"'))
    assert ethnic["J"] == "Asian or Asian British - Pakistani" and ethnic["Z"] == "Not stated"
    assert "patients.ethnic_category" in page.text


def test_every_closed_value_set_has_a_term_for_each_value():
    from gpdata.quality.suites import VALUE_SETS

    lists = {cl["name"]: [t["code"] for t in cl["terms"]] for cl in dictionary.code_lists()}
    for column, values in VALUE_SETS.items():
        assert lists[column] == values
    assert all(t["term"] for cl in dictionary.code_lists() for t in cl["terms"])
    assert "## Code lists" in dictionary.markdown() and "| dmd | Dictionary of medicines and devices (dm+d) |" \
        in dictionary.markdown()


def test_a_release_made_before_code_lists_were_recorded_still_shows_its_columns(client):
    _publish(settings.load().store, "2026-01-02.1", code_lists=False)
    page = client.get("/dictionary/2026-01-02.1")
    assert page.status_code == 200 and 'id="no-code-lists"' in page.text and 'data-table="patients"' in page.text


def test_a_reference_code_list_shows_its_codes_and_terms(client):
    page = client.get("/dictionary/code-lists/nhsd-primary-care-domain-refsets-bmival_cod")
    assert page.status_code == 200
    rows = _cells(page.text, 'data-code-list="nhsd-primary-care-domain-refsets-bmival_cod"')
    assert ["60621009", "Body mass index"] in rows and len(rows) == len(
        dictionary.reference_code_list("nhsd-primary-care-domain-refsets-bmival_cod")["terms"])


def test_release_ids_and_code_list_names_never_reach_another_file(client):
    cfg = settings.load()
    _publish(cfg.store, "2026-11-30.1")
    # a dictionary one folder up from the releases (the store root) and a CSV outside the code lists
    dictionary.write(cfg.store)
    store.write_json_atomic(cfg.store / "release.json", {"release_id": "..", "status": "published",
                                                         "created_at": "x", "tables": {}})
    outside = cfg.store / "secret.csv"
    outside.write_text("code,term\n1,outside\n")
    for path in ("/dictionary/%2E%2E", "/dictionary/..%2F..%2Fstore", "/dictionary/2026-11-30.1%2F..",
                 "/dictionary/2026-11-30.2", "/dictionary/latest", "/dictionary/code-lists/%2E%2E%2Fsecret",
                 "/dictionary/code-lists/SOURCES", "/dictionary/code-lists/nope"):
        response = client.get(path)
        assert response.status_code == 404, path
        assert "outside" not in response.text and "data-table" not in response.text, path


def test_a_code_list_name_is_one_of_the_shipped_lists_never_a_path(tmp_path):
    from gpdata.errors import GpdataError

    lists = tmp_path / "codelists"
    lists.mkdir()
    (lists / "shipped.csv").write_text("code,term\n60621009,Body mass index\n")
    (tmp_path / "secret.csv").write_text("code,term\n1,outside\n")
    assert dictionary.reference_code_lists(lists) == ["shipped"]
    assert dictionary.reference_code_list("shipped", lists)["terms"] == [{"code": "60621009",
                                                                          "term": "Body mass index"}]
    for name in ("../secret", "..", "shipped.csv", "/etc/passwd", "SHIPPED"):
        with pytest.raises(GpdataError, match="no reference code list"):
            dictionary.reference_code_list(name, lists)


def test_pages_load_nothing_and_run_nothing(client):
    cfg = settings.load()
    _publish(cfg.store, "2026-11-30.1")
    for path in ("/dictionary/", "/dictionary/2026-11-30.1", "/dictionary/code-lists/opensafely-weight-snomed"):
        response = client.get(path)
        assert response.status_code == 200, path
        csp = response.headers["content-security-policy"]
        assert "default-src 'none'" in csp and "img-src 'none'" in csp, path
        assert "<script" not in response.text and "src=" not in response.text, path
        assert not re.findall(r'href="(?!/|#)', response.text), path  # every link is to this app or this page
