"""The quality gate streamed in record batches (gpdata.quality.stream): the same verdicts, counts, quarantine and
validated rows as on whole tables, with defects planted across and inside later batches."""

import datetime as dt
import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from gpdata import pipeline, quality, settings
from gpdata.arrowutil import BATCH_ROWS_ENV
from gpdata.errors import QualityGateError
from gpdata.ingest.feeds import Feed
from gpdata.model import CURATED, QUARANTINE_SCHEMA, TABLES
from gpdata.quality import rules, stream
from gpdata.synth import generate
from tests import factory as f
from tests.test_helpers import staged_tables

TODAY = dt.date(2026, 6, 1)


def _rows(table: pa.Table) -> list[str]:
    return sorted(map(str, table.to_pylist()))


def _sorted(results: list[dict]) -> list[str]:
    return sorted(json.dumps(r, sort_keys=True) for r in results)


def _write(folder: Path, tables: dict[str, pa.Table]) -> Path:
    folder.mkdir(parents=True)
    for name, table in tables.items():
        pq.write_table(table, folder / f"{name}.parquet")
    return folder


def test_key_groups_hold_every_occurrence_of_a_value_and_find_the_same_duplicates():
    keys = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(5000)]  # as pseudonyms are
    keys[4000] = keys[7]  # duplicates far apart, a malformed key twice, nulls
    keys[10] = keys[4999] = "x"
    keys[20] = keys[30] = None
    arr = pa.array(keys, pa.string())
    groups = list(stream.key_groups(arr, 500))
    assert len(groups) > 4 and max(len(g) for g in groups) <= 2 * 500
    positions = np.concatenate([g.to_numpy() for g in groups])
    assert sorted(positions.tolist()) == list(range(len(keys)))  # every row once
    group_of = {}
    for number, g in enumerate(groups):
        for value in set(arr.take(g).to_pylist()):
            assert group_of.setdefault(value, number) == number  # every occurrence of a value in one group
    flags = stream.duplicate_flags(arr, 500)
    assert flags.equals(rules._duplicates(arr)) and pc.sum(flags).as_py() == 2


@pytest.fixture
def factory_staged(tmp_path):
    extra = [f.observation("future", "p1", f.BMI, "2030-01-01", value=20.0, unit="kg/m2"),
             f.observation("badcode", "p1", "60621008", "2020-01-01"),
             f.observation("huge", "p2", f.BMI, "2020-02-02", value=500.0, unit="kg/m2"),
             f.observation("o1", "p1", f.BMI, "2020-01-01", value=27.5, unit="kg/m2")]  # a duplicate, batches apart
    return staged_tables(tmp_path, extra)[0]


def test_streamed_row_rules_equal_the_whole_table_rules(factory_staged, tmp_path, monkeypatch):
    whole = quality.gate_rows(factory_staged, "A81001", "r", today=TODAY, max_quarantine_fraction=0.2,
                              quarantine_allowance=0)
    monkeypatch.setenv(BATCH_ROWS_ENV, "2")
    streamed = quality.gate_rows_streamed(_write(tmp_path / "staged", factory_staged), tmp_path / "out", "A81001",
                                          "r", today=TODAY, max_quarantine_fraction=0.2, quarantine_allowance=0)
    assert whole.counts["quarantined"]["observations"]["duplicate_record"] == 1
    assert streamed.counts == whole.counts and streamed.failures == whole.failures and whole.failures
    for name in TABLES:
        written = pq.read_table(tmp_path / "out" / f"{name}.parquet")
        assert written.schema.equals(CURATED[name], check_metadata=True)
        assert _rows(written) == _rows(whole.passed[name]), name
    quarantine = pq.read_table(tmp_path / "out" / "quarantine.parquet")
    assert quarantine.schema.equals(QUARANTINE_SCHEMA) and _rows(quarantine) == _rows(whole.quarantine)


def _stored_results(gx_root: Path) -> dict[str, list[str]]:
    """Per suite, its stored validation result's expectation results (configuration without the batch id)."""
    out = {}
    stored = gx_root / "gx" / "uncommitted" / "validations"
    for path in stored.rglob("*.json"):
        doc, suite = json.loads(path.read_text()), path.relative_to(stored).parts[0]
        rows = []
        for r in doc["results"]:
            kwargs = {k: v for k, v in r["expectation_config"]["kwargs"].items() if k != "batch_id"}
            rows.append(json.dumps([r["expectation_config"]["type"], kwargs, r["success"], r["result"]],
                                   sort_keys=True))
        assert suite not in out  # one validation result per asset
        out[suite] = sorted(rows)
    return out


def test_expectations_in_parts_give_the_whole_tables_results(tmp_path, monkeypatch):
    extra = [f.observation(f"ok{i}", "p2", f.BMI, f"2020-03-0{i}", value=25.0 + i, unit="kg/m2") for i in range(1, 7)]
    staged = staged_tables(tmp_path, extra)[0]
    passed = quality.gate_rows(staged, "A81001", "r", today=TODAY, max_quarantine_fraction=1.0).passed
    obs = passed["observations"]
    assert obs.num_rows >= 6

    def column(name, values):
        i = obs.schema.get_field_index(name)
        return obs.schema.field(i).with_nullable(True), pa.array(values, obs[name].type)

    dates = [None, None, dt.date(1850, 1, 1), *obs["event_date"].to_pylist()[3:]]  # no value in the first part,
    ids = obs["record_id"].to_pylist()                                             # out of range in the second
    ids[-1] = ids[0]
    pracs = obs["practitioner_pid"].to_pylist()
    pracs[3] = "not-a-pseudonym"
    for name, values in (("event_date", dates), ("record_id", ids), ("practitioner_pid", pracs)):
        obs = obs.set_column(obs.schema.get_field_index(name), *column(name, values))
    passed["observations"] = obs
    whole = quality.run_suites(passed, "A81001", TODAY, gx_root=tmp_path / "whole", docs_dir=tmp_path / "d1")
    monkeypatch.setenv(BATCH_ROWS_ENV, "2")
    parts = quality.run_suites_streamed(_write(tmp_path / "passed", passed), "A81001", TODAY,
                                        gx_root=tmp_path / "parts", docs_dir=tmp_path / "d2")
    failed = {(r["expectation"], r["column"], r["unexpected_count"]) for r in parts if not r["success"]}
    assert failed == {("expect_column_min_to_be_between", "event_date", None),
                      ("expect_column_values_to_match_regex", "practitioner_pid", 1),
                      ("expect_column_values_to_be_unique", "record_id", 2)}
    assert _sorted(parts) == _sorted(whole)
    stored = _stored_results(tmp_path / "parts")
    assert stored == _stored_results(tmp_path / "whole") and "gpdata_observations" in stored
    assert (tmp_path / "d2" / "index.html").exists() and list((tmp_path / "d2" / "validations").rglob("*.html"))


# ------------------------------------------------------------------------------------------ through the pipeline
ROWS = "200"  # the generated practice's observations are about 1,900 rows: ten record batches


@pytest.fixture
def extracted(home):
    """A generated practice extracted (run "r1"), with defects planted in the staged observations after the first
    record batch: a duplicate of a record of the first batch, an unknown patient, a date in the future."""
    truth = generate(home, n_practices=1, n_patients=150, events_per_patient=20, dirty_fraction=0.02, seed=3)[0]
    feed = Feed(ods_code=truth.ods_code, name="p", location=str(home / "sources" / truth.ods_code),
                max_quarantine_fraction=0.25)
    cfg = settings.load()
    pipeline.extract(feed, cfg, "r1")
    folder = pipeline.staging_dir(cfg, "r1", feed.ods_code) / "extracted"
    path = folder / "observations.parquet"
    obs = pq.read_table(path)
    planted = {"record_id": (250, obs["record_id"][10].as_py()), "patient_pid": (260, "f" * 64),
               "event_date": (270, dt.date(2099, 1, 1))}
    for name, (at, value) in planted.items():
        values = obs[name].to_pylist()
        values[at] = value
        obs = obs.set_column(obs.schema.get_field_index(name), obs.schema.field(name), pa.array(values, obs[name].type))
    pq.write_table(obs, path)
    shutil.copytree(folder, folder.with_name("extracted.copy"))
    return feed, cfg, folder


def _check(feed, cfg, folder: Path) -> tuple[dict, dict, dict[str, list[str]]]:
    """The check stage on a fresh copy of the extracted folder: (quality counts, results file, validated rows)."""
    shutil.rmtree(folder, ignore_errors=True)
    shutil.rmtree(folder.with_name("validated"), ignore_errors=True)
    shutil.copytree(folder.with_name("extracted.copy"), folder)
    try:
        counts = pipeline.check(feed, cfg, "r1", today=TODAY)["quality"]
    except QualityGateError:
        counts = None
    results = json.loads((cfg.quality / feed.ods_code / "r1.json").read_text())
    validated = folder.with_name("validated")
    rows = {p.name: _rows(pq.read_table(p)) for p in sorted(validated.glob("*.parquet"))} if counts else {}
    return counts, results, rows


def _spy(monkeypatch) -> list[str]:
    calls = []
    real = quality.gate_rows_streamed
    monkeypatch.setattr(quality, "gate_rows_streamed", lambda *a, **k: calls.append(a[2]) or real(*a, **k))
    return calls


def test_check_streamed_in_record_batches_equals_the_one_batch_check(extracted, monkeypatch):
    feed, cfg, folder = extracted
    calls = _spy(monkeypatch)
    one = _check(feed, cfg, folder)
    monkeypatch.setenv(BATCH_ROWS_ENV, ROWS)
    many = _check(feed, cfg, folder)
    assert calls == [feed.ods_code]  # the second check streamed, the first held each table whole
    counts, results, rows = many
    assert counts["passed"] and counts["quarantined"]["observations"]["unknown_patient"] >= 1
    assert counts == one[0] and rows == one[2] and set(rows) >= {f"{t}.parquet" for t in TABLES}
    assert _sorted(results.pop("expectations")) == _sorted(one[1].pop("expectations")) and results == one[1]
    assert not folder.with_name("validating").exists()
    committed = pipeline.commit(feed, cfg, "r1")  # the commit reads the streamed output as it is
    assert committed["committed_rows"] == counts["rows_passed"]


def test_a_duplicate_across_batches_is_missed_per_batch_and_caught_by_the_key_column(extracted, monkeypatch):
    feed, cfg, folder = extracted
    monkeypatch.setenv(BATCH_ROWS_ENV, ROWS)
    counts, _, _ = _check(feed, cfg, folder)
    dupes = counts["quarantined"]["observations"]["duplicate_record"]
    real = rules.table_step
    monkeypatch.setattr(rules, "table_step", lambda *a, duplicates=None, **k: real(*a, **k))  # per batch only
    counts, results, _ = _check(feed, cfg, folder)
    assert counts is None  # the gate failed: the rule missed the duplicates in another batch (the planted one
    missed = dupes - results["quarantined"]["observations"].get("duplicate_record", 0)  # and the generator's) ...
    assert missed >= 1
    unique = [r for r in results["expectations"] if r["table"] == "observations"
              and r["expectation"] == "expect_column_values_to_be_unique"]
    assert len(unique) == 1 and not unique[0]["success"]  # ... and GX's uniqueness on the key column did not
    assert unique[0]["unexpected_count"] >= missed + 1
    assert not folder.with_name("validating").exists() and not folder.with_name("validated").exists()
