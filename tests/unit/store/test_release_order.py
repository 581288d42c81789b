"""Twelve releases in one day: every reader picks `.12`, never `.9` (release ids are ordered by date, then
sequence number as a number, not as text)."""

import csv
import datetime as dt
import json
import re

import pytest
import yaml

from gpdata import pipeline, settings
from gpdata.ingest.feeds import Feed
from gpdata.ops import cli
from gpdata.ops.airflow_env import REPO_ROOT
from gpdata.privacy import keys
from gpdata.share import disseminate
from gpdata.store import release
from tests import factory as f
from tests.conftest import practice_resources
from tests.unit.share.test_disseminate import BASE

DAY = dt.date(2026, 11, 30)
IDS = [f"{DAY.isoformat()}.{n}" for n in range(1, 13)]


@pytest.fixture
def twelve(home, monkeypatch):
    f.write_bundle(home / "sources" / "A81001", practice_resources())
    cfg = settings.load()
    pipeline.run_practice(Feed(ods_code="A81001", name="t", location=str(home / "sources" / "A81001"),
                               max_quarantine_fraction=1), cfg, "r1")
    made = [release.create_release(cfg.store, today=DAY)["release_id"] for _ in range(12)]
    assert made == IDS
    projects = home / "projects"
    projects.mkdir()
    doc = {**BASE, "project_id": "ORDER-1", "national_data_optout": "exempt",
           "exemption_reason": "unit test of release order"}
    (projects / "ORDER-1.yaml").write_text(yaml.safe_dump(json.loads(json.dumps(doc))))
    monkeypatch.setenv("GPDATA_PROJECTS_DIR", str(projects))
    return settings.load()


def test_list_and_latest_pick_the_twelfth(twelve, capsys):
    assert sorted(IDS) != IDS and max(IDS) == f"{DAY}.9"  # as text, .9 would be the latest
    assert [r["release_id"] for r in release.list_releases(twelve.store)] == IDS
    assert release.latest_release(twelve.store)["release_id"] == f"{DAY}.12"
    assert cli.main(["release", "list"]) == 0
    listed = [line.split()[0] for line in capsys.readouterr().out.splitlines() if line.strip()]
    assert listed == IDS


def test_dissemination_and_the_register_pick_the_twelfth(twelve):
    done = disseminate.disseminate_all(twelve, keys.load_master_key(), requested_by="test",
                                       today=dt.date(2026, 12, 1))
    assert done["ORDER-1"]["release"] == f"{DAY}.12"
    assert (twelve.extracts / "ORDER-1" / f"{DAY}.12" / "manifest.json").exists()
    disseminate.disseminate_all(twelve, keys.load_master_key(), requested_by="test", release_id=f"{DAY}.9",
                                today=dt.date(2026, 12, 1))
    [row] = list(csv.DictReader((twelve.register / "register.csv").open()))
    assert row["releases"] == f"{DAY}.9; {DAY}.12"


def test_the_analysts_snippet_picks_the_twelfth(twelve, home, tmp_path_factory, monkeypatch):
    doc = (REPO_ROOT / "docs" / "analysts.md").read_text()
    [snippet] = [s for s in re.findall(r"```python\n(.*?)```", doc, flags=re.S) if "_releases" in s]
    where = tmp_path_factory.mktemp("analyst")
    (where / "var").symlink_to(home)  # the snippet reads var/store
    monkeypatch.chdir(where)
    namespace: dict = {}
    exec(compile(snippet, "analysts.md", "exec"), namespace)  # noqa: S102 - our own documentation
    assert namespace["manifest"]["release_id"] == f"{DAY}.12"
    assert len(namespace["result"]) > 0


def test_the_gp_data_page_lists_the_twelfth_first_and_a_projects_latest_release(twelve):
    from gpdata.ops import status

    page = [r["release_id"] for r in status.releases(twelve)]
    assert page == IDS[::-1]
    for rid in (f"{DAY}.12", f"{DAY}.9"):  # .9 extracted after .12: still not the project's latest release
        disseminate.disseminate_all(twelve, keys.load_master_key(), requested_by="test", release_id=rid,
                                    today=dt.date(2026, 12, 1))
    [project] = status.projects(twelve)
    assert project["release"] == f"{DAY}.12" and project["extracts"] == 2
