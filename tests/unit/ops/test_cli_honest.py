"""Honest answers: no command says "all good" about nothing. Each refuses or warns on empty or missing state
and exits non-zero where it should; a closed pipe ends quietly; `gpdata --version` works."""

import datetime as dt
import json
import os
import subprocess
import sys
from importlib import metadata

import pytest
import yaml

from gpdata import pipeline, settings, store
from gpdata.ingest.feeds import Feed
from gpdata.ops import cli
from gpdata.ops.airflow_env import REPO_ROOT
from gpdata.store import release
from tests import factory as f
from tests.conftest import practice_resources
from tests.unit.share.test_disseminate import BASE


@pytest.fixture
def committed(home):
    f.write_bundle(home / "sources" / "A81001", practice_resources())
    cfg = settings.load()
    pipeline.run_practice(Feed(ods_code="A81001", name="t", location=str(home / "sources" / "A81001"),
                               max_quarantine_fraction=1), cfg, "r1")
    return cfg


def _projects(home, monkeypatch, **expiries):
    folder = home / "projects"
    folder.mkdir(exist_ok=True)
    for project_id, expires in expiries.items():
        doc = {**BASE, "project_id": project_id, "expires": expires, "national_data_optout": "exempt",
               "exemption_reason": "unit test"}
        (folder / f"{project_id}.yaml").write_text(yaml.safe_dump(json.loads(json.dumps(doc))))
    monkeypatch.setenv("GPDATA_PROJECTS_DIR", str(folder))
    return folder


def test_audit_verify_without_a_log_is_no_pass(home, capsys):
    assert cli.main(["audit", "verify"]) == 1
    err = capsys.readouterr().err
    assert "no audit log" in err and "intact" not in err


def test_scan_that_scanned_nothing_is_no_pass(home, capsys):
    assert cli.main(["scan"]) == 2  # no delivery: no identifier to look for
    assert "no identifiers to look for" in capsys.readouterr().err
    f.write_bundle(home / "sources" / "A81001", practice_resources())
    assert cli.main(["scan", str(home / "empty")]) == 2  # identifiers, but no file to look in
    captured = capsys.readouterr()
    assert "no file to scan" in captured.err and "0 finding" not in captured.out


def test_release_create_refuses_an_empty_store_unless_asked(home, capsys):
    assert cli.main(["release", "create"]) == 2
    assert "holds no rows" in capsys.readouterr().err
    assert release.list_releases(settings.load().store) == []
    assert cli.main(["release", "create", "--allow-empty", "--note", "plumbing check"]) == 0
    [made] = release.list_releases(settings.load().store)
    assert sum(t["rows"] for t in made["tables"].values()) == 0 and made["note"] == "plumbing check"


def test_projects_list_shows_an_expired_approval_as_expired(home, monkeypatch, capsys):
    yesterday = (dt.date.today() - dt.timedelta(days=1)).isoformat()
    _projects(home, monkeypatch, CURRENT="2099-12-31")
    assert cli.main(["projects"]) == 0
    assert "CURRENT          active" in capsys.readouterr().out
    _projects(home, monkeypatch, OLD=yesterday)
    assert cli.main(["projects", "list"]) == 1
    captured = capsys.readouterr()
    assert "OLD              EXPIRED" in captured.out and "1 active, 1 expired" in captured.out
    assert f"project OLD: approval expired on {yesterday}" in captured.err


def test_projects_list_of_an_empty_folder_is_no_pass(home, monkeypatch, capsys):
    _projects(home, monkeypatch)
    assert cli.main(["projects"]) == 1
    assert "no project files" in capsys.readouterr().err


def test_disseminate_refuses_the_expired_project_and_extracts_the_others(committed, home, monkeypatch, capsys):
    rid = release.create_release(committed.store)["release_id"]
    _projects(home, monkeypatch, GOOD="2099-12-31", OLD="2020-01-01")
    assert cli.main(["disseminate", "--requested-by", "tester"]) == 1
    captured = capsys.readouterr()
    assert f"GOOD: release {rid}" in captured.out and "register:" in captured.out
    assert "OLD refused" in captured.err and "approval expired on 2020-01-01" in captured.err
    assert (committed.extracts / "GOOD" / rid / "manifest.json").exists()
    assert not (committed.extracts / "OLD").exists()
    from gpdata import audit

    refusals = [e for e in audit.entries(committed.store) if e["event"] == "refusal"]
    assert [e["project"] for e in refusals] == ["OLD"] and "expired" in refusals[0]["reason"]


def test_disseminate_with_no_active_project_is_no_pass(committed, home, monkeypatch, capsys):
    release.create_release(committed.store)
    _projects(home, monkeypatch)
    assert cli.main(["disseminate"]) == 1
    assert "no active project" in capsys.readouterr().err


def test_summary_without_manifests_names_the_cause(home, capsys):
    assert cli.main(["summary"]) == 1
    captured = capsys.readouterr()
    assert "no run manifests under" in captured.err and "None" not in captured.out + captured.err


def test_summary_shows_the_cause_of_a_failure_after_counts(committed, capsys):
    latest = store.read_json(committed.manifests / "A81001" / "latest.json")
    latest.update(status="failed", error={"stage": "commit", "cause": "disk full"})
    store.write_manifest(committed.manifests, "A81001", latest["run_id"], latest)
    assert cli.main(["summary"]) == 1
    out = capsys.readouterr().out
    assert "FAILED at commit: disk full" in out and "None" not in out


def _closing_reader(*args: str) -> subprocess.CompletedProcess:
    """Run `gpdata ARGS` with its output read by nobody: the pipe is closed before it writes (as `| head` does
    once it has what it wants)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT / "include"), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, "-m", "gpdata.ops.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env)
    proc.stdout.close()
    err = proc.stderr.read().decode()
    return subprocess.CompletedProcess(proc.args, proc.wait(timeout=120), "", err)


def test_a_closed_pipe_ends_quietly(committed):
    rid = release.create_release(committed.store)["release_id"]
    for args in (["release", "show", rid], ["dialects", "show", "emis_csv"], ["release", "list"]):
        done = _closing_reader(*args)
        assert "Traceback" not in done.stderr and "BrokenPipe" not in done.stderr, (args, done.stderr)
        assert done.returncode == 141, (args, done.returncode, done.stderr)


def test_version_from_the_package_metadata_else_pyproject(monkeypatch, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.strip() == f"gpdata {metadata.version('gpdata')}"

    def missing(name):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(metadata, "version", missing)
    declared = next(line for line in (REPO_ROOT / "pyproject.toml").read_text().splitlines()
                    if line.startswith("version = "))
    assert f'"{cli.version()}"' in declared
