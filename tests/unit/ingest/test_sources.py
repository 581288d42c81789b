"""Source adapters on generated data: flat files in two dialects and a supplier database give the same curated
store as the FHIR bundles of the same practice; incremental deliveries amend, delete and opt out correctly."""

import datetime as dt
import uuid

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from gpdata import pipeline, settings, store
from gpdata.ingest import ledger
from gpdata.ingest.dialects import load_dialect
from gpdata.ingest.feeds import Feed
from gpdata.ingest.sources.flatfile import list_files, read_file
from gpdata.model import POSITION, TABLES
from gpdata.synth import exports, generate
from tests.factory import file_token

TODAY = dt.date(2026, 1, 1)
ODS = "A81001"


@pytest.fixture
def generated(home):
    truths = generate(home, n_practices=1, n_patients=60, seed=11, ods_codes=[ODS])
    return home / "sources" / ODS, truths[0]


def _feed(fmt: str, location=None, **kw) -> Feed:
    return Feed(ods_code=ODS, name="Test practice", supplier="test", format=fmt,
                location=str(location) if location else None, **kw)


def _store_rows(cfg) -> dict[str, pa.Table]:
    out = {}
    for name in TABLES:
        t = store.read_table(cfg.store, name, ODS)
        key = store.KEYS[name]
        out[name] = t.sort_by([(key, "ascending"), *[(c, "ascending") for c in t.column_names if c != key
                                                     and not pa.types.is_nested(t.schema.field(c).type)]])
    return out


def _without_position(table: pa.Table) -> pa.Table:
    return table.drop_columns([c for c in (*POSITION, "_deleted") if c in table.column_names])


@pytest.mark.parametrize("dialect", ["emis_csv", "tpp_pipe"])
def test_flatfile_dialect_reads_the_same_records_as_fhir(generated, tmp_path, dialect):
    fhir_folder, _ = generated
    canonical = exports.canonical_of(fhir_folder, ODS)
    out = tmp_path / dialect
    paths = exports.export_flatfile(fhir_folder, out, ODS, dialect)
    d = load_dialect(dialect)
    assert len(paths) == len(TABLES) and all(d.file_regex.match(p.name) for p in paths)
    first = paths[0].read_text().splitlines()[0]
    assert (d.delimiter in first) and first.count(d.delimiter) == len(d.columns("patients")) - 1
    for f in list_files(out, d, ODS):
        got = _without_position(read_file(f, d, ODS))
        assert got.equals(_without_position(canonical[f.table])), f"{dialect} {f.table}"


def test_the_two_dialects_differ_in_columns_delimiter_dates_and_code_labels():
    emis, tpp = load_dialect("emis_csv"), load_dialect("tpp_pipe")
    assert emis.delimiter != tpp.delimiter and emis.date_format != tpp.date_format
    assert set(emis.columns("observations")).isdisjoint(tpp.columns("observations"))
    assert set(emis.code_systems).isdisjoint(tpp.code_systems)


@pytest.mark.parametrize("dialect", ["emis_csv", "tpp_pipe"])
def test_flatfile_practice_gives_the_same_store_as_fhir(generated, home, tmp_path, monkeypatch, dialect):
    fhir_folder, truth = generated
    cfg = settings.load()
    pipeline.run_practice(_feed("fhir", fhir_folder), cfg, "fhir", today=TODAY)
    from_fhir = _store_rows(cfg)
    monkeypatch.setenv("GPDATA_HOME", str(tmp_path / "flat"))
    monkeypatch.setenv("GPDATA_INBOX_ROOT", str(tmp_path))  # deliveries beside this home
    (tmp_path / "flat" / "reference").mkdir(parents=True)
    (tmp_path / "flat" / "reference" / "postcode_lsoa.csv").write_bytes(cfg.postcode_lookup.read_bytes())
    flat_cfg = settings.load()
    out = tmp_path / dialect
    exports.export_flatfile(fhir_folder, out, ODS, dialect)
    counts = pipeline.run_practice(_feed("flatfile", out, dialect=dialect), flat_cfg, "flat", today=TODAY)
    assert counts["status"] == "committed"
    assert counts["type1_optout"]["patients_excluded"] == truth.n_optout_active
    for name, table in _store_rows(flat_cfg).items():
        assert table.equals(from_fhir[name]), name


def test_delivery_unchanged_is_skipped_and_a_renamed_copy_is_not_read_twice(generated, home, tmp_path):
    fhir_folder, _ = generated
    cfg = settings.load()
    out = tmp_path / "emis"
    paths = exports.export_flatfile(fhir_folder, out, ODS, "emis_csv")
    feed = _feed("flatfile", out, dialect="emis_csv", mode="incremental")
    first = pipeline.run_practice(feed, cfg, "r1", today=TODAY)
    before = _store_rows(cfg)
    again = pipeline.run_practice(feed, cfg, "r2", today=TODAY)
    assert again["status"] == "unchanged" and again["last_committed_run"] == "r1"
    # the same delivery again under a later stamp: every file is a duplicate, nothing is read
    for p in paths:
        p.rename(p.with_name(p.name.replace(exports.FIRST_STAMP, "20260102020000")))
    third = pipeline.run_practice(feed, cfg, "r3", today=TODAY)
    assert third["status"] == "unchanged"
    skipped = {s["name"]: s["duplicate_of"] for s in third["duplicates_skipped"]}
    renamed = {file_token(p.name.replace(exports.FIRST_STAMP, "20260102020000")): file_token(p.name) for p in paths}
    assert skipped and skipped == renamed
    assert _store_rows(cfg) == before and first["status"] == "committed"


def _baseline_of(after, tmp_path, monkeypatch, cfg) -> dict[str, pa.Table]:
    """The store a single baseline delivery of the final state gives, in a home of its own."""
    monkeypatch.setenv("GPDATA_HOME", str(tmp_path / "full"))
    monkeypatch.setenv("GPDATA_INBOX_ROOT", str(tmp_path))  # deliveries beside this home
    (tmp_path / "full" / "reference").mkdir(parents=True)
    (tmp_path / "full" / "reference" / "postcode_lsoa.csv").write_bytes(cfg.postcode_lookup.read_bytes())
    full_cfg = settings.load()
    from gpdata.ingest.sources.flatfile import write_delivery

    write_delivery(after, tmp_path / "full_delivery", ODS, load_dialect("emis_csv"), exports.FIRST_STAMP)
    pipeline.run_practice(_feed("flatfile", tmp_path / "full_delivery", dialect="emis_csv"), full_cfg, "full",
                          today=TODAY)
    return _store_rows(full_cfg)


def _check_increment(merged, expected, inc: exports.Increment, patients_before):
    from gpdata.privacy.deid import Pseudonymiser
    from gpdata.privacy.keys import load_master_key

    pseudo = Pseudonymiser(load_master_key())
    rid = lambda ids: pseudo(pa.array(ids, pa.string()), "record_id")  # noqa: E731
    obs, meds = merged["observations"], merged["medications"]
    assert not pc.any(pc.is_in(obs["record_id"], value_set=rid(inc.deleted_ids["observations"]))).as_py()
    assert not pc.any(pc.is_in(meds["record_id"], value_set=rid(inc.deleted_ids["medications"]))).as_py()
    new = pc.is_in(rid(inc.new_ids["observations"]), value_set=obs["record_id"])
    assert pc.sum(new).as_py() > len(inc.new_ids["observations"]) // 2
    amended = obs.filter(pc.is_in(obs["record_id"], value_set=rid(inc.amended_ids["observations"])))
    assert amended.num_rows > len(inc.amended_ids["observations"]) // 2
    # the patient who dissented in the increment is gone from every table
    assert merged["patients"].num_rows == patients_before - 1
    # and the merged store equals a baseline of the final state, table by table (amended values included)
    for name, table in expected.items():
        assert table.equals(merged[name]), name


def test_incremental_flatfile_delivery_amends_deletes_and_opts_out(generated, home, tmp_path, monkeypatch):
    fhir_folder, _ = generated
    cfg = settings.load()
    out = tmp_path / "tpp"
    canonical = exports.canonical_of(fhir_folder, ODS)
    d = load_dialect("tpp_pipe")
    from gpdata.ingest.sources.flatfile import write_delivery

    write_delivery(canonical, out, ODS, d, exports.FIRST_STAMP)
    feed = _feed("flatfile", out, dialect="tpp_pipe", mode="incremental")
    pipeline.run_practice(feed, cfg, "base", today=TODAY)
    patients_before = store.read_table(cfg.store, "patients", ODS).num_rows
    inc = exports.make_increment(canonical)
    write_delivery(inc.changed, out, ODS, d, "20260102020000", deleted=inc.deleted)
    counts = pipeline.run_practice(feed, cfg, "delta", today=TODAY)
    assert counts["source"]["mode"] == "incremental" and counts["source"]["deliveries"] == ["20260102020000"]
    assert counts["deleted_keys"] == {"observations": len(inc.deleted_ids["observations"]),
                                      "medications": len(inc.deleted_ids["medications"])}
    merged = _store_rows(cfg)
    expected = _baseline_of(exports.apply_increment(canonical, inc), tmp_path, monkeypatch, cfg)
    _check_increment(merged, expected, inc, patients_before)


def test_failed_incremental_run_does_not_move_the_ledger(generated, home, tmp_path):
    fhir_folder, _ = generated
    cfg = settings.load()
    out = tmp_path / "emis"
    exports.export_flatfile(fhir_folder, out, ODS, "emis_csv")
    feed = _feed("flatfile", out, dialect="emis_csv", mode="incremental")
    pipeline.extract(feed, cfg, "r1")
    pipeline.check(feed, cfg, "r1", today=TODAY)
    state = ledger.PracticeState.load(cfg.state, ODS)
    assert not state.files and not state.baselined  # extracted and checked, but the commit never ran
    pipeline.commit(feed, cfg, "r1")
    assert len(ledger.PracticeState.load(cfg.state, ODS).files) == len(TABLES)


@pytest.fixture
def supplier_db():
    import psycopg

    name = f"gpdata_test_supplier_{uuid.uuid4().hex[:8]}"
    admin = "postgresql://postgres@127.0.0.1:5432/postgres"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql://postgres@127.0.0.1:5432/{name}"
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_sql_supplier_database_baseline_then_watermark_increments(generated, home, tmp_path, supplier_db,
                                                                  monkeypatch):
    fhir_folder, truth = generated
    cfg = settings.load()
    canonical = exports.canonical_of(fhir_folder, ODS)
    exports.load_supplier_db(supplier_db, ODS, canonical)
    exports.load_supplier_db(supplier_db, "B82002", canonical)  # another practice in the same database
    monkeypatch.setenv("AIRFLOW_CONN_SUPPLIER_TEST", supplier_db)
    feed = _feed("sql", connection_id="supplier_test", dialect="supplier_sql", mode="incremental")
    base = pipeline.run_practice(feed, cfg, "base", today=TODAY)
    assert base["status"] == "committed" and base["source"]["mode"] == "baseline"
    assert base["patients_read"] == canonical["patients"].num_rows
    assert base["type1_optout"]["patients_excluded"] == truth.n_optout_active
    watermark = ledger.PracticeState.load(cfg.state, ODS).watermark
    assert watermark and watermark.startswith("2026-01-01T02:00:00")
    before = _store_rows(cfg)
    # nothing changed: only rows within the watermark overlap are read again, and merging them changes nothing
    again = pipeline.run_practice(feed, cfg, "nothing", today=TODAY)
    assert again["source"]["mode"] == "incremental" and _store_rows(cfg) == before
    patients_before = store.read_table(cfg.store, "patients", ODS).num_rows
    inc = exports.make_increment(canonical)
    exports.apply_to_supplier_db(supplier_db, ODS, inc, at=dt.datetime(2026, 1, 2, 2, 0, tzinfo=dt.UTC))
    delta = pipeline.run_practice(feed, cfg, "delta", today=TODAY)
    assert delta["source"]["mode"] == "incremental"
    # rows updated within the watermark overlap (the baseline's, at the watermark) are read again as well
    assert delta["records_read"]["observations"] >= inc.changed["observations"].num_rows
    assert delta["deleted_by_source"] == {"observations": len(inc.deleted_ids["observations"]),
                                          "medications": len(inc.deleted_ids["medications"])}
    assert ledger.PracticeState.load(cfg.state, ODS).watermark.startswith("2026-01-02T02:00:00")
    merged = _store_rows(cfg)
    expected = _baseline_of(exports.apply_increment(canonical, inc), tmp_path, monkeypatch, cfg)
    _check_increment(merged, expected, inc, patients_before)
