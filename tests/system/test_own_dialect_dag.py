"""A data engineer's own dialect, from a temporary GPDATA_DIALECTS_DIR, with no code change: two tiny practices
(one FHIR, one delivering in that dialect) through `airflow dags test gpdata_extract`."""

import os
from pathlib import Path

import pytest

from gpdata import settings, store
from gpdata.ingest.dialects import load_dialect
from gpdata.ops.airflow_env import airflow_env
from gpdata.ops.leakscan import collect_identifiers, scan_text, scan_tree
from gpdata.privacy import keys
from gpdata.synth import generate
from gpdata.synth.feeds import write_synthetic_feeds
from tests.support.airflow import run_airflow

pytestmark = pytest.mark.system

# Semicolon-separated, a folder per delivery named by practice and date, compact dates, sex as words, year and
# month of birth, a 1/0 deletion flag, a constant code system per table, extra columns ignored.
OWN_DIALECT = """
name: semicolon_export
description: A data engineer's own dialect, outside the code tree
kind: flatfile
delimiter: ";"
file_name: "{source}.csv"
stamp_from: folder
folder_name: "{practice}-{stamp}"
stamp_format: "%Y-%m-%d"
date_format: "%Y%m%d"
deleted: {column: IsDeleted, when_deleted: "1", otherwise: "0"}
unmapped_columns: ignore
tables:
  patients:
    source: people
    columns:
      source_id: PersonId
      nhs_number: NhsNo
      gender: {column: Sex, values: {Male: male, Female: female, Other: other, Unknown: unknown}}
      birth_date: {year: BirthYear, month: BirthMonth}
      postcode: Postcode
      registration_date: Registered
  practitioners:
    source: staff
    columns: {source_id: StaffId, sds_user_id: SdsId, role_code: RoleCode}
  observations:
    source: findings
    columns: {source_id: FindingId, patient_ref: PersonId, practitioner_ref: StaffId, event_date: Recorded,
              code_system: {column: Scheme, values: {S: snomed, R: readv2, C: ctv3}}, code: Code, value: Value,
              unit: Unit}
  medications:
    source: prescriptions
    code_system: dmd
    columns: {source_id: PrescriptionId, patient_ref: PersonId, event_date: Issued, code: Product,
              medication_type: {column: Kind, values: {A: authorisation, I: issue}}, quantity: Quantity}
"""


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    home = tmp_path_factory.mktemp("own_dialect_home")
    dialects = tmp_path_factory.mktemp("own_dialects")
    (dialects / "semicolon_export.yaml").write_text(OWN_DIALECT)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "GPDATA"))}
    env["GPDATA_SECRETS_DIR"] = os.environ["GPDATA_SECRETS_DIR"]  # the test session's, never the checkout's
    env.update({"GPDATA_HOME": str(home), "GPDATA_FEEDS_DIR": str(home / "feeds"),
                "GPDATA_DIALECTS_DIR": str(dialects)})
    before = os.environ.get("GPDATA_DIALECTS_DIR")
    os.environ["GPDATA_DIALECTS_DIR"] = str(dialects)  # the generator exports with it too
    try:
        cfg = settings.load(env)
        truths = generate(home, n_practices=2, n_patients=25, events_per_patient=10, dirty_fraction=0.0,
                          optout_fraction=0.1, seed=3)
        write_synthetic_feeds([t.ods_code for t in truths], cfg.sources, cfg.feeds_dir,
                              formats=["fhir", "semicolon_export"])
        dialect = load_dialect("semicolon_export")
    finally:
        if before is None:
            os.environ.pop("GPDATA_DIALECTS_DIR", None)
        else:
            os.environ["GPDATA_DIALECTS_DIR"] = before
    keys.write_development_key(cfg.secrets / "dev.key")
    env.update(airflow_env(cfg, cfg.secrets / "dev.key"))
    outputs = [run_airflow(env, "db", "migrate"), run_airflow(env, "dags", "test", "gpdata_extract")]
    return {"cfg": cfg, "truths": truths, "outputs": outputs, "dialect": dialect}


def test_the_own_dialect_practice_runs_end_to_end_throughrun_airflow(run):
    cfg, truths, dialect = run["cfg"], run["truths"], run["dialect"]
    assert dialect.source_file.parent != Path(settings.DEFAULT_DIALECTS_DIR)
    manifests = store.latest_manifests(cfg.manifests)
    own = truths[1].ods_code
    assert sorted(manifests) == sorted(t.ods_code for t in truths)
    for practice, m in manifests.items():
        assert m["status"] == "committed", (practice, m.get("status"))
    m = manifests[own]
    assert m["source"]["format"] == "flatfile" and m["source"]["mode"] == "baseline"
    assert m["source"]["unmapped_columns"] == {t: ["extractdate", "pracid"] for t in dialect.tables}
    assert m["patients_read"] == truths[1].resources["Patient"]
    assert m["type1_optout"]["patients_excluded"] == truths[1].n_optout_active
    counts = store.row_counts(cfg.store, own)
    assert all(counts[t] > 0 for t in dialect.tables), counts
    assert all(counts[t] == 0 for t in counts if t not in dialect.tables and t in m["committed_rows"]), counts


def test_no_identifier_reaches_the_store_or_airflow_output(run):
    cfg = run["cfg"]
    ids = collect_identifiers(cfg.sources)
    findings = scan_tree([cfg.store, cfg.airflow_home / "logs"], ids)
    for i, output in enumerate(run["outputs"]):
        findings += scan_text(output, ids, f"airflow output {i}")
    assert findings == [], [str(f) for f in findings[:20]]
