"""A supplier database by configuration alone: per-table views and query templates (joins, computed columns), no
practice column (one database per practice), a snapshot table without watermark or deletion column; errors name
the table and the column. Against the machine's PostgreSQL, in a database of its own (tests.unit.ingest.test_sources
``supplier_db``)."""

import datetime as dt

import psycopg
import pyarrow as pa
import pytest
import yaml

from gpdata import pipeline, settings, store
from gpdata.errors import ConfigError, SourceError
from gpdata.ingest.dialects import load_dialect
from gpdata.ingest.feeds import Feed
from gpdata.model import TABLES
from gpdata.synth import exports, generate
from tests.unit.ingest.test_sources import supplier_db  # noqa: F401 - the fixture

TODAY = dt.date(2026, 1, 1)
ODS = "A81001"

VIEWS = """
CREATE SCHEMA practice;
CREATE VIEW practice.patients AS SELECT patient_id AS id, nhs_number AS nhs, date_of_birth AS dob, sex, postcode,
    ethnic_category, registered_on, died_on, usual_gp_id, updated_at AS changed, deleted AS removed
    FROM gp_supplier.patient;
CREATE VIEW practice.staff AS SELECT staff_id, sds_user_id, role_code, role_name FROM gp_supplier.staff;
CREATE TABLE practice.schemes (scheme_no integer PRIMARY KEY, system text NOT NULL, label text NOT NULL);
INSERT INTO practice.schemes VALUES (1, 'snomed', 'SNOMED'), (2, 'readv2', 'READ2'), (3, 'ctv3', 'CTV3'),
    (4, 'dmd', 'DMD');
CREATE VIEW practice.observations AS SELECT o.*, s.scheme_no FROM gp_supplier.observation o
    LEFT JOIN practice.schemes s ON s.system = o.code_scheme;
"""

DIALECT = {
    "name": "practice_views",
    "description": "One practice's database: views without a practice column, queries joining a code-scheme table",
    "kind": "sql",
    "schema": "practice",
    "updated_column": "changed",
    "deleted": {"column": "removed"},
    "code_systems": {"SNOMED": "snomed", "READ2": "readv2", "CTV3": "ctv3", "DMD": "dmd"},
    "tables": {
        "patients": {"source": "patients", "columns": {
            "source_id": "id", "nhs_number": "nhs", "birth_date": "dob", "gender": "sex", "postcode": "postcode",
            "ethnic_category": "ethnic_category", "registration_date": "registered_on", "deceased_date": "died_on",
            "gp_ref": "usual_gp_id"}},
        "practitioners": {"source": "staff", "snapshot": True, "columns": {
            "source_id": "staff_id", "sds_user_id": "sds_user_id", "role_code": "role_code",
            "role_name": "role_name"}},
        "observations": {
            "query": "SELECT o.observation_id, o.patient_id, o.staff_id, o.effective_date, s.label AS scheme, "
                     "o.code, o.category, o.numeric_value, o.numeric_unit, o.updated_at AS changed, "
                     "o.deleted AS removed FROM practice.observations o LEFT JOIN practice.schemes s "
                     "ON s.scheme_no = o.scheme_no WHERE o.updated_at > %(watermark)s",
            "columns": {"source_id": "observation_id", "patient_ref": "patient_id", "practitioner_ref": "staff_id",
                        "event_date": "effective_date", "code_system": "scheme", "code": "code",
                        "category": "category", "value": "numeric_value", "unit": "numeric_unit"}},
        "medications": {
            "query": "SELECT m.medication_id, m.patient_id, m.staff_id, m.effective_date, m.code, "
                     "lower(m.medication_type) AS kind, m.status, m.quantity * 1.0 AS qty, m.quantity_unit, "
                     "m.authorisation_id, m.updated_at, m.deleted FROM gp_supplier.medication m",
            "code_system": "dmd", "watermark": "updated_at", "deleted": {"column": "deleted"},
            "columns": {"source_id": "medication_id", "patient_ref": "patient_id", "practitioner_ref": "staff_id",
                        "event_date": "effective_date", "code": "code", "medication_type": "kind",
                        "status": "status", "quantity": "qty", "quantity_unit": "quantity_unit",
                        "authorisation_ref": "authorisation_id"}},
    },
}


@pytest.fixture
def practice_db(home, supplier_db, monkeypatch, tmp_path):  # noqa: F811
    generate(home, n_practices=1, n_patients=40, seed=5, ods_codes=[ODS])
    canonical = exports.canonical_of(home / "sources" / ODS, ODS)
    exports.load_supplier_db(supplier_db, ODS, canonical)
    with psycopg.connect(supplier_db, autocommit=True) as conn:
        conn.execute(VIEWS)
    own = tmp_path / "dialects"
    own.mkdir()
    monkeypatch.setenv("GPDATA_DIALECTS_DIR", str(own))
    monkeypatch.setenv("AIRFLOW_CONN_PRACTICE_DB", supplier_db)
    return {"uri": supplier_db, "dialects": own, "canonical": canonical, "fhir": home / "sources" / ODS}


def _write(folder, doc, name="practice_views"):
    (folder / f"{name}.yaml").write_text(yaml.safe_dump({**doc, "name": name}, sort_keys=False))


def _store(cfg, tables):
    return {n: store.read_table(cfg.store, n, ODS).sort_by(store.KEYS[n]) for n in tables}


def test_views_and_queries_without_a_practice_column_load_like_fhir(practice_db, home, tmp_path, monkeypatch):
    _write(practice_db["dialects"], DIALECT)
    cfg = settings.load()
    fhir = pipeline.run_practice(Feed(ods_code=ODS, name="F", format="fhir", location=str(practice_db["fhir"])),
                                 cfg, "fhir", today=TODAY)
    assert fhir["type1_optout"]["patients_excluded"] > 0
    carried = list(DIALECT["tables"])
    from_fhir = _store(cfg, carried)
    monkeypatch.setenv("GPDATA_HOME", str(tmp_path / "sql_home"))
    (tmp_path / "sql_home" / "reference").mkdir(parents=True)
    (tmp_path / "sql_home" / "reference" / "postcode_lsoa.csv").write_bytes(cfg.postcode_lookup.read_bytes())
    sql_cfg = settings.load()
    feed = Feed(ods_code=ODS, name="S", format="sql", connection_id="practice_db", dialect="practice_views",
                mode="incremental")
    base = pipeline.run_practice(feed, sql_cfg, "base", today=TODAY)
    assert base["status"] == "committed" and base["source"]["mode"] == "baseline"
    assert base["type1_optout"]["patients_excluded"] == fhir["type1_optout"]["patients_excluded"]
    got = _store(sql_cfg, TABLES)
    for name in TABLES:
        if name in carried:
            assert got[name].equals(from_fhir[name]), name
        else:
            assert got[name].num_rows == 0, name
    # nothing changed: rows within the watermark overlap and the snapshot table are read again; nothing moves
    again = pipeline.run_practice(feed, sql_cfg, "again", today=TODAY)
    assert again["source"]["mode"] == "incremental" and _store(sql_cfg, TABLES) == got
    inc = exports.make_increment(practice_db["canonical"])
    exports.apply_to_supplier_db(practice_db["uri"], ODS, inc, at=dt.datetime(2026, 1, 2, 2, 0, tzinfo=dt.UTC))
    delta = pipeline.run_practice(feed, sql_cfg, "delta", today=TODAY)
    assert delta["source"]["mode"] == "incremental"
    assert delta["deleted_by_source"] == {"observations": len(inc.deleted_ids["observations"]),
                                          "medications": len(inc.deleted_ids["medications"])}
    assert delta["records_read"]["practitioners"] == practice_db["canonical"]["practitioners"].num_rows


@pytest.mark.parametrize("change, message", [
    ({"observations": {"query": "SELECT o.*, o.sensitive_flag FROM practice.observations o"}},
     "table observations (observations (query)): UndefinedColumn: column o.sensitive_flag does not exist"),
    ({"patients": {"columns": {"source_id": "id", "nhs_number": "nhs_no"}}},
     "table patients (practice.patients): no column nhs_no"),
    ({"medications": {"query": DIALECT["tables"]["medications"]["query"].replace("m.deleted", "false AS gone")}},
     "table medications (medications (query)): no column deleted"),
])
def test_a_database_error_names_its_table_and_column(practice_db, home, change, message):
    doc = yaml.safe_load(yaml.safe_dump(DIALECT))
    for table, fields in change.items():
        doc["tables"][table].update(fields)
    _write(practice_db["dialects"], doc)
    feed = Feed(ods_code=ODS, name="S", format="sql", connection_id="practice_db", dialect="practice_views")
    with pytest.raises(SourceError) as err:
        pipeline.extract(feed, settings.load(), "r")
    assert message in str(err.value), str(err.value)


@pytest.mark.parametrize("change, message", [
    ({"practitioners": {"watermark": "changed"}}, "table practitioners: a snapshot table has no watermark"),
    ({"observations": {"query": "DELETE FROM practice.schemes"}}, "query must be one SELECT"),
    ({"observations": {"query": "SELECT * FROM x WHERE a = %(ods)s"}}, "unknown parameter %(ods)s"),
    ({"patients": {"source": "patients; drop"}}, "source: not a plain SQL name"),
    ({"patients": {"query": "SELECT 1"}}, "give source (a table or view) or query, not both"),
])
def test_a_wrong_sql_dialect_is_refused_naming_the_table(tmp_path, monkeypatch, change, message):
    doc = yaml.safe_load(yaml.safe_dump(DIALECT))
    for table, fields in change.items():
        doc["tables"][table].update(fields)
    monkeypatch.setenv("GPDATA_DIALECTS_DIR", str(tmp_path))
    _write(tmp_path, doc)
    with pytest.raises(ConfigError) as err:
        load_dialect("practice_views")
    assert "practice_views.yaml" in str(err.value) and message in str(err.value), str(err.value)


def test_the_shipped_sql_dialect_reads_the_same_columns_as_before():
    d = load_dialect("supplier_sql")
    assert d.practice_column == "practice_code" and all(d.watermark_of(t) == "updated_at" for t in TABLES)
    assert d.columns("patients")[-1] == "deleted" and not any(t.snapshot for t in d.tables.values())
    assert pa.types.is_string(pa.string())
