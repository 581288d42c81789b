"""One broken feed file disables that feed only: the other practices' tasks find their feeds and commit, and
`gpdata feeds list` / `validate` show the broken file with its cause and exit non-zero."""

import pytest

from gpdata import settings, store
from gpdata.errors import ConfigError
from gpdata.ops import cli
from gpdata.ops.airflow_env import REPO_ROOT
from tests import factory as f
from tests.conftest import practice_resources


@pytest.fixture
def feeds(home, monkeypatch):
    """Two good feeds (one in a file not named by its ODS code, as an operator may write it) and two broken."""
    monkeypatch.syspath_prepend(str(REPO_ROOT / "plugins"))
    folder = home / "feeds"
    folder.mkdir()
    for ods in ("A81001", "B82002"):
        f.write_bundle(home / "sources" / ods, practice_resources(ods))
    (folder / "A81001.yaml").write_text(f"ods_code: A81001\nname: A\nlocation: {home / 'sources' / 'A81001'}\n"
                                        "max_quarantine_fraction: 1\n")
    (folder / "second practice.yaml").write_text(f"ods_code: B82002\nname: B\nlocation: {home / 'sources' / 'B82002'}"
                                                 "\nmax_quarantine_fraction: 1\n")
    (folder / "C83003.yaml").write_text("ods_code: C83003\nname: C\nlocaton: x\n")  # typo'd field
    (folder / "D84004.yaml").write_text("ods_code: [D84004\n")  # not YAML
    return folder


def test_the_other_practices_tasks_find_their_feeds_and_commit(feeds):
    from gpdata import pipeline
    from gpdata_airflow.operators import PracticeExtractOperator

    cfg = settings.load()
    for ods in ("A81001", "B82002"):  # what each practice's task does first: read its own feed again
        feed, _ = PracticeExtractOperator(task_id=f"extract_{ods}", ods_code=ods, feeds_dir=str(feeds))._feed()
        assert feed.ods_code == ods
        assert pipeline.run_practice(feed, cfg, "r1")["status"] == "committed"
        assert store.row_counts(cfg.store, ods)["patients"] == 2
    # the broken practice's own task fails naming its file and cause
    with pytest.raises(ConfigError, match="field 'locaton': unknown field") as err:
        PracticeExtractOperator(task_id="extract_c", ods_code="C83003", feeds_dir=str(feeds))._feed()
    assert "C83003.yaml" in str(err.value)


def test_feeds_list_shows_the_good_then_the_broken_and_exits_non_zero(feeds, capsys):
    assert cli.main(["feeds", "list"]) == 1
    out = capsys.readouterr().out
    good, _, broken = out.partition("cannot be read")
    assert "A81001" in good and "B82002" in good and "C83003.yaml" not in good
    assert "2 feed file(s)" in good.splitlines()[-1]
    assert "C83003.yaml: field 'locaton': unknown field" in broken and "D84004.yaml: not valid YAML" in broken


def test_feeds_validate_names_every_problem_and_exits_1(feeds, capsys):
    assert cli.main(["feeds", "validate"]) == 1
    err = capsys.readouterr().err
    assert "C83003.yaml" in err and "locaton" in err and "D84004.yaml" in err and "not valid YAML" in err
    assert "2 feed file(s) invalid, 2 valid" in err
    for name in ("C83003.yaml", "D84004.yaml"):
        (feeds / name).unlink()
    assert cli.main(["feeds", "validate"]) == 0
    assert "2 feed(s) valid" in capsys.readouterr().out
    assert cli.main(["feeds", "list"]) == 0


def test_an_empty_feed_folder_is_not_called_valid(home, capsys):
    (home / "feeds").mkdir()
    assert cli.main(["feeds", "validate"]) == 1
    assert "no feed files" in capsys.readouterr().err


def test_feeds_add_is_not_stopped_by_another_practices_broken_file(feeds, capsys):
    add = ["feeds", "add", "--ods-code", "E85005", "--name", "E", "--location", "../sources/E85005"]
    assert cli.main(add) == 0
    assert (feeds / "E85005.yaml").exists()
    # but a broken file of the same practice is never overwritten nor duplicated
    broken = (feeds / "C83003.yaml").read_text()
    assert cli.main(["feeds", "add", "--ods-code", "C83003", "--name", "C", "--location", "x"]) == 2
    assert "exists already and cannot be read" in capsys.readouterr().err
    assert (feeds / "C83003.yaml").read_text() == broken
    (feeds / "twin.yaml").write_text((feeds / "E85005.yaml").read_text())
    assert cli.main(["feeds", "add", "--ods-code", "E85005", "--name", "E", "--location", "x"]) == 2
    assert "left out as duplicates" in capsys.readouterr().err
