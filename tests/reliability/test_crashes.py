"""A worker killed with SIGKILL during extraction or during the commit.

Guarantee: the store is unchanged (each Delta table at its previous version, byte for byte), nothing
half-written is taken for a stage's output, and the retried task completes with the same rows as a run
that was never interrupted (``golden.reference``, or its staged batch for the extract task).
"""

import signal
import time

import pyarrow.parquet as pq
import pytest
from deltalake import DeltaTable

from gpdata import pipeline, store
from gpdata.errors import GpdataError
from gpdata.store import release
from tests.reliability.conftest import (
    RUN,
    assert_no_leaks,
    assert_same_state,
    delta_versions,
    digest,
    store_state,
)
from tests.reliability.worker import BIG_ROWS, big_batch


@pytest.mark.parametrize("point", ["deidentify", "staging-write"])
def test_sigkill_during_extraction_leaves_the_store_unchanged_and_the_retry_completes(point, golden, use_home,
                                                                                       workers):
    home = use_home("committed")
    feed, cfg = home.feed(0), home.cfg
    before = digest(cfg.store)
    w = workers(home, "extract", feed.ods_code, "r2", "--pause-at", point)
    w.wait_paused()
    w.kill()
    assert w.proc.returncode == -signal.SIGKILL
    assert digest(cfg.store) == before  # not a byte of the store changed
    staged = pipeline.staging_dir(cfg, "r2", feed.ods_code)
    assert not (staged / "extracted").exists()  # a half-written stage output is never in place
    with pytest.raises(GpdataError, match="no output of the previous stage") as err:
        pipeline.check(feed, cfg, "r2")  # the next task refuses to go on from it

    # The retried extract task stages exactly what an uninterrupted one staged; from there the quality
    # gate and the commit give the uninterrupted store (test_reruns: a cleared run gives the reference).
    pipeline.extract(feed, cfg, "r2", force=True)  # a re-extraction: the home's delivery is committed
    reference = golden.snapshots["validated"] / "staging" / RUN / feed.ods_code / "extracted"
    assert len(list(reference.glob("*.parquet"))) >= 10
    for part in sorted(reference.glob("*.parquet")):
        assert pq.read_table(staged / "extracted" / part.name).equals(pq.read_table(part)), part.name
    assert digest(cfg.store) == before
    assert_no_leaks(home, errors=[err.value])


def test_sigkill_between_tables_of_a_commit_is_finished_by_the_retry(golden, use_home, workers):
    home = use_home("validated")
    feed, cfg = home.feed(0), home.cfg
    other = home.feed(1)
    pipeline.commit(other, cfg, RUN)  # the other practice committed already
    before = store_state(cfg.store)
    w = workers(home, "commit", feed.ods_code, RUN, "--pause-at", "table:medications")
    w.wait_paused()
    w.kill()
    assert w.proc.returncode == -signal.SIGKILL
    # Tables committed before the kill hold the whole new batch; the rest are at their previous version.
    # Nothing is half a table, and the practice is marked unfinished so no release mixes the two.
    now = store_state(cfg.store)
    for name in ("patients", "practitioners", "observations"):
        assert now[name].num_rows > before[name].num_rows
    for name in ("medications", "allergies", "appointments", store.QUARANTINE):
        assert now[name].equals(before[name]), name
    assert store.unfinished_commits(cfg.store) == [feed.ods_code]
    with pytest.raises(GpdataError, match=f"commit is unfinished.*{feed.ods_code}") as err:
        release.create_release(cfg.store)

    pipeline.commit(feed, cfg, RUN)  # the retried commit task
    assert store.unfinished_commits(cfg.store) == []
    assert_same_state(store_state(cfg.store), golden.reference)
    assert_no_leaks(home, errors=[err.value])


def _data_files(table_dir):
    return {p for p in table_dir.rglob("*") if p.is_file() and "_delta_log" not in p.parts}


def test_sigkill_inside_a_delta_write_leaves_the_previous_version(golden, use_home, workers):
    """The kill lands while the data files of a large write exist and its log entry does not: the table
    stays at its previous version, byte for byte in its log, and reads exactly as before."""
    home = use_home("committed")
    cfg, ods = home.cfg, home.practices[0]
    table_dir = store.table_path(cfg.store, "observations")
    before_state, before_version = store_state(cfg.store), delta_versions(cfg.store)
    log_before = digest(table_dir / "_delta_log")
    killed_midway = 0
    for attempt in range(6):  # a kill can land after the log commit; try until one lands before it
        files_before = _data_files(table_dir)
        w = workers(home, "delta-write", ods, "big", "--value", str(2.0 + attempt))
        deadline = time.monotonic() + 120
        while w.proc.poll() is None and not (_data_files(table_dir) - files_before):
            assert time.monotonic() < deadline, "the worker never started writing"
            time.sleep(0.001)
        if w.proc.poll() is None:
            w.proc.send_signal(signal.SIGSTOP)  # freeze it, then look: data written, log not yet?
        midway = DeltaTable(str(table_dir)).version() == before_version["observations"]
        w.kill()
        if midway:
            killed_midway += 1
            assert DeltaTable(str(table_dir)).version() == before_version["observations"]
            assert digest(table_dir / "_delta_log") == log_before
            assert_same_state(store_state(cfg.store), before_state)
            break
        # The write won the race: it is whole, never part of a batch. Put the previous state back.
        assert store.read_table(cfg.store, "observations", ods).num_rows == BIG_ROWS
        dt = DeltaTable(str(table_dir))
        dt.restore(before_version["observations"])
        log_before = digest(table_dir / "_delta_log")
        before_version = delta_versions(cfg.store)
    assert killed_midway, "no attempt was killed inside its write; the test needs a bigger batch"

    store.replace_partition(cfg.store, "observations", ods, big_batch(ods, 9.0))  # the rerun completes
    rows = store.read_table(cfg.store, "observations", ods)
    assert rows.num_rows == BIG_ROWS and set(rows["value"].to_pylist()) == {9.0}
    assert_same_state({k: v for k, v in store_state(cfg.store).items() if k != "observations"},
                      {k: v for k, v in before_state.items() if k != "observations"})
    assert_no_leaks(home)

