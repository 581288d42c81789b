"""Great Expectations results and Data Docs keep counts, never one record's value: the observed minimum and
maximum of a date column (the oldest patient's birth month, the earliest event) are blanked before the
result is stored and the Data Docs are built."""

import json

from gpdata import pipeline, settings
from gpdata.ingest.feeds import Feed
from gpdata.quality.rules import SINGLE_RECORD_OBSERVATIONS
from tests import factory as f
from tests.conftest import practice_resources

# The single records of practice_resources(): birth months of the two valid patients, and event dates.
SINGLE_VALUES = ["1980-05-01", "1990-02-01", "2019-05-05", "2020-01-01", "2022-03-03", "2024-03-01"]


def _texts(root):
    return {p: p.read_text(errors="replace") for p in root.rglob("*") if p.is_file()}


def test_persisted_results_and_data_docs_keep_no_observed_min_or_max(home):
    cfg = settings.load()
    f.write_bundle(home / "sources" / "A81001", practice_resources())
    pipeline.run_practice(Feed(ods_code="A81001", name="A", location=str(home / "sources" / "A81001"),
                               max_quarantine_fraction=1), cfg, "r1")
    results = [p for p in cfg.quality.rglob("*.json") if "validations" in p.parts]
    assert results and (cfg.data_docs / "A81001").is_dir()
    blanked = 0
    for path in results:
        for er in json.loads(path.read_text())["results"]:
            if er["expectation_config"]["type"] in SINGLE_RECORD_OBSERVATIONS:
                assert er["result"].get("observed_value") is None, path
                blanked += 1
            else:  # counts stay
                assert "observed_value" not in er["result"] or not isinstance(er["result"]["observed_value"], str)
    assert blanked >= 6
    for root in (cfg.quality, cfg.data_docs):
        for path, text in _texts(root).items():
            found = [v for v in SINGLE_VALUES if v in text or v.replace("-", "") in text]
            assert not found, (path, found)
