"""Small practices several to a task, through `airflow dags test gpdata_extract`: four tiny practices baselined
earlier run in chunks (GPDATA_CHUNK_PRACTICES=2: two chunks). In the first, both deliver a small increment, one
of them broken; in the second, nothing new was delivered. A fifth, never committed, runs alone through its
extract, quality and commit tasks.

Proves: the plan puts the baseline alone and the others in chunks; the broken practice's manifest names its stage
and cause and nothing of it is committed; the other practice of its chunk commits; the chunk task fails after
every practice ran, naming it; the chunk with nothing new is skipped; the run fails (the skip hides nothing);
the baseline commits through the per-practice path.
"""

import os
import sqlite3

import pytest

from gpdata import pipeline, settings, store
from gpdata.ingest.dialects import load_dialect
from gpdata.ingest.feeds import find_feed
from gpdata.ingest.sources.flatfile import write_delivery
from gpdata.ops.airflow_env import airflow_env
from gpdata.ops.leakscan import collect_identifiers, scan_text
from gpdata.privacy import keys
from gpdata.synth import exports, generate
from gpdata.synth.feeds import write_synthetic_feeds
from tests.support.airflow import run_airflow

pytestmark = pytest.mark.system
DAY2 = "20260102020000"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    home = tmp_path_factory.mktemp("chunked_home")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "GPDATA"))}
    env["GPDATA_SECRETS_DIR"] = os.environ["GPDATA_SECRETS_DIR"]  # the test session's, never the checkout's
    env.update({"GPDATA_HOME": str(home), "GPDATA_FEEDS_DIR": str(home / "feeds"), "GPDATA_CHUNK_PRACTICES": "2"})
    cfg = settings.load(env)
    truths = generate(home, n_practices=5, n_patients=25, events_per_patient=8, dirty_fraction=0.0,
                      optout_fraction=0.1, seed=11)
    codes = sorted(t.ods_code for t in truths)
    write_synthetic_feeds(codes, cfg.sources, cfg.feeds_dir, formats=["emis_csv"])
    keys.write_development_key(cfg.secrets / "dev.key")
    env.update(airflow_env(cfg, cfg.secrets / "dev.key"))
    baselined, new = codes[:4], codes[4]
    dialect = load_dialect("emis_csv")
    with pytest.MonkeyPatch.context() as process:  # the baselines in this process, on the same home and key
        for name, value in env.items():
            if name.startswith("GPDATA_"):
                process.setenv(name, value)
        for number, ods in enumerate(baselined):
            feed = find_feed(cfg.feeds_dir, ods)
            assert pipeline.run_practice(feed, cfg, "earlier")["status"] == "committed"
            if number >= 2:  # the second chunk: nothing new
                continue
            inc = exports.make_increment(exports.canonical_of(cfg.sources / ods, ods), seed=number, fraction=0.05)
            write_delivery(inc.changed, feed.location_path(), ods, dialect, DAY2, deleted=inc.deleted)
        broken = baselined[1]
        obs = next(find_feed(cfg.feeds_dir, broken).location_path().glob(f"*Observation*{DAY2}*"))
        with open(obs, "a") as fh:
            fh.write('"a row with","too many","fields"' + ",x" * 40 + "\n")
        before = {name: store.read_table(cfg.store, name, broken).num_rows for name in ("observations", "patients")}
    outputs = [run_airflow(env, "db", "migrate"), run_airflow(env, "dags", "test", "gpdata_extract", check=False)]
    with sqlite3.connect(cfg.airflow_home / "airflow.db") as db:
        tis = {(t, i): (label, state) for t, i, label, state in db.execute(
            "select task_id, map_index, rendered_map_index, state from task_instance")}
        [(run_id, run_state)] = db.execute("select run_id, state from dag_run").fetchall()
    return {"cfg": cfg, "outputs": outputs, "tis": tis, "run_id": run_id, "run_state": run_state,
            "baselined": baselined, "broken": broken, "new": new, "before": before}


def test_the_plan_runs_the_baseline_alone_and_the_increments_in_chunks(run):
    tis, (a, _, c, _), new = run["tis"], run["baselined"], run["new"]
    assert tis[("practices_001.plan", -1)][1] == "success"
    alone = {i: v for (t, i), v in tis.items() if t == "practices_001.practice.extract"}
    assert alone == {0: (new, "success")}
    chunks = {i: v for (t, i), v in tis.items() if t == "practices_001.chunk"}
    assert chunks == {0: (f"{a} +1", "failed"), 1: (f"{c} +1", "skipped")}


def test_a_broken_delivery_in_a_chunk_fails_that_practice_only_and_the_run(run):
    cfg, broken, run_id = run["cfg"], run["broken"], run["run_id"]
    manifests = store.latest_manifests(cfg.manifests)
    m = manifests[broken]
    assert m["run_id"] == run_id and m["status"] == "failed"
    assert m["error"]["stage"] == "extract" and "row" in m["error"]["cause"] and "file file-" in m["error"]["cause"]
    assert store.last_committed(cfg.manifests, broken)["run_id"] == "earlier"
    for name, rows in run["before"].items():
        assert store.read_table(cfg.store, name, broken).num_rows == rows, name
    first, _, *unchanged = run["baselined"]
    for ods, status in [(first, "committed"), (run["new"], "committed"), *((u, "unchanged") for u in unchanged)]:
        assert manifests[ods]["run_id"] == run_id and manifests[ods]["status"] == status, ods
    assert manifests[run["new"]]["source"]["mode"] == "baseline"
    assert manifests[run["baselined"][0]]["source"]["mode"] == "incremental"
    output = run["outputs"][1]
    assert f"gpdata failure: practice={broken} stage=extract cause=" in output
    assert f"gpdata failure: practice=- stage=chunk cause=1 of 2 practices failed: {broken} (extract)" in output
    assert run["tis"][("all_practices_ok", -1)][1] == "upstream_failed"
    assert run["tis"][("run_summary", -1)][1] == "success"
    assert run["run_state"] == "failed"


def test_no_identifier_reaches_the_airflow_output(run):
    ids = collect_identifiers(run["cfg"].sources)
    findings = []
    for i, output in enumerate(run["outputs"]):
        findings += scan_text(output, ids, f"airflow output {i}")
    assert findings == [], [str(f) for f in findings[:20]]
