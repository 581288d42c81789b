"""Several practices in one process (gpdata.pipeline.run_chunk): the same store as one practice at a time, Great
Expectations validated together with the verdicts each practice gets alone, and a failure that stays its own."""

import datetime as dt
import json
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from gpdata import pipeline, quality, settings, store
from gpdata.ingest.dialects import load_dialect
from gpdata.ingest.feeds import Feed
from gpdata.ingest.sources.flatfile import write_delivery
from gpdata.model import PARTITION, TABLES
from gpdata.privacy import type1
from gpdata.synth import exports, generate

TODAY = dt.date(2026, 6, 1)
DAY2 = "20260102020000"


def _practices(home: Path, n: int = 3) -> list[Feed]:
    """``n`` small generated practices delivering EMIS-style flat files, baselined one at a time."""
    truths = generate(home, n_practices=n, n_patients=80, events_per_patient=12, dirty_fraction=0.0, seed=5)
    feeds = []
    for t in truths:
        out = home / "inbox" / t.ods_code
        exports.export_flatfile(home / "sources" / t.ods_code, out, t.ods_code, "emis_csv")
        feeds.append(Feed(ods_code=t.ods_code, name="p", location=str(out), format="flatfile", dialect="emis_csv",
                          mode="incremental", max_quarantine_fraction=0.5))
    cfg = settings.load()
    for feed in feeds:
        pipeline.run_practice(feed, cfg, "base", today=TODAY)
    return feeds


def _deliver_increments(home: Path, feeds: list[Feed]) -> None:
    dialect = load_dialect("emis_csv")
    for number, feed in enumerate(feeds):
        canonical = exports.canonical_of(home / "sources" / feed.ods_code, feed.ods_code)
        inc = exports.make_increment(canonical, seed=number, fraction=0.05)
        write_delivery(inc.changed, Path(feed.location), feed.ods_code, dialect, DAY2, deleted=inc.deleted)


def _rows(cfg, ods: str) -> dict[str, list]:
    out = {}
    for name in TABLES:
        table = store.read_table(cfg.store, name, ods)
        out[name] = sorted(map(str, table.to_pylist()))
    return out


def _same_alone(feeds: list[Feed], out: dict, chunk: dict, alone: Path, home: Path, monkeypatch) -> None:
    """Each practice run alone (``run_practice``) on ``alone``, a copy of the homes before the chunk ran, commits
    what the chunk committed for it: same counts and rows."""
    monkeypatch.setenv("GPDATA_HOME", str(alone))
    monkeypatch.setenv("GPDATA_INBOX_ROOT", str(home))
    solo_cfg = settings.load()
    for feed in feeds:
        counts = pipeline.run_practice(feed, solo_cfg, "delta", today=TODAY)
        assert counts["status"] == "committed"
        assert counts["quality"]["quarantined"] == out[feed.ods_code]["quality"]["quarantined"]
        assert counts["committed_rows"] == out[feed.ods_code]["committed_rows"]
        assert _rows(solo_cfg, feed.ods_code) == chunk[feed.ods_code]


def test_a_chunk_commits_what_practices_alone_commit_and_a_failure_stays_its_own(home, tmp_path, monkeypatch):
    feeds = _practices(home)
    _deliver_increments(home, feeds)
    broken = feeds[1]
    obs = next(Path(broken.location).glob(f"*Observation*{DAY2}*"))
    with open(obs, "a") as fh:
        fh.write('"a row with","too many","fields"' + ",x" * 40 + "\n")  # the third practice's file is unreadable
    cfg = settings.load()
    before = _rows(cfg, broken.ods_code)
    alone = tmp_path / "alone"  # the same homes, run one practice at a time
    shutil.copytree(home, alone)

    out = pipeline.run_chunk(feeds, cfg, "delta", today=TODAY)

    assert list(out) == [f.ods_code for f in feeds]
    assert out[broken.ods_code]["status"] == "failed" and out[broken.ods_code]["stage"] == "extract"
    assert "row" in out[broken.ods_code]["cause"] and "file file-" in out[broken.ods_code]["cause"]
    latest = store.latest_manifests(cfg.manifests)[broken.ods_code]
    assert latest["run_id"] == "delta" and latest["status"] == "failed"
    assert latest["error"]["stage"] == "extract" and latest["error"]["cause"] == out[broken.ods_code]["cause"]
    assert _rows(cfg, broken.ods_code) == before  # nothing stored for it changed
    good = [f for f in feeds if f is not broken]
    for feed in good:
        assert out[feed.ods_code]["status"] == "committed"
        assert store.latest_manifests(cfg.manifests)[feed.ods_code]["status"] == "committed"
        assert (cfg.data_docs / feed.ods_code / "index.html").exists()
    # Each increment records a new dissent of a patient the store holds (make_increment): the chunk looks for them
    # and erases them in one pass over the store, not one per practice; each manifest records that erasure.
    dissenting, _ = type1.active_dissenters(cfg.store)
    for name in TABLES:
        held = store.read_table(cfg.store, name)
        if "patient_pid" in held.column_names:
            assert not pc.any(pc.is_in(held["patient_pid"], value_set=dissenting)).as_py(), name
    erasures = (cfg.store / "_erasures" / "log.jsonl").read_text().splitlines()
    assert len(erasures) == 1 and json.loads(erasures[0])["patients"] == len(good)
    for feed in good:
        assert out[feed.ods_code]["erasure"]["practices"] == sorted(f.ods_code for f in good)
    # written together: one Delta commit per table for both increments
    assert out[good[0].ods_code]["table_versions"] == out[good[1].ods_code]["table_versions"]
    _same_alone(good, out, {f.ods_code: _rows(cfg, f.ods_code) for f in good}, alone, home, monkeypatch)


def test_a_practice_whose_increment_cannot_be_written_fails_alone(home, tmp_path, monkeypatch):
    """The chunk's increments are written together; when that fails, each is written alone, so only the practice
    whose rows cannot be read fails (at its commit stage, its journal left standing, so no release is made until
    it runs again), and the others commit what they commit alone."""
    monkeypatch.setattr(pipeline, "CHECK_SECONDS", 1e9)  # one check after every write
    feeds = _practices(home)
    _deliver_increments(home, feeds)
    alone = tmp_path / "alone"
    shutil.copytree(home, alone)
    broken = feeds[1].ods_code
    opened = pipeline._Validated.open

    def open_or_fail(self):
        if self.name == "observations" and self.path.parent.parent.name == broken:
            raise OSError("the staged file is unreadable")
        return opened(self)

    monkeypatch.setattr(pipeline._Validated, "open", open_or_fail)
    cfg = settings.load()

    out = pipeline.run_chunk(feeds, cfg, "delta", today=TODAY)

    assert out[broken]["status"] == "failed" and out[broken]["stage"] == "commit"
    assert store.unfinished_commits(cfg.store) == [broken]
    good = [f for f in feeds if f.ods_code != broken]
    assert all(out[f.ods_code]["status"] == "committed" for f in good)
    # what the broken practice may have written is in the check after the writes too
    assert all(out[f.ods_code]["commit_checked_with"] == len(feeds) for f in good)
    monkeypatch.setattr(pipeline._Validated, "open", opened)
    _same_alone(good, out, {f.ods_code: _rows(cfg, f.ods_code) for f in good}, alone, home, monkeypatch)


@pytest.fixture(scope="module")
def passed(tmp_path_factory):
    """Three practices' rows that passed the row rules (the input of the expectations), per practice."""
    from tests.conftest import use_home

    home = tmp_path_factory.mktemp("together")
    with pytest.MonkeyPatch.context() as mp:
        use_home(mp, home)
        truths = generate(home, n_practices=3, n_patients=60, events_per_patient=10, dirty_fraction=0.0, seed=8)
        cfg = settings.load()
        out = {}
        for t in truths:
            feed = Feed(ods_code=t.ods_code, name="p", location=str(home / "sources" / t.ods_code))
            pipeline.extract(feed, cfg, "r1")
            out[t.ods_code] = pipeline._check_rows(feed, cfg, "r1", TODAY).result.passed
    return out


def _verdicts_alone(tables: dict[str, dict[str, pa.Table]]) -> dict[str, bool]:
    return {p: all(r["success"] for r in quality.run_suites(t, p, TODAY)) for p, t in tables.items()}


def _replace(table: pa.Table, column: str, row: int, value) -> pa.Table:
    values = table[column].to_pylist()
    values[row] = value
    at = table.schema.get_field_index(column)
    return table.set_column(at, table.schema.field(at), pa.array(values, table[column].type))


def test_together_every_practice_passes_and_each_gets_its_own_counts(passed):
    together = quality.run_suites_together(passed, TODAY)
    assert set(together) == set(passed) and all(r is not None for r in together.values())
    assert all(_verdicts_alone(passed).values())
    for practice, results in together.items():
        assert all(r["success"] for r in results)
        counts = {r["table"]: r["element_count"] for r in results
                  if r["expectation"] == "expect_column_values_to_not_be_null" and r["element_count"] is not None}
        assert counts == {name: passed[practice][name].num_rows for name in counts} and counts


@pytest.mark.parametrize("defect", ["another_practice", "before_1900", "duplicate_record", "bad_pseudonym"])
def test_a_defect_in_one_practice_is_never_passed_together(passed, defect):
    """Whatever breaks one practice's suite alone makes every group holding it fail, down to the practice alone
    (validated alone by the caller); the others pass in their half. A practice code of another practice of the
    chunk is the case a set of the chunk's practices would let through: the row is checked against the practice
    it was staged for."""
    practices = list(passed)  # the first is alone in the first half; the other two pass together
    victim, other = practices[0], practices[1]
    tables = {p: dict(t) for p, t in passed.items()}
    obs = tables[victim]["observations"]
    assert obs.num_rows > 2
    if defect == "another_practice":
        obs = _replace(obs, PARTITION, 1, other)
    elif defect == "before_1900":
        obs = _replace(obs, "event_date", 1, dt.date(1850, 1, 1))
    elif defect == "duplicate_record":
        obs = _replace(obs, "record_id", 1, obs["record_id"][0].as_py())
    else:
        obs = _replace(obs, "patient_pid", 1, "not-a-pseudonym")
    tables[victim]["observations"] = obs
    alone = _verdicts_alone(tables)
    assert alone == {p: p != victim for p in practices}
    together = quality.run_suites_together(tables, TODAY)
    assert {p: r is not None for p, r in together.items()} == alone  # the victim: the caller validates it alone


def test_plan_puts_baselines_and_large_deliveries_alone(home):
    feeds = _practices(home, n=3)
    cfg = settings.load()
    assert pipeline.plan_chunks(feeds, cfg) == ([], [[f.ods_code for f in feeds]])  # nothing new: all small
    _deliver_increments(home, feeds)
    sizes = [pipeline.delivered_bytes(f, cfg) for f in feeds]
    assert all(s > 0 for s in sizes)
    alone, chunks = pipeline.plan_chunks(feeds, cfg, max_bytes=max(sizes) - 1)
    assert alone == [f.ods_code for f, s in zip(feeds, sizes, strict=True) if s == max(sizes)]
    assert sorted(sum(chunks, [])) == sorted(f.ods_code for f, s in zip(feeds, sizes, strict=True) if s < max(sizes))
    assert pipeline.plan_chunks(feeds, cfg, max_practices=1)[1] == [[f.ods_code] for f in feeds]
    # forced, every file is read again: the whole delivery is measured, and a large one runs alone
    whole = [pipeline.delivered_bytes(f, cfg, force=True) for f in feeds]
    assert all(w > s for w, s in zip(whole, sizes, strict=True))
    assert pipeline.plan_chunks(feeds, cfg, max_bytes=max(sizes), force=True) == ([f.ods_code for f in feeds], [])
    sql = Feed(ods_code=feeds[0].ods_code, name="db", format="sql", dialect="supplier_sql", connection_id="c")
    assert pipeline.delivered_bytes(sql, cfg) == 0 and pipeline.delivered_bytes(sql, cfg, force=True) is None
    new = Feed(ods_code="Y01234", name="new", location=str(home / "inbox" / "Y01234"))
    assert pipeline.plan_chunks([new], cfg) == (["Y01234"], [])  # never committed: a baseline runs alone


def test_the_same_key_in_two_practices_passes_together_as_it_does_alone(passed):
    """A record id or a patient's pseudonym may recur in another practice (a patient registered at both): unique
    within each practice is what each suite asks, so together asks the same."""
    practices = sorted(passed)
    tables = {p: dict(t) for p, t in passed.items()}
    a, b = tables[practices[0]], tables[practices[1]]
    b["observations"] = _replace(b["observations"], "record_id", 0, a["observations"]["record_id"][0].as_py())
    b["patients"] = _replace(b["patients"], "patient_pid", 0, a["patients"]["patient_pid"][0].as_py())
    assert all(_verdicts_alone(tables).values())
    assert all(r is not None for r in quality.run_suites_together(tables, TODAY).values())


def test_a_practice_too_large_for_one_batch_is_streamed_alone_within_its_chunk(home, tmp_path, monkeypatch):
    """A chunk with one practice whose increment exceeds a record batch: it is checked in batches and validated
    alone (its tables are not gathered with the others'), the small ones are validated together, and every
    practice's store is the one it gets when it runs alone in one batch."""
    feeds = _practices(home)
    dialect = load_dialect("emis_csv")
    for number, (feed, fraction) in enumerate(zip(feeds, (0.6, 0.05, 0.05), strict=True)):
        canonical = exports.canonical_of(home / "sources" / feed.ods_code, feed.ods_code)
        inc = exports.make_increment(canonical, seed=number, fraction=fraction)
        write_delivery(inc.changed, Path(feed.location), feed.ods_code, dialect, DAY2, deleted=inc.deleted)
    alone = tmp_path / "alone"
    shutil.copytree(home, alone)
    large = feeds[0]
    delivered = exports.canonical_of(home / "sources" / large.ods_code, large.ods_code)["observations"].num_rows
    monkeypatch.setenv("GPDATA_BATCH_ROWS", "100")
    together: list[set[str]] = []
    validate_together = quality.run_suites_together

    def spy(passing, *args, **kwargs):
        together.append(set(passing))
        return validate_together(passing, *args, **kwargs)

    monkeypatch.setattr(quality, "run_suites_together", spy)
    streamed: list[str] = []
    validate_streamed = quality.run_suites_streamed

    def spy_streamed(folder, practice, *args, **kwargs):
        streamed.append(practice)
        return validate_streamed(folder, practice, *args, **kwargs)

    monkeypatch.setattr(quality, "run_suites_streamed", spy_streamed)
    cfg = settings.load()

    out = pipeline.run_chunk(feeds, cfg, "delta", today=TODAY)

    assert delivered * 0.6 > 100  # the large practice's observations alone are several batches
    assert {o["status"] for o in out.values()} == {"committed"}
    assert streamed == [large.ods_code]  # checked in batches, and validated alone
    assert together == [{f.ods_code for f in feeds[1:]}]
    chunk = {f.ods_code: _rows(cfg, f.ods_code) for f in feeds}
    assert (cfg.data_docs / large.ods_code / "index.html").exists()

    monkeypatch.delenv("GPDATA_BATCH_ROWS")
    monkeypatch.setattr(quality, "run_suites_together", validate_together)
    monkeypatch.setattr(quality, "run_suites_streamed", validate_streamed)
    _same_alone(feeds, out, chunk, alone, home, monkeypatch)
