"""Suppression that cannot be undone: no redacted cell of any publishable file can be recovered from the other
publishable files (by differencing totals and parts), and every count in them is suppressed."""

import csv
import datetime as dt
import io
import itertools
import json

import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import yaml

from gpdata import pipeline, settings
from gpdata.ingest.feeds import Feed
from gpdata.privacy import keys, ndop
from gpdata.share import disseminate, publish, register
from gpdata.share.projects import load_projects
from gpdata.store import release
from gpdata.synth import generate

TODAY = dt.date.today()
TRE = {"environment": "trusted_research_environment", "environment_reason": "a small test store",
       "minimum_k": 1, "rare_codes": {"action": "keep"}}


@pytest.fixture
def published(home, tmp_path, monkeypatch):
    """Four projects over one release of a 150-patient practice: the same cohort with the National Data Opt-out
    applied and exempt (their difference is the number it removed), and a code-list cohort likewise."""
    truth = generate(home, n_practices=1, n_patients=150, events_per_patient=15, dirty_fraction=0.0, seed=11,
                     ndop_fraction=0.03)[0]
    cfg = settings.load()
    pipeline.run_practice(Feed(ods_code=truth.ods_code, name="p", location=str(home / "sources" / truth.ods_code)),
                          cfg, "r1")
    rid = release.create_release(cfg.store)["release_id"]
    key = keys.load_master_key()
    (home / "ndop_in.csv").write_text((home / "reference" / "ndop.csv").read_text())
    ndop.ingest(home / "ndop_in.csv", cfg.store, key, published=TODAY, today=TODAY)
    projects = tmp_path / "projects"
    projects.mkdir()
    for name in ("DARS-DEMO-VAX", "DARS-DEMO-HTN"):
        doc = yaml.safe_load((settings.DEFAULT_PROJECTS_DIR / f"{name}.yaml").read_text())
        doc.pop("small_classes", None)
        if "cohort" in doc:
            doc["cohort"]["code_lists"] = [str((settings.DEFAULT_PROJECTS_DIR / p).resolve())
                                           for p in doc["cohort"]["code_lists"]]
        for suffix, optout in (("A", {"national_data_optout": "apply", "exemption_reason": None}),
                               ("E", {"national_data_optout": "exempt", "exemption_reason": "test"})):
            (projects / f"{name}-{suffix}.yaml").write_text(yaml.safe_dump(
                json.loads(json.dumps({**doc, **TRE, **optout, "project_id": f"{name}-{suffix}"}, default=str))))
    monkeypatch.setenv("GPDATA_PROJECTS_DIR", str(projects))
    cfg = settings.load()
    disseminate.disseminate_all(cfg, key, requested_by="test", release_id=rid, today=TODAY)
    return cfg, rid


def _cells(cfg):
    """(where, published value, exact value) of every count in every publishable summary; exact values from the
    access-controlled manifests beside them."""
    cells = []
    for path in publish.publishable_files(cfg.home, cfg.register, cfg.extracts):
        if path.name != "summary.json":
            continue
        doc = json.loads(path.read_text())
        manifest = json.loads((path.parent / "manifest.json").read_text())
        for table, counts in doc["tables"].items():
            cells.append((f"{path.parent.parent.name} {table} rows", counts["rows"],
                          manifest["tables"][table]["rows"]))
            pids = pq.read_table(path.parent / f"{table}.parquet")["patient_pid"]
            cells.append((f"{path.parent.parent.name} {table} patients", counts["patients"],
                          pc.count_distinct(pids).as_py()))
        if doc.get("removed_by_national_data_optout") is not None:
            cells.append((f"{path.parent.parent.name} removed", doc["removed_by_national_data_optout"],
                          manifest["removed_by_ndop"]))
    return cells


def _interval(shown):
    """What a reader of a published cell knows of the true count."""
    if shown == publish.REDACTED:
        return (1, 7)
    if shown == 0 or shown % 5:
        return (shown, shown)  # not rounded: exact
    return (shown - 2, shown + 2)


def test_every_count_in_a_publishable_file_is_suppressed(published):
    cfg, _ = published
    cells = _cells(cfg)
    assert len(cells) >= 12 and any(shown == publish.REDACTED for _, shown, _ in cells)
    for where, shown, exact in cells:
        assert shown in (0, publish.REDACTED) or (shown % 5 == 0 and shown >= 10), where
        if exact is not None:
            assert shown == publish.suppress(exact), where  # the same rule everywhere: consistent
    rows = list(csv.DictReader(io.StringIO((cfg.register / "register.csv").read_text())))
    assert set(rows[0]) == set(register.COLUMNS) and not {"rows", "patients", "removed"} & set(register.COLUMNS)
    assert all("%" not in r["disclosure_risk"] for r in rows)  # no share of a count either


def test_no_redacted_cell_can_be_recovered_by_differencing(published):
    cfg, _ = published
    cells = _cells(cfg)
    # The attacker's move: a redacted cell that equals a sum or difference of other published cells (a total
    # minus its parts, two projects' totals whose difference is what the opt-out removed, ...). Every such true
    # identity among up to three other cells is tried; with each operand known only as the published value
    # allows, the cell is recovered if the identity pins a single value in 1..7.
    redacted = [(i, c) for i, c in enumerate(cells) if c[1] == publish.REDACTED]
    assert redacted
    tried = 0
    for i, (where, _, exact) in redacted:
        others = [c for j, c in enumerate(cells) if j != i]
        for size in (1, 2, 3):
            for combo in itertools.combinations(others, size):
                for signs in itertools.product((1, -1), repeat=size):
                    if sum(s * c[2] for s, c in zip(signs, combo, strict=True)) != exact:
                        continue  # not an identity: the attacker gains nothing from it
                    tried += 1
                    ivs = [_interval(c[1]) for c in combo]
                    lo = sum(s * (a if s > 0 else b) for s, (a, b) in zip(signs, ivs, strict=True))
                    hi = sum(s * (b if s > 0 else a) for s, (a, b) in zip(signs, ivs, strict=True))
                    feasible = set(range(max(lo, 1), min(hi, 7) + 1))
                    assert len(feasible) > 1, f"{where} recovered from {[c[0] for c in combo]}"
    assert tried  # the identities exist (e.g. the two VAX projects' patients and what the opt-out removed)


def test_the_projects_differ_by_what_the_optout_removed(published):
    cfg, rid = published
    manifests = {p.project_id: json.loads((cfg.extracts / p.project_id / rid / "manifest.json").read_text())
                 for p in load_projects(cfg.projects_dir)}
    exempt = manifests["DARS-DEMO-VAX-E"]["tables"]["patients"]["rows"]
    applied = manifests["DARS-DEMO-VAX-A"]["tables"]["patients"]["rows"]
    assert 0 < exempt - applied <= 7  # a small number that two exact totals would give away
