"""The pipeline writes under umask 027: nothing it writes is world-readable, whatever the caller's umask;
the public register is the documented exception (0644, folder 0755)."""

import os
import stat

import pytest

from gpdata import pipeline, settings
from gpdata.ingest.feeds import Feed
from gpdata.share import register
from tests import factory as f
from tests.conftest import practice_resources


@pytest.fixture
def loose_umask():
    old = os.umask(0o002)  # as loose as a shared login might be
    yield
    os.umask(old)


def _open_to_others(root, skip=()):
    found = []
    for path in [root, *root.rglob("*")]:
        if any(path.is_relative_to(s) for s in skip) or path.is_symlink():
            continue
        if stat.S_IMODE(path.lstat().st_mode) & 0o007:
            found.append(f"{oct(stat.S_IMODE(path.lstat().st_mode))} {path.relative_to(root)}")
    return found


def test_nothing_the_pipeline_writes_is_world_readable(home, loose_umask):
    cfg = settings.load()
    given = [home / "sources", home / "reference", home / "feeds"]  # written by the test, not the pipeline
    f.write_bundle(home / "sources" / "A81001", practice_resources())
    pipeline.run_practice(Feed(ods_code="A81001", name="A", location=str(home / "sources" / "A81001"),
                               max_quarantine_fraction=1), cfg, "manual__2024-01-01T00:00:00+00:00")
    written = [p for p in (cfg.store, cfg.state, cfg.staging) if p.exists()]
    assert cfg.store.is_dir() and any(cfg.store.rglob("*.parquet"))
    for root in written:
        assert _open_to_others(root) == [], root
    assert _open_to_others(home, skip=given) == []
    assert os.umask(0o002) == 0o027  # the process runs on under the pipeline's umask
    os.umask(0o002)


def test_the_public_register_stays_readable_by_anyone(home, loose_umask):
    cfg = settings.load()
    os.umask(0o077)  # even under the strictest umask
    paths = register.write([], cfg.store, cfg.register)
    assert stat.S_IMODE(cfg.register.stat().st_mode) == register.PUBLIC_DIR_MODE == 0o755
    for path in paths:
        assert stat.S_IMODE(path.stat().st_mode) == register.PUBLIC_FILE_MODE == 0o644
