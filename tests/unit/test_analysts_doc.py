"""Every Python snippet in docs/analysts.md runs against a real store and gives an answer."""

import re

import pytest

from gpdata import pipeline, settings
from gpdata.ingest.feeds import Feed
from gpdata.ops.airflow_env import REPO_ROOT
from gpdata.store import release
from gpdata.synth import generate

DOC = REPO_ROOT / "docs" / "analysts.md"
SNIPPETS = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)


@pytest.fixture(scope="module")
def store_folder(tmp_path_factory):
    home = tmp_path_factory.mktemp("analyst") / "var"
    mp = pytest.MonkeyPatch()
    mp.setenv("GPDATA_HOME", str(home))
    mp.setenv("GPDATA_MASTER_KEY", "42" * 32)
    mp.delenv("GPDATA_STORE", raising=False)
    truth = generate(home, n_practices=1, n_patients=60, events_per_patient=30, dirty_fraction=0.0, seed=5)[0]
    feed = Feed(ods_code=truth.ods_code, name="p", location=str(home / "sources" / truth.ods_code))
    cfg = settings.load()
    pipeline.run_practice(feed, cfg, "r1")
    release.create_release(cfg.store)
    yield home.parent
    mp.undo()


def test_doc_has_the_promised_snippets():
    text = "\n".join(SNIPPETS)
    assert len(SNIPPETS) >= 5 and all(k in text for k in ("pandas", "polars", "duckdb", "version="))


@pytest.mark.parametrize("snippet", SNIPPETS, ids=[f"snippet{i}" for i in range(len(SNIPPETS))])
def test_snippet_runs_and_answers(snippet, store_folder, monkeypatch):
    monkeypatch.chdir(store_folder)
    namespace: dict = {}
    exec(compile(snippet, str(DOC), "exec"), namespace)  # noqa: S102 - our own documentation
    assert len(namespace["result"]) > 0
