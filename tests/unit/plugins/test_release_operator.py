"""The release DAG's task makes no release of data it has already released (an hourly feed with nothing new
would otherwise make 24 identical releases a day), and a commit since the last release makes one."""

import pytest

from gpdata import pipeline, settings
from gpdata.ingest.feeds import Feed
from gpdata.ops.airflow_env import REPO_ROOT
from gpdata.store import release
from tests import factory as f
from tests.conftest import practice_resources


class _Event:
    extra: dict | None = None


def test_the_release_task_skips_when_nothing_was_committed_since_the_last_release(home, monkeypatch):
    monkeypatch.syspath_prepend(str(REPO_ROOT / "plugins"))
    from airflow.sdk.exceptions import AirflowSkipException

    from gpdata_airflow.operators import RELEASES, ReleaseOperator

    f.write_bundle(home / "sources" / "A81001", practice_resources())
    feed = Feed(ods_code="A81001", name="t", location=str(home / "sources" / "A81001"), max_quarantine_fraction=1)
    cfg = settings.load()
    pipeline.run_practice(feed, cfg, "r1")
    op = ReleaseOperator(task_id="release")

    def run(run_id):
        event = _Event()
        return op.execute({"run_id": run_id, "outlet_events": {RELEASES: event}}), event

    first, event = run("r1")
    assert event.extra == first and len(release.list_releases(cfg.store)) == 1
    with pytest.raises(AirflowSkipException, match=f"nothing committed since release {first['release_id']}"):
        run("r2")
    assert len(release.list_releases(cfg.store)) == 1
    pipeline.run_practice(feed, cfg, "r3", force=True)
    second, _ = run("r3")
    assert second["release_id"] != first["release_id"] and len(release.list_releases(cfg.store)) == 2
