"""Hostile values in a delivery: spreadsheet formulas, oversized fields and files.

Guarantees: a value that starts a formula (``=``, ``+``, ``-``, ``@``, tab, carriage return) is stored as
data, unchanged, and escaped in every CSV written; a field over the size limit fails the practice's batch
with an error naming practice, file, entry and column (never the value); a file over the limit is refused
before it is read, so memory stays bounded; other practices go on.
"""

import csv
import io
import json
import logging
import tracemalloc

import pytest
import yaml

from gpdata import pipeline, settings, store
from gpdata.errors import SourceError
from gpdata.ingest import limits
from gpdata.privacy import keys
from gpdata.share import csvsafe, disseminate
from gpdata.store import release
from tests.factory import file_token
from tests.reliability.conftest import FORMULAS, assert_no_leaks, digest

FORMULA_CHARS = ("=", "+", "-", "@", "\t", "\r")


def test_formula_values_are_stored_as_data_unchanged(use_home):
    home = use_home("committed")
    cfg, ods = home.cfg, home.practices[0]  # practice A's delivery carries the planted formulas
    assert {v[0] for v in FORMULAS.values()} >= {"=", "+", "-", "@", "\t"}
    for (table, column), value in FORMULAS.items():
        stored = store.read_table(cfg.store, table, ods)[column].to_pylist()
        assert value in stored, (table, column)  # byte for byte: no quote added, nothing stripped
    assert_no_leaks(home)


def test_every_csv_output_escapes_formulas(use_home, tmp_path, monkeypatch):
    home = use_home("committed")
    cfg = home.cfg
    # The public register is the CSV the pipeline publishes: approve a project whose text is hostile.
    doc = yaml.safe_load((settings.DEFAULT_PROJECTS_DIR / "DARS-DEMO-VAX.yaml").read_text())
    doc.update(organisation="=HYPERLINK(\"http://evil.example\",\"Example\")", purpose="+1+cmd|' /C calc'!A0",
               legal_basis="@SUM(1+1)", exemption_reason="-2+3")
    projects = tmp_path / "projects"
    projects.mkdir()
    (projects / "DARS-DEMO-VAX.yaml").write_text(yaml.safe_dump(doc))
    monkeypatch.setenv("GPDATA_PROJECTS_DIR", str(projects))
    rel = release.create_release(cfg.store)["release_id"]
    disseminate.disseminate_all(settings.load(), keys.load_master_key(), requested_by="test", release_id=rel)
    register = list(csv.DictReader(io.StringIO((settings.load().register / "register.csv").read_text())))
    assert register[0]["organisation"] == "'" + doc["organisation"]
    assert register[0]["purpose"] == "'" + doc["purpose"]
    assert register[0]["legal_basis"] == "'" + doc["legal_basis"]
    assert register[0]["national_data_optout"] == "exempt: -2+3"  # not at the start: nothing to escape
    html = (settings.load().register / "register.html").read_text()
    assert "<td>=HYPERLINK(&quot;http://evil.example&quot;" in html  # HTML escaped, not quoted

    # Any CSV of curated rows (the library's CSV writer): every formula cell escaped, and only those.
    rows = [r for table, _ in FORMULAS for r in store.read_table(cfg.store, table, home.practices[0]).to_pylist()]
    columns = sorted({c for r in rows for c in r})
    out = list(csv.DictReader(io.StringIO(csvsafe.dumps(columns, rows))))
    assert len(out) == len(rows)
    for original, written in zip(rows, out, strict=True):
        for column in columns:
            value = original.get(column)
            if not isinstance(value, str):
                continue
            if value.startswith(FORMULA_CHARS):
                assert written[column] == "'" + value, column
            else:
                assert written[column] == value, column
    cells = [v for r in out for v in r.values()]
    assert not [v for v in cells if v.startswith(FORMULA_CHARS)]
    for value in FORMULAS.values():
        assert "'" + value in cells
    assert_no_leaks(home)


def _patient_name(bundle) -> str:
    doc = json.loads(bundle.read_text())
    res = next(e["resource"] for e in doc["entry"] if e["resource"]["resourceType"] == "Patient")
    return f"{res['name'][0]['given'][0]} {res['name'][0]['family']}"


def test_an_oversized_field_fails_only_that_practice_and_names_where(use_home, monkeypatch, caplog):
    home = use_home("committed")
    cfg = home.cfg
    monkeypatch.setenv("GPDATA_MAX_FIELD_CHARS", "4096")
    feed, other = home.feed(0), home.feed(1)
    bundle = sorted(feed.location_path().glob("*.json"))[0]
    name = _patient_name(bundle)
    doc = json.loads(bundle.read_text())
    index, res = next((i, e["resource"]) for i, e in enumerate(doc["entry"])
                      if e["resource"]["resourceType"] == "Observation")
    res["note"] = [{"text": f"{name} said " * 5000}]  # 60k+ characters of identifiable free text
    bundle.write_text(json.dumps(doc))
    before = digest(home.root, skip=["sources"])

    with caplog.at_level(logging.INFO), pytest.raises(SourceError) as err:
        pipeline.extract(feed, cfg, "r2", force=True)
    message = str(err.value)
    assert message.startswith(f"practice {feed.ods_code}: stage extract: file {file_token(bundle.name)}: row {index}: "
                              "table observations column free_text: 1 value(s) over the limit of 4096 characters")
    assert digest(home.root, skip=["sources"]) == before  # nothing staged, nothing stored
    assert pipeline.extract(other, cfg, "r2", force=True)["staged_rows"]["observations"] > 0  # others unaffected
    assert_no_leaks(home, texts={"log": caplog.text}, errors=[err.value])


def _peak_during(fn) -> tuple[int, BaseException | None]:
    tracemalloc.start()
    try:
        fn()
        error = None
    except SourceError as exc:
        error = exc
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return peak, error


def test_an_oversized_file_is_refused_unread_with_bounded_memory(use_home, monkeypatch):
    home = use_home("committed")
    cfg, feed = home.cfg, home.feed(0)
    bundle = sorted(feed.location_path().glob("*.json"))[0]
    with open(bundle, "ab") as fh:  # valid JSON still: 40 MB of trailing whitespace
        fh.write(b" " * 40_000_000)
    size = bundle.stat().st_size
    pipeline.extract(home.feed(1), cfg, "warm", force=True)  # code lists and lookups cached before measuring

    monkeypatch.setenv("GPDATA_MAX_FILE_BYTES", str(1_000_000))
    assert limits.load().max_file_bytes == 1_000_000
    refused_peak, err = _peak_during(lambda: pipeline.extract(feed, cfg, "r2", force=True))
    assert isinstance(err, SourceError)
    where = f"practice {feed.ods_code}: stage extract: file {file_token(bundle.name)}"
    assert str(err).startswith(f"{where}: file of {size} bytes is over the limit of 1000000 bytes")
    assert refused_peak < size / 20, refused_peak  # the file was never read into memory

    monkeypatch.setenv("GPDATA_MAX_FILE_BYTES", str(10 * size))  # the control: within the limit it is read
    read_peak, err = _peak_during(lambda: pipeline.extract(feed, cfg, "r3", force=True))
    assert err is None and read_peak > size, read_peak
    assert_no_leaks(home)
