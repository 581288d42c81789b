"""Fail closed: a quality failure, a missing key, a stale National Data Opt-out list.

Guarantee: nothing is written (the curated tables byte for byte, or the whole home when the stage stops
before reading anything) and the error names the practice (or project), the stage and the cause.
"""

import datetime as dt
import json
import logging

import pytest

from gpdata import pipeline, settings, store
from gpdata.errors import GpdataError, KeyConfigError, QualityGateError
from gpdata.privacy import keys, ndop
from gpdata.share import disseminate
from gpdata.share.projects import load_project
from gpdata.store import release
from tests.reliability.conftest import assert_no_leaks, digest, table_digests

PROJECT = settings.DEFAULT_PROJECTS_DIR / "DARS-DEMO-HTN.yaml"  # applies the National Data Opt-out


def test_a_quality_failure_commits_nothing_and_says_why(use_home, caplog):
    home = use_home("committed")
    feed, cfg = home.feed(0), home.cfg
    bundle = sorted(feed.location_path().glob("*.json"))[0]
    doc = json.loads(bundle.read_text())
    observations = [e["resource"] for e in doc["entry"] if e["resource"]["resourceType"] == "Observation"]
    for res in observations[: len(observations) * 2 // 5]:  # a broken export: 40% of events in 2099
        res["effectiveDateTime"] = "2099-01-01"
    bundle.write_text(json.dumps(doc))
    tables, committed = table_digests(cfg.store), store.last_committed(cfg.manifests, feed.ods_code)

    with caplog.at_level(logging.INFO), pytest.raises(QualityGateError) as err:
        pipeline.run_practice(feed, cfg, "r2")
    message = str(err.value)
    assert message.startswith(f"practice {feed.ods_code}: stage quality: quality gate failed, nothing committed")
    assert "observations:" in message and "future_date" in message
    assert table_digests(cfg.store) == tables  # not a byte of any table, data or log
    assert store.last_committed(cfg.manifests, feed.ods_code) == committed
    assert store.latest_manifests(cfg.manifests)[feed.ods_code]["status"] == "failed_quality"
    assert not (pipeline.staging_dir(cfg, "r2", feed.ods_code) / "validated").exists()
    assert_no_leaks(home, texts={"log": caplog.text}, errors=[err.value])


@pytest.mark.parametrize("key_env", [{}, {keys.KEY_FILE_ENV: "/nonexistent/gpdata.key"},
                                     {keys.KEY_ENV: "ab" * 8}, {keys.KEY_ENV: "not-hex-" * 8}],
                         ids=["unset", "key-file-missing", "too-short", "not-hex"])
@pytest.mark.parametrize("stage", ["extract", "commit"])
def test_a_missing_or_bad_key_stops_the_stage_before_anything_is_written(stage, key_env, use_home, monkeypatch,
                                                                         caplog):
    home = use_home("committed" if stage == "extract" else "validated")
    feed, cfg = home.feed(0), home.cfg
    monkeypatch.delenv(keys.KEY_ENV)
    for k, v in key_env.items():
        monkeypatch.setenv(k, v)
    before = digest(home.root)
    with caplog.at_level(logging.INFO), pytest.raises(KeyConfigError) as err:
        getattr(pipeline, stage)(feed, cfg, "r1")
    assert str(err.value).startswith(f"practice {feed.ods_code}: ")
    assert "key" in err.value.cause.lower()
    assert not any(v in str(err.value) for v in key_env.values() if not v.startswith("/"))  # never the key
    assert digest(home.root) == before  # nothing at all written: no staging, no store, no manifest
    assert_no_leaks(home, texts={"log": caplog.text}, errors=[err.value])


def test_a_stale_national_data_optout_list_stops_dissemination(use_home, caplog):
    home = use_home("committed")
    cfg = home.cfg
    key = keys.load_master_key()
    rel = release.create_release(cfg.store)["release_id"]
    published = dt.date.today() - dt.timedelta(days=ndop.MAX_AGE_DAYS + 5)  # current when it arrived, stale now
    ndop.ingest(cfg.reference / "ndop.csv", cfg.store, key, published=published,
                today=published + dt.timedelta(days=10))
    project = load_project(PROJECT)
    assert project.national_data_optout == "apply"
    before = digest(home.root, skip=["store"])
    tables = table_digests(cfg.store)

    with caplog.at_level(logging.INFO), pytest.raises(GpdataError) as err:
        disseminate.disseminate_all(cfg, key, requested_by="test", release_id=rel, projects=[project])
    assert f"is {ndop.MAX_AGE_DAYS + 5} days old" in str(err.value)
    assert f"published {published.isoformat()}" in str(err.value)
    assert not (cfg.extracts / project.project_id).exists()  # no extract, not even a folder
    assert not (cfg.register / "register.csv").exists()  # nor a register naming a release that did not happen
    # the refusal is audited: the audit head published beside the register moves, nothing else
    def without_head(d):
        return {k: v for k, v in d.items() if k != "register/audit-head.json"}

    assert without_head(digest(home.root, skip=["store"])) == without_head(before)
    assert table_digests(cfg.store) == tables
    refusal = [e for e in store_audit(cfg) if e["event"] == "refusal"]
    assert len(refusal) == 1 and refusal[0]["project"] == project.project_id and "days old" in refusal[0]["reason"]
    assert_no_leaks(home, texts={"log": caplog.text}, errors=[err.value])


def store_audit(cfg):
    from gpdata import audit

    return audit.entries(cfg.store)
