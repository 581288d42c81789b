"""The three stages together, in the library: batch policy, volume, Data Docs and manifests."""

import json

import pytest

from gpdata import pipeline, settings, store
from gpdata.errors import QualityGateError
from gpdata.ingest.feeds import Feed
from gpdata.synth import generate


@pytest.fixture
def practice(home):
    truth = generate(home, n_practices=1, n_patients=150, events_per_patient=20, dirty_fraction=0.02, seed=3)[0]
    feed = Feed(ods_code=truth.ods_code, name="p", location=str(home / "sources" / truth.ods_code),
                max_quarantine_fraction=0.25)  # a small, deliberately dirty practice
    return feed, truth


def test_failed_batch_commits_nothing_and_names_every_cause(practice):
    feed, truth = practice
    cfg = settings.load()
    pipeline.run_practice(feed, cfg, "r1")
    before = {t: store.read_table(cfg.store, t) for t in ("patients", "observations")}
    strict = feed.model_copy(update={"max_quarantine_fraction": 0.0, "quarantine_allowance": 0})
    with pytest.raises(QualityGateError) as err:
        pipeline.run_practice(strict, cfg, "r2", force=True)
    message = str(err.value)
    assert message.startswith(f"practice {feed.ods_code}: stage quality: quality gate failed, nothing committed")
    assert "observations:" in message and "future_date" in message and "before_birth" in message
    for name, table in before.items():
        assert store.read_table(cfg.store, name).equals(table)
    latest = store.latest_manifests(cfg.manifests)[feed.ods_code]
    assert latest["status"] == "failed_quality" and latest["run_id"] == "r2"
    assert store.last_committed(cfg.manifests, feed.ods_code)["run_id"] == "r1"


def test_volume_drop_against_previous_run_fails_the_batch(practice, home):
    feed, truth = practice
    cfg = settings.load()
    pipeline.run_practice(feed, cfg, "r1")
    bundles = sorted((home / "sources" / feed.ods_code).glob("*.json"))
    doc = json.loads(bundles[0].read_text())
    doc["entry"] = doc["entry"][: len(doc["entry"]) // 3]  # a broken feed delivers a third of its records
    bundles[0].write_text(json.dumps(doc))
    with pytest.raises(QualityGateError, match=r"observations: volume \d+ rows against \d+ in the previous run"):
        pipeline.run_practice(feed, cfg, "r2")
    pipeline.run_practice(feed.model_copy(update={"volume_tolerance": None}), cfg, "r3")  # accepted on purpose


def test_data_docs_and_persisted_results_hold_counts_not_values(practice):
    feed, truth = practice
    cfg = settings.load()
    counts = pipeline.run_practice(feed, cfg, "r1")
    docs = cfg.data_docs / feed.ods_code / "index.html"
    assert docs.exists() and counts["quality"]["data_docs"] == str(docs)
    assert list((cfg.data_docs / feed.ods_code / "validations").rglob("*.html"))
    results = json.loads((cfg.quality / feed.ods_code / "r1.json").read_text())
    assert results["passed"] and len(results["expectations"]) == counts["quality"]["expectations"]["evaluated"]
    assert all(set(r) == {"table", "expectation", "column", "success", "unexpected_count", "element_count"}
               for r in results["expectations"])
    pipeline.run_practice(feed, cfg, "r2", force=True)  # the file context is reused across runs
    assert (cfg.quality / feed.ods_code / "r2.json").exists()
