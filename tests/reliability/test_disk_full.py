"""The disk fills during the commit (a worker whose files may not grow past a limit: RLIMIT_FSIZE).

Guarantee: no partial version. Every table is either at its previous version, byte for byte, or at a new
version holding the whole new batch; every transaction log entry on disk is whole; a practice left between
tables is marked unfinished; and the rerun, with space again, gives the store an uninterrupted commit gives.
"""

import json
import shutil

import pytest
from deltalake import DeltaTable

from gpdata import pipeline, settings, store
from gpdata.model import TABLES
from tests.reliability.conftest import (
    RUN,
    assert_no_leaks,
    assert_same_state,
    delta_versions,
    digest,
    store_state,
)
from tests.reliability.test_reruns import _second_batch

ALL = (*TABLES, store.QUARANTINE)


def _log_is_whole(table_dir) -> None:
    """Every file of the transaction log is a complete commit: one version per file, each line JSON."""
    log = table_dir / "_delta_log"
    versions = sorted(p for p in log.iterdir() if p.is_file())
    assert [p.name for p in versions] == [f"{v:020d}.json" for v in range(len(versions))], \
        [p.name for p in versions]  # no temporary or partial commit file left beside them
    for path in versions:
        for line in path.read_text().splitlines():
            json.loads(line)
    assert DeltaTable(str(table_dir)).version() == len(versions) - 1


# 1.5 kB: the first data file cannot be written; 20 kB: the small tables commit, then observations' data
# file hits the limit, leaving the practice between tables.
@pytest.mark.parametrize(("limit", "some_committed"), [(1_500, False), (20_000, True)],
                         ids=["at-the-first-table", "between-tables"])
def test_disk_full_during_the_commit_leaves_no_partial_version(limit, some_committed, golden, use_home, workers,
                                                               tmp_path):
    home = use_home("committed")
    cfg, ods = home.cfg, home.practices[0]
    # Run r2 brings a changed batch (a later delivery), so a commit has something to change.
    shutil.copytree(golden.snapshots["validated"] / "staging" / RUN / ods, pipeline.staging_dir(cfg, RUN, ods))
    _second_batch(cfg, ods, RUN, "r2")
    shutil.rmtree(pipeline.staging_dir(cfg, RUN, ods))
    expected_root = tmp_path / "expected"
    shutil.copytree(home.root, expected_root)
    expected_cfg = settings.Settings(home=expected_root, feeds_dir=expected_root / "feeds",
                                     store=expected_root / "store")
    pipeline.commit(home.feeds[ods], expected_cfg, "r2")  # what an uninterrupted commit gives
    expected = store_state(expected_cfg.store)
    before, versions = store_state(cfg.store), delta_versions(cfg.store)
    tables_before = {name: digest(store.table_path(cfg.store, name)) for name in ALL}
    committed_before = store.last_committed(cfg.manifests, ods)

    code, output = workers(home, "commit", ods, "r2", "--fsize", str(limit)).finish()
    assert code != 0 and "File too large" in output, output[-3000:]

    now, now_versions = store_state(cfg.store), delta_versions(cfg.store)
    changed = []
    for name in ALL:
        _log_is_whole(store.table_path(cfg.store, name))
        if now_versions[name] == versions[name]:
            assert now[name].equals(before[name]), name
            log = store.table_path(cfg.store, name) / "_delta_log"
            assert digest(log) == {k.split("/", 1)[1]: v for k, v in tables_before[name].items()
                                   if k.startswith("_delta_log/")}, name
        else:
            assert now_versions[name] == versions[name] + 1 and now[name].equals(expected[name]), name
            changed.append(name)
    if changed:  # some tables took the new batch before the disk filled: flagged until the rerun
        assert store.unfinished_commits(cfg.store) == [ods]
    if len(changed) < len(ALL):
        assert store.last_committed(cfg.manifests, ods) == committed_before

    assert bool(changed) == some_committed, changed
    pipeline.commit(home.feeds[ods], cfg, "r2")  # space again: the retry completes
    assert store.unfinished_commits(cfg.store) == []
    assert_same_state(store_state(cfg.store), expected)
    assert_no_leaks(home)

