"""Other organisations may appear in a delivery; the delivery's patients must be registered at the practice."""

import json

import pytest

from gpdata import pipeline, settings
from gpdata.errors import SourceError
from gpdata.ingest.feeds import Feed
from gpdata.ingest.sources.fhir import read_bundles
from tests import factory as f
from tests.conftest import practice_resources

LAB, HOSPITAL = "RR801", "RR8"


def _delivery(registered_at: str = "A81001", by: str = "reference") -> list[dict]:
    resources = practice_resources()
    lab = dict(f.organization(LAB), id="org-lab", name="Pathology lab")
    hospital = dict(f.organization(HOSPITAL), id="org-hosp", name="Teaching hospital")
    other = dict(f.organization("B82002"), id="org-B82002")
    for res in resources:
        if res["resourceType"] == "Patient":
            if by == "reference":
                res["managingOrganization"] = {"reference": f"Organization/org-{registered_at}"}
            else:
                res["generalPractitioner"] = [{"identifier": {"system": f.ODS, "value": registered_at}}]
    return [*resources, lab, hospital, other]


def test_laboratory_and_hospital_organisations_are_read(tmp_path):
    f.write_bundle(tmp_path, _delivery())
    assert read_bundles(tmp_path, "A81001")["patients"].num_rows == 4


@pytest.mark.parametrize("by", ["reference", "identifier"])
def test_patients_of_another_practice_refuse_the_delivery_naming_the_file(tmp_path, by):
    f.write_bundle(tmp_path, practice_resources()[:1])
    f.write_bundle(tmp_path, _delivery("B82002", by), name="export-0002.json")
    with pytest.raises(SourceError) as err:
        read_bundles(tmp_path, "A81001")
    assert err.value.file == "export-0002.json" and "another practice (B82002)" in str(err.value)


def test_a_delivery_with_other_organisations_commits_and_a_foreign_one_is_refused(home):
    inbox = home / "inbox" / "A81001"
    f.write_bundle(inbox, _delivery())
    feed = Feed(ods_code="A81001", name="p", location=str(inbox), max_quarantine_fraction=0.5)
    cfg = settings.load()
    counts = pipeline.run_practice(feed, cfg, "r1")
    assert counts["status"] == "committed"
    (inbox / "bundle-0001.json").unlink()
    f.write_bundle(inbox, _delivery("B82002"), name="export-x.json")
    with pytest.raises(SourceError) as err:
        pipeline.run_practice(feed, cfg, "r2")
    # the operator is told which file, by its token (its REASON.json in the refused folder gives the name)
    assert f.file_token("export-x.json") in str(err.value) and "export-x" not in str(err.value)
    # nothing stored outside the inbox and its quarantine names the sender's file
    kept = [p for p in home.rglob("*") if p.is_file() and inbox not in p.parents
            and cfg.quarantined_deliveries not in p.parents]
    assert kept and not [p for p in kept if b"export-x" in p.read_bytes()]
    assert json.loads((cfg.manifests / "A81001" / "latest.json").read_text())["run_id"] == "r1"  # nothing committed


def test_independent_bundles_quarantine_an_unreadable_file_alone(home):
    inbox = home / "inbox" / "A81001"
    f.write_bundle(inbox, _delivery())
    (inbox / "patient-0002.json").write_text('{"resourceType": "Bundle", "entry": [')
    cfg = settings.load()
    together = Feed(ods_code="A81001", name="p", location=str(inbox), max_quarantine_fraction=0.5)
    with pytest.raises(SourceError, match="patient-0002.json.*not valid JSON"):
        read_bundles(inbox, "A81001")
    independent = together.model_copy(update={"bundles": "independent"})
    counts = pipeline.run_practice(independent, cfg, "r1")
    assert counts["status"] == "committed" and counts["patients_read"] == 4
    assert counts["source"]["bundles_quarantined"] == 1
    assert sorted(p.name for p in inbox.iterdir()) == ["bundle-0001.json"]
    moved = list(cfg.quarantined_deliveries.rglob("patient-0002.json"))
    assert len(moved) == 1 and json.loads((moved[0].parent / "REASON.json").read_text())["file"] == "patient-0002.json"
