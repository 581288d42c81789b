"""Hostile and broken deliveries: duplicates, corrupt files and schema drift fail or skip only what they must.

Each broken delivery fails its own practice with an error naming practice, file (and row) and cause, is moved
whole to the practice's quarantine folder, and leaves the curated store and the ledger untouched; another
practice still commits. Identifiers never appear in the errors.
"""

import codecs
import datetime as dt

import pyarrow.compute as pc
import pytest
from deltalake import DeltaTable

from gpdata import pipeline, settings, store
from gpdata.errors import SourceError
from gpdata.ingest import ledger
from gpdata.ingest.dialects import load_dialect
from gpdata.ingest.feeds import Feed
from gpdata.ingest.sources.flatfile import write_delivery
from gpdata.model import TABLES
from gpdata.ops.leakscan import collect_identifiers, scan_text
from gpdata.synth import exports, generate
from tests.factory import file_token

TODAY = dt.date(2026, 1, 1)
ODS, OTHER = "A81001", "B82002"
DIALECT = load_dialect("emis_csv")


@pytest.fixture(scope="module")
def delivered(tmp_path_factory):
    root = tmp_path_factory.mktemp("deliveries")
    generate(root, n_practices=2, n_patients=40, seed=5, ods_codes=[ODS, OTHER])
    return root, exports.canonical_of(root / "sources" / ODS, ODS)


@pytest.fixture
def practice(delivered, home, monkeypatch):
    root, canonical = delivered
    monkeypatch.setenv("GPDATA_INBOX_ROOT", str(root.parent))  # the other practice's deliveries lie beside home
    (home / "reference" / "postcode_lsoa.csv").write_bytes((root / "reference" / "postcode_lsoa.csv").read_bytes())
    inbox = home / "inbox"
    write_delivery(canonical, inbox, ODS, DIALECT, exports.FIRST_STAMP)
    feed = Feed(ods_code=ODS, name="Flat", format="flatfile", dialect="emis_csv", mode="incremental",
                location=str(inbox))
    cfg = settings.load()
    assert pipeline.run_practice(feed, cfg, "base", today=TODAY)["status"] == "committed"
    return feed, cfg, canonical, inbox


def _versions(cfg) -> dict:
    return {t: DeltaTable(str(store.table_path(cfg.store, t))).version() for t in (*TABLES, store.QUARANTINE)}


def _delta(canonical, inbox, stamp: str, add: float = 2.0) -> list:
    """A delivery amending the first 20 observations: each value plus ``add``."""
    obs = canonical["observations"].slice(0, 20)
    amended = obs.set_column(obs.schema.get_field_index("value"), "value", pc.add(obs["value"], add))
    tables = {t: canonical[t].slice(0, 0) for t in TABLES}
    tables["observations"] = amended
    return write_delivery(tables, inbox, ODS, DIALECT, stamp)


def _obs_file(paths):
    return next(p for p in paths if "_Observation_" in p.name)


def _truncate(p):
    p.write_bytes(p.read_bytes()[:-25])


def _empty(p):
    p.write_bytes(b"")


def _bom(p):
    p.write_bytes(codecs.BOM_UTF8 + p.read_bytes())


def _nul(p):
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2] + b"\x00\x00" + data[len(data) // 2:])


def _latin1(p):
    lines = p.read_bytes().split(b"\n")
    lines[3] = lines[3].replace(b",", b",\xe9", 1)
    p.write_bytes(b"\n".join(lines))


def _ragged(p):
    lines = p.read_bytes().split(b"\n")
    lines[4] = lines[4].rsplit(b",", 2)[0]
    p.write_bytes(b"\n".join(lines))


def _drop_column(p):
    rows = [r.split(",") for r in p.read_text().split("\n")]
    p.write_text("\n".join(",".join(r[:5] + r[6:]) if len(r) > 5 else ",".join(r) for r in rows))


def _extra_column(p):
    rows = p.read_text().split("\n")
    p.write_text("\n".join([rows[0] + ",PatientName"] + [r + ",Morwenna Quinlan" if r else r for r in rows[1:]]))


def _retype(p):
    rows = p.read_text().split("\n")
    header = [h.strip('"') for h in rows[0].split(",")]
    i = header.index("NumericValue")
    out = [rows[0]]
    for r in rows[1:]:
        cells = r.split(",")
        if len(cells) == len(header):
            cells[i] = "high"
        out.append(",".join(cells))
    p.write_text("\n".join(out))


UNREADABLE = {
    "truncated": (_truncate, "truncated"),
    "empty": (_empty, "empty file"),
    "byte-order mark": (_bom, "byte-order mark"),
    "NUL bytes": (_nul, "NUL bytes"),
    "wrong encoding": (_latin1, "not valid utf-8"),
    "ragged row": (_ragged, "wrong number of fields"),
}
DRIFT = {
    "missing column": (_drop_column, "missing column(s) Code;"),
    "extra column": (_extra_column, "1 unexpected column(s) 'PatientName'"),
    "retyped column": (_retype, "column NumericValue: not a number"),
}


def test_unreadable_deliveries_quarantine_only_that_practice(practice, delivered):
    _each_fails_alone(practice, delivered, UNREADABLE)


def test_schema_drift_fails_the_batch(practice, delivered):
    _each_fails_alone(practice, delivered, DRIFT)


def _each_fails_alone(practice, delivered, cases):
    feed, cfg, canonical, inbox = practice
    before, state = _versions(cfg), ledger.PracticeState.load(cfg.state, ODS)
    ids = collect_identifiers(delivered[0] / "sources")
    for n, (case, (corrupt, cause)) in enumerate(cases.items(), start=2):
        paths = _delta(canonical, inbox, f"202601{n:02d}020000")
        corrupt(_obs_file(paths))
        with pytest.raises(SourceError) as err:
            pipeline.extract(feed, cfg, f"broken-{n}")
        message = str(err.value)
        assert message.startswith(f"practice {ODS}: stage extract: file {file_token(_obs_file(paths).name)}"), case
        assert cause in message, (case, message)
        assert not any(p.exists() for p in paths), case            # the whole delivery left the inbox ...
        moved = sorted((cfg.quarantined_deliveries / ODS).glob(f"*/{_obs_file(paths).name}"))
        assert len(moved) == 1 and (moved[0].parent / "REASON.json").exists(), case   # ... into quarantine
        assert scan_text(message, ids, "error") == [], case                 # the error names no identifier
        assert _versions(cfg) == before, case                      # nothing stored changed
        assert ledger.PracticeState.load(cfg.state, ODS).files == state.files, case
    other = Feed(ods_code=OTHER, name="Other", location=str(delivered[0] / "sources" / OTHER))
    assert pipeline.run_practice(other, cfg, "other", today=TODAY)["status"] == "committed"
    assert store.read_table(cfg.store, "patients", OTHER).num_rows > 0


def _delivered_twice(practice):
    """A delta committed, then the same files again under a later stamp."""
    feed, cfg, canonical, inbox = practice
    first = _delta(canonical, inbox, "20260102020000")
    assert pipeline.run_practice(feed, cfg, "d1", today=TODAY)["status"] == "committed"
    after_first, versions = store.read_table(cfg.store, "observations", ODS), _versions(cfg)
    # the same files again under another delivery stamp: skipped, nothing read or written
    for p in first:
        p.rename(p.with_name(p.name.replace("20260102020000", "20260103020000")))
    again = pipeline.run_practice(feed, cfg, "d2", today=TODAY)
    assert again["status"] == "unchanged"
    assert {s["duplicate_of"] for s in again["duplicates_skipped"]} == {file_token(_obs_file(first).name)}
    assert _versions(cfg) == versions
    return after_first


def test_duplicate_and_renamed_deliveries_are_skipped(practice):
    _delivered_twice(practice)
    feed, cfg, _, _ = practice
    assert pipeline.run_practice(feed, cfg, "d2-again", today=TODAY)["status"] == "unchanged"


def test_a_corrected_resubmission_replaces_the_delivery(practice):
    after_first = _delivered_twice(practice)
    feed, cfg, canonical, inbox = practice
    # a corrected resubmission (same name, new content) is read and replaces the earlier values
    obs = canonical["observations"].slice(0, 20)
    fixed = obs.set_column(obs.schema.get_field_index("value"), "value", pc.add(obs["value"], 5.0))
    tables = {t: canonical[t].slice(0, 0) for t in TABLES}
    tables["observations"] = fixed
    write_delivery(tables, inbox, ODS, DIALECT, "20260103020000")
    corrected = pipeline.run_practice(feed, cfg, "d3", today=TODAY)
    assert corrected["status"] == "committed" and corrected["source"]["deliveries"] == ["20260103020000"]
    now = store.read_table(cfg.store, "observations", ODS)
    assert now.num_rows == after_first.num_rows
    pairs = after_first.select(["record_id", "value"]).join(now.select(["record_id", "value"]), "record_id",
                                                            right_suffix="_now")
    changed = pairs.filter(pc.fill_null(pc.not_equal(pairs["value"], pairs["value_now"]), False))
    assert changed.num_rows > 0
    for before_value, now_value in zip(changed["value"].to_pylist(), changed["value_now"].to_pylist(), strict=True):
        assert now_value - before_value == pytest.approx(3.0)  # +5 from the source values, not +2



def _offsets(cfg, baseline) -> dict[float, int]:
    """How the store's observation values differ from the baseline's: offset -> number of records."""
    now = store.read_table(cfg.store, "observations", ODS).select(["record_id", "value"])
    pairs = baseline.select(["record_id", "value"]).join(now, "record_id", right_suffix="_now")
    out: dict[float, int] = {}
    for before, after in zip(pairs["value"].to_pylist(), pairs["value_now"].to_pylist(), strict=True):
        if before is not None and after is not None:
            offset = round(after - before, 6)
            out[offset] = out.get(offset, 0) + 1
    return {k: v for k, v in out.items() if k}


def _amended(canonical) -> int:
    """How many of the observations a delta amends carry a value."""
    return pc.count(canonical["observations"].slice(0, 20)["value"]).as_py()


def test_later_deliveries_are_held_while_a_quarantined_one_is_missing(practice, delivered):
    """Incremental deliveries apply in order with no gap: were the newer one applied first, the corrected
    older one would later overwrite its newer versions."""
    feed, cfg, canonical, inbox = practice
    baseline, versions = store.read_table(cfg.store, "observations", ODS), _versions(cfg)
    state = ledger.PracticeState.load(cfg.state, ODS)
    _truncate(_obs_file(_delta(canonical, inbox, "20260102020000", add=2.0)))
    with pytest.raises(SourceError, match="truncated"):
        pipeline.extract(feed, cfg, "broken")
    newer = _delta(canonical, inbox, "20260103020000", add=7.0)
    with pytest.raises(SourceError) as held:
        pipeline.run_practice(feed, cfg, "held", today=TODAY)
    message = str(held.value)
    assert message.startswith(f"practice {ODS}: stage extract: delivery 20260102020000 was quarantined ("), message
    assert "1 later delivery (20260103020000) is held" in message and '{"force": true}' in message
    assert scan_text(message, collect_identifiers(delivered[0] / "sources"), "error") == []
    assert all(p.exists() for p in newer)                            # held in the inbox, not quarantined
    assert _versions(cfg) == versions and ledger.PracticeState.load(cfg.state, ODS).files == state.files
    _delta(canonical, inbox, "20260102020000", add=2.0)              # the corrected delivery, same stamp
    done = pipeline.run_practice(feed, cfg, "in-order", today=TODAY)
    assert done["status"] == "committed" and done["source"]["deliveries"] == ["20260102020000", "20260103020000"]
    assert _offsets(cfg, baseline) == {7.0: _amended(canonical)}     # the newest version of each record


def test_a_delivery_older_than_one_applied_is_quarantined_as_late(practice):
    feed, cfg, canonical, inbox = practice
    baseline = store.read_table(cfg.store, "observations", ODS)
    _delta(canonical, inbox, "20260103020000", add=7.0)
    assert pipeline.run_practice(feed, cfg, "newer", today=TODAY)["status"] == "committed"
    versions, state = _versions(cfg), ledger.PracticeState.load(cfg.state, ODS)
    late = _delta(canonical, inbox, "20260102020000", add=2.0)
    with pytest.raises(SourceError) as err:
        pipeline.extract(feed, cfg, "late")
    assert "delivery 20260102020000 is older than delivery 20260103020000, which was applied already" in str(err.value)
    assert not any(p.exists() for p in late)
    moved = sorted((cfg.quarantined_deliveries / ODS).glob("*/REASON.json"))
    assert len(moved) == 1 and '"delivery": "20260102020000"' in moved[0].read_text()
    assert _versions(cfg) == versions and ledger.PracticeState.load(cfg.state, ODS).files == state.files
    assert _offsets(cfg, baseline) == {7.0: _amended(canonical)}
    # the late delivery is not a gap: the next delivery applies
    _delta(canonical, inbox, "20260104020000", add=9.0)
    assert pipeline.run_practice(feed, cfg, "next", today=TODAY)["status"] == "committed"
    assert _offsets(cfg, baseline) == {9.0: _amended(canonical)}
    # put back, it is applied in its place by a forced rebuild from every delivery in the inbox
    for path in moved[0].parent.glob("*.csv"):
        path.rename(inbox / path.name)
    rebuilt = pipeline.run_practice(feed, cfg, "rebuild", today=TODAY, force=True)
    assert rebuilt["status"] == "committed" and rebuilt["source"]["mode"] == "baseline"
    assert _offsets(cfg, baseline) == {9.0: _amended(canonical)}
