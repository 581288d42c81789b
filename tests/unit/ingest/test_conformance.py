"""The conformance corpus (tests/unit/ingest/conformance/): bundles written by the project after the published GP
Connect Access Record Structured 1.6 and UK Core R4 examples, resource by resource, each with the canonical rows it
must load to (the columns named; rows in delivery order) or the reason it must be refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gpdata.errors import SourceError
from gpdata.ingest.sources.fhir import read_bundles
from gpdata.model import ISSUE

CORPUS = Path(__file__).parent / "conformance"
CASES = sorted(CORPUS.glob("*.json"))


def _rows(table, expected):
    """Each row with the columns its expected row names (dates as ISO text)."""
    rows = table.to_pylist()
    return [{c: (str(row[c]) if c.endswith("date") and row[c] is not None else row[c]) for c in want}
            for row, want in zip(rows, expected, strict=False)] + rows[len(expected):]


@pytest.mark.parametrize("path", CASES, ids=[p.stem for p in CASES])
def test_example_loads_to_exactly_the_expected_rows_or_is_refused(path, tmp_path):
    case = json.loads(path.read_text())
    (tmp_path / "bundle.json").write_text(json.dumps(case["bundle"]))
    if "refused" in case:
        with pytest.raises(SourceError) as err:
            read_bundles(tmp_path, "A81001")
        assert case["refused"] in str(err.value) and err.value.file == "bundle.json"
        return
    report: dict = {}
    tables = read_bundles(tmp_path, "A81001", report=report)
    assert all(ISSUE not in t.column_names for t in tables.values())  # nothing unreadable
    for name, expected in case["expected"].items():
        assert _rows(tables[name], expected) == expected, name
    assert report["unmapped_resources"] == case["unmapped_resources"]
    assert report["unreadable_entries"] == {}


def test_corpus_covers_the_record_kinds():
    kinds = {name for p in CASES for name in json.loads(p.read_text()).get("expected", {})}
    assert {"medications", "referrals", "immunisations", "observations", "allergies", "patients"} <= kinds
    assert any("refused" in json.loads(p.read_text()) for p in CASES)
