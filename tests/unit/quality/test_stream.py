"""The quality gate streamed in record batches (gpdata.quality.stream): the same verdicts, counts, quarantine and
validated rows as on whole tables, with defects planted across and inside later batches."""

import datetime as dt
import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
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


def _pseudonym(i: int, prefix: str = "") -> str:
    return prefix + hashlib.sha256(str(i).encode()).hexdigest()[len(prefix):]  # as pseudonyms are


def test_key_groups_spill_the_column_hold_every_occurrence_of_a_value_and_find_the_same_duplicates(
        tmp_path, monkeypatch):
    monkeypatch.setenv(BATCH_ROWS_ENV, "100")  # the column is read and spilled 100 keys at a time
    keys = [_pseudonym(i) for i in range(5000)]
    keys[4000] = keys[7]  # a duplicate batches apart
    keys[100] = keys[99]  # and across a batch boundary
    keys[10] = keys[4999] = "x"  # a malformed key twice, nulls
    keys[20] = keys[30] = None
    # 5,000 keys in groups of 500: ten groups of the first two hex digits (256 prefixes, 25.6 a group); the
    # last prefix of the first group (0x19) and the first of the second (0x1a), each twice, far apart
    keys[1], keys[2], keys[2001], keys[3002] = _pseudonym(1, "19"), _pseudonym(2, "1a"), _pseudonym(1, "19"), \
        _pseudonym(2, "1a")
    arr = pa.array(keys, pa.string())
    path = tmp_path / "keys.parquet"
    pq.write_table(pa.table({"record_id": arr, "other": pa.array(range(5000))}), path)
    work, seen = tmp_path / "work", []
    with stream.key_groups(path, "record_id", 500, work) as groups:
        for keys_, positions in groups:
            spilled = list(work.rglob("*.arrow"))
            seen.append((keys_, positions, len(spilled)))
            assert all(pa.ipc.open_file(p).schema.names == ["record_id", "position"] for p in spilled)  # keys only
    assert not list(work.iterdir())  # every spill file and folder removed
    assert [s for _, _, s in seen] == list(range(9, -1, -1))  # a file per group, each removed once read
    assert max(len(k) for k, _, _ in seen) <= 1.5 * 500
    positions = np.concatenate([p.to_numpy() for _, p, _ in seen])
    assert sorted(positions.tolist()) == list(range(len(keys)))  # every row once ...
    for k, p, _ in seen:
        assert k.equals(arr.take(p)) and (np.diff(p.to_numpy()) > 0).all()  # ... with its key, in order
    group_of = {}
    for number, (k, _, _) in enumerate(seen):
        for value in set(k.to_pylist()):
            assert group_of.setdefault(value, number) == number  # every occurrence of a value in one group
    assert group_of[keys[1]] + 1 == group_of[keys[2]]  # the planted pair straddles a group boundary
    found = stream.duplicate_positions(path, "record_id", 500, work)
    assert found.tolist() == np.flatnonzero(rules._duplicates(arr).to_numpy(zero_copy_only=False)).tolist()
    assert found.tolist() == [100, 2001, 3002, 4000, 4999]
    assert not list(work.iterdir())


def test_key_groups_of_a_short_column_are_one_read_and_spill_nothing(tmp_path):
    path = tmp_path / "keys.parquet"
    pq.write_table(pa.table({"k": ["a", "b", "a", None]}), path)
    with stream.key_groups(path, "k", 4, tmp_path / "work") as groups:
        [(keys, positions)] = list(groups)
    assert keys.to_pylist() == ["a", "b", "a", None] and positions.to_pylist() == [0, 1, 2, 3]
    assert not (tmp_path / "work").exists()
    assert stream.duplicate_positions(path, "k", 4, tmp_path / "work").tolist() == [2]


def test_spilled_key_groups_are_removed_on_error(tmp_path, monkeypatch):
    monkeypatch.setenv(BATCH_ROWS_ENV, "10")
    path = tmp_path / "keys.parquet"
    pq.write_table(pa.table({"k": [_pseudonym(i) for i in range(100)]}), path)
    with pytest.raises(RuntimeError, match="stop"), stream.key_groups(path, "k", 20, tmp_path / "work") as groups:
        next(groups)
        assert list((tmp_path / "work").rglob("*.arrow"))
        raise RuntimeError("stop")
    assert not list((tmp_path / "work").iterdir())


def test_a_staged_file_read_in_batches_holds_about_a_batch_not_the_file(tmp_path):
    path = tmp_path / "keys.parquet"
    pq.write_table(pa.table({"k": [_pseudonym(i) for i in range(80_000)]}), path, row_group_size=2_000,
                   compression="zstd")  # 40 row groups of hex digests (barely compressible): 2.8 MB
    size, before, held = path.stat().st_size, pa.total_allocated_bytes(), []
    for batch in stream.parquet_file(path).iter_batches(batch_size=2_000):
        held.append(pa.total_allocated_bytes() - before)
        del batch
    assert len(held) == 40 and size > 2_500_000
    assert max(held) < size / 4  # a batch (about 0.5 MB); pyarrow's default pre-buffering held the whole file


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


def test_the_streamed_check_never_reads_a_key_column_whole(extracted, monkeypatch):
    """Memory does not grow with the practice: no read of the check stage holds more than a key group of rows
    (the observations' key column, about 1,900 rows, is spilled into groups of about 200), and no spill is left."""
    feed, cfg, folder = extracted
    monkeypatch.setenv(BATCH_ROWS_ENV, ROWS)
    reads = []

    def spy(real):
        def read(*a, **k):
            out = real(*a, **k)
            reads.append(out.num_rows)
            return out
        return read

    monkeypatch.setattr(pq, "read_table", spy(pq.read_table))
    monkeypatch.setattr(pq.ParquetFile, "read", spy(pq.ParquetFile.read))
    counts = pipeline.check(feed, cfg, "r1", today=TODAY)["quality"]
    assert counts["passed"] and counts["rows_in"]["observations"] > stream.KEY_GROUP_BATCHES * int(ROWS)
    assert reads and max(reads) <= stream.KEY_GROUP_BATCHES * int(ROWS)
    assert not [p for p in folder.parent.rglob("*") if p.name.startswith("keys-") or p.suffix == ".arrow"]
