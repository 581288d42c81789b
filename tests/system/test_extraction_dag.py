"""End to end through Airflow itself: two tiny synthetic practices, `airflow dags test`, twice.

Proves: every curated table holds rows for each practice; counts match the generator's ground truth;
a second run changes nothing; no identifier from the sources appears in the store, the manifests or the
Airflow output and logs.
"""

import datetime as dt
import json
import os
from pathlib import Path

import pytest

from gpdata import audit, settings, store
from gpdata.model import TABLES
from gpdata.ops.airflow_env import airflow_env
from gpdata.ops.leakscan import collect_identifiers, scan_text, scan_tree
from gpdata.privacy import keys, ndop
from gpdata.privacy.deid import Pseudonymiser
from gpdata.store import release
from gpdata.synth import generate
from gpdata.synth.feeds import write_synthetic_feeds
from tests.support.airflow import run_airflow

pytestmark = pytest.mark.system


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    home = tmp_path_factory.mktemp("gpdata_home")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "GPDATA"))}
    env["GPDATA_SECRETS_DIR"] = os.environ["GPDATA_SECRETS_DIR"]  # the test session's, never the checkout's
    env.update({"GPDATA_HOME": str(home), "GPDATA_FEEDS_DIR": str(home / "feeds")})
    cfg = settings.load(env)
    truths = generate(home, n_practices=3, n_patients=80, events_per_patient=30, dirty_fraction=0.01,
                      optout_fraction=0.1, seed=7)
    # one practice per source format: FHIR bundles, an EMIS-like CSV export, a TPP-like pipe export
    write_synthetic_feeds([t.ods_code for t in truths], cfg.sources, cfg.feeds_dir,
                          formats=["fhir", "emis_csv", "tpp_pipe"])
    # a deliberately broken feed file beside them (a misspelt field): it disables itself only
    (cfg.feeds_dir / "Y99999.yaml").write_text("ods_code: Y99999\nname: broken\nlocaton: nowhere\n")
    keys.write_development_key(cfg.secrets / "dev.key")
    env.update(airflow_env(cfg, cfg.secrets / "dev.key"))
    process = pytest.MonkeyPatch()  # what this process does in-line (the list's ingest) uses the same home
    for name, value in env.items():
        if name.startswith("GPDATA_"):
            process.setenv(name, value)
    outputs = [run_airflow(env, "db", "migrate")]
    outputs.append(run_airflow(env, "dags", "test", "gpdata_extract"))
    first = {name: store.read_table(cfg.store, name).sort_by("record_id" if name in TABLES[2:] else
                                                              TABLES_KEY[name]) for name in TABLES}
    manifests_first = store.latest_manifests(cfg.manifests)
    outputs.append(run_airflow(env, "dags", "test", "gpdata_extract", "--conf", '{"force": true}'))
    manifests_forced = store.latest_manifests(cfg.manifests)
    outputs.append(run_airflow(env, "dags", "test", "gpdata_extract"))  # nothing new delivered: skipped
    manifests_unchanged = store.latest_manifests(cfg.manifests)
    outputs.append(run_airflow(env, "dags", "test", "gpdata_release"))
    ndop.ingest(cfg.reference / "ndop.csv", cfg.store, keys.load_master_key({"GPDATA_MASTER_KEY_FILE": env[
        "GPDATA_MASTER_KEY_FILE"]}), published=dt.date.today())
    outputs.append(run_airflow(env, "dags", "test", "gpdata_disseminate"))
    yield {"cfg": cfg, "env": env, "outputs": outputs, "first": first, "manifests_first": manifests_first,
           "manifests_forced": manifests_forced, "manifests_unchanged": manifests_unchanged,
           "practices": sorted(t.ods_code for t in truths), "truths": {t.ods_code: t for t in truths}}
    process.undo()


TABLES_KEY = {"patients": "patient_pid", "practitioners": "practitioner_pid"}


def test_every_curated_table_has_rows_for_each_practice(demo):
    """...although a fourth feed file is broken: the DAG imported and the other practices committed."""
    cfg = demo["cfg"]
    assert len(demo["practices"]) == 3
    assert "Y99999.yaml" in demo["outputs"][1] and "locaton" in demo["outputs"][1]  # the run names the file
    for practice in demo["practices"]:
        counts = store.row_counts(cfg.store, practice)
        assert all(n > 0 for n in counts.values()), (practice, counts)


def test_manifests_agree_with_the_store_and_the_run(demo):
    cfg = demo["cfg"]
    manifests = demo["manifests_forced"]
    assert sorted(manifests) == demo["practices"]
    for practice, m in manifests.items():
        assert m["status"] == "committed"
        assert m["committed_rows"] == store.row_counts(cfg.store, practice)
        assert m["quality"]["passed"]
        truth = demo["truths"][practice]
        # The generator's ground truth: type 1 opt-outs (with re-admissions) and dirty rows, exactly.
        assert m["type1_optout"]["patients_excluded"] == truth.n_optout_active > 0
        assert m["type1_optout"]["patients_readmitted"] == truth.n_optout_withdrawn
        assert m["patients_read"] == truth.resources["Patient"]
        reasons = {}
        for by_reason in m["quality"]["quarantined"].values():
            for reason, n in by_reason.items():
                reasons[reason] = reasons.get(reason, 0) + n
        assert reasons.get("invalid_nhs_number", 0) == truth.dirty["invalid_nhs_number"]
        assert reasons.get("future_date", 0) == truth.dirty["future_date"]
        assert reasons.get("before_birth", 0) == truth.dirty["before_birth"]
        assert reasons.get("invalid_code", 0) == truth.dirty["unknown_code"]
        assert reasons.get("duplicate_record", 0) == truth.dirty["duplicate"]
        assert Path(m["quality"]["data_docs"]).exists()  # Data Docs built; the leak scan below reads them
        q = store.read_table(cfg.store, store.QUARANTINE, practice)
        assert q.num_rows == sum(sum(r.values()) for r in m["quality"]["quarantined"].values())


def test_a_second_run_changes_no_count_and_no_row(demo):
    cfg = demo["cfg"]
    for name, before in demo["first"].items():
        key = "record_id" if name in TABLES[2:] else TABLES_KEY[name]
        assert store.read_table(cfg.store, name).sort_by(key).equals(before), name
    again = demo["manifests_forced"]
    for practice, m in demo["manifests_first"].items():
        assert m["run_id"] != again[practice]["run_id"]
        for field in ("records_read", "type1_optout", "committed_rows", "staged_rows"):
            assert m[field] == again[practice][field], field
        assert m["quality"]["quarantined"] == again[practice]["quality"]["quarantined"]


def test_a_run_with_nothing_new_skips_every_practice(demo):
    forced, unchanged = demo["manifests_forced"], demo["manifests_unchanged"]
    for practice, m in unchanged.items():
        assert m["status"] == "unchanged" and m["last_committed_run"] == forced[practice]["run_id"]
    assert store.latest_manifests(demo["cfg"].manifests) == unchanged  # the release and dissemination ran after
    assert "nothing new delivered since run" in demo["outputs"][3]


def test_empty_plan_lists_and_skipped_chunks_leave_each_run_successful(demo):
    """The first run's baselines run alone (no chunk), the forced run's small deliveries in one chunk (nothing
    alone), the third run's chunk is skipped (nothing new): a list mapped to no task instance and a skip fail no
    run."""
    import sqlite3

    extract, chunk = "practices_001.practice.extract", "practices_001.chunk"
    with sqlite3.connect(demo["cfg"].airflow_home / "airflow.db") as conn:
        runs = conn.execute("select run_id, state from dag_run where dag_id = 'gpdata_extract' order by id").fetchall()
        tis = {(r, t, i): (label, state) for r, t, i, label, state in conn.execute(
            "select run_id, task_id, map_index, rendered_map_index, state from task_instance where task_id in (?, ?)",
            (extract, chunk))}
    assert [state for _, state in runs] == ["success"] * 3
    first, forced, unchanged = (run_id for run_id, _ in runs)
    practices = demo["practices"]
    assert {tis[(first, extract, i)] for i in range(len(practices))} == {(p, "success") for p in practices}
    assert tis[(first, chunk, -1)][1] == "skipped"
    assert tis[(forced, chunk, 0)] == (f"{practices[0]} +{len(practices) - 1}", "success")
    assert tis[(forced, extract, -1)][1] == "skipped"
    assert tis[(unchanged, chunk, 0)][1] == "skipped"


def test_no_identifier_reaches_the_store_manifests_or_airflow_logs(demo):
    cfg = demo["cfg"]
    ids = collect_identifiers(cfg.sources)
    assert ids.counts["nhs_number"] >= 200 and ids.counts["name"] >= 100 and ids.counts["postcode"] >= 100
    pseudo = Pseudonymiser(keys.load_master_key({keys.KEY_FILE_ENV: str(cfg.secrets / "dev.key")}))
    ids.link(lambda nhs: pseudo(nhs, "nhs_number"))
    parquet = list(cfg.store.rglob("*.parquet"))
    assert len(parquet) >= 2 * len(TABLES)  # every table, every practice, and old versions on disk
    assert list((cfg.data_docs).rglob("*.html"))
    findings = scan_tree([cfg.store, cfg.extracts, cfg.register, cfg.airflow_home / "logs"], ids)
    for i, output in enumerate(demo["outputs"]):
        findings += scan_text(output, ids, f"airflow output {i}")
    assert findings == [], [str(f) for f in findings[:20]]
    assert not list(cfg.staging.glob("*/*")), "staging is cleaned up after commit"


def test_asset_events_carry_the_counts(demo):
    out = run_airflow(demo["env"], "assets", "list", "-o", "json")
    assert "gpdata_curated_store" in out
    db = demo["cfg"].airflow_home / "airflow.db"
    import sqlite3

    with sqlite3.connect(db) as conn:
        extras = [json.loads(r[0]) for r in conn.execute(
            "select e.extra from asset_event e join asset a on a.id = e.asset_id where a.name = ?",
            ("gpdata_curated_store",))]
    # three practices, two committing runs; the third run commits nothing and emits no event. The first run's
    # baselines run alone (an event each); the forced run's small deliveries run in one chunk (one event, the
    # counts of each practice it committed)
    assert len(extras) == len(demo["practices"]) + 1
    committed = [e for extra in extras for e in extra.get("committed", [extra])]
    assert len(committed) == 2 * len(demo["practices"])
    assert {e["practice"] for e in committed} == set(demo["practices"])
    assert all(e["committed_rows"]["observations"] > 0 for e in committed)


def test_the_release_dag_publishes_a_release_of_the_run(demo):
    cfg = demo["cfg"]
    releases = release.list_releases(cfg.store)
    assert len(releases) == 1 and releases[0]["status"] == "published"
    for name in TABLES:
        assert releases[0]["tables"][name]["rows"] == store.read_table(cfg.store, name).num_rows
        assert release.read_release_table(cfg.store, releases[0]["release_id"], name).num_rows > 0


def test_each_approved_project_gets_its_extract_audit_and_register(demo):
    cfg = demo["cfg"]
    rid = release.latest_release(cfg.store)["release_id"]
    manifests = {p.parent.parent.name: json.loads(p.read_text()) for p in cfg.extracts.glob(f"*/{rid}/manifest.json")}
    assert set(manifests) == {"DARS-DEMO-HTN", "DARS-DEMO-VAX"}
    assert manifests["DARS-DEMO-VAX"]["tables"]["immunisations"]["rows"] > 0
    assert release.verify_audit(cfg.store) == 4  # the release, the NDOP list's ingest, one extract per project
    assert [e["event"] for e in audit.entries(cfg.store)] == ["release", "ndop_ingested", "extract", "extract"]
    assert "DARS-DEMO-HTN" in (cfg.register / "register.csv").read_text()
