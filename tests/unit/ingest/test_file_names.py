"""Senders name files after patients: beyond the inbox and the refused-delivery folder, a delivered file is
known only by its keyed token. Each path a delivery can take (committed, failed quality gate, refused) is run
with files named after an NHS number and a patient, and every name and byte GPDATA_HOME holds outside those
two identifiable places is searched for them."""

import json
import re
import shutil

import pytest

from gpdata import pipeline, settings
from gpdata.errors import QualityGateError, SourceError
from gpdata.ingest.feeds import Feed
from gpdata.ops import cli
from gpdata.privacy import deid
from gpdata.privacy.keys import load_master_key
from tests import factory as f
from tests.conftest import practice_resources

NHS_NAME = "9434765919"
PERSON = "Morwenna_Quinlan"
DUPLICATE = "Tobias_Abernethy_copy"
SENDER_WORDS = (NHS_NAME, "Morwenna", "Quinlan", "Tobias", "Abernethy")


def _deliver(home, ods: str, *, broken: bool = False):
    inbox = home / "sources" / ods
    resources = practice_resources(ods)
    f.write_bundle(inbox, resources[:4], name=f"{NHS_NAME}.json")
    f.write_bundle(inbox, resources[4:], name=f"{PERSON}_5b1f0c.json")
    shutil.copy(inbox / f"{NHS_NAME}.json", inbox / f"{DUPLICATE}.json")  # a renamed copy: skipped
    if broken:
        (inbox / f"{PERSON}_broken.json").write_text('{"resourceType": "Bundle", "entry": [')
    return Feed(ods_code=ods, name="p", location=str(inbox))


def _scan(capsys) -> str:
    """`gpdata scan` over everything the run wrote: its report, which must hold no finding (and so no false
    positive either)."""
    capsys.readouterr()
    rc = cli.main(["scan"])
    out = capsys.readouterr().out
    return f"exit {rc}: {out}"


def _traces(home) -> list[str]:
    """Every place outside the inbox and the refused-delivery folder that holds a sender's word."""
    cfg = settings.load()
    identifiable = (cfg.sources, cfg.quarantined_deliveries)
    found = []
    for path in sorted(home.rglob("*")):
        if any(path == d or d in path.parents for d in identifiable):
            continue
        rel = str(path.relative_to(home))
        found += [f"name {rel}: {w}" for w in SENDER_WORDS if w in path.name]
        if path.is_file():
            data = path.read_bytes()
            found += [f"content {rel}: {w}" for w in SENDER_WORDS if w.encode() in data]
    return found


def test_a_committed_delivery_keeps_file_names_in_the_inbox_only(home, capsys):
    feed = _deliver(home, "A81001")
    counts = pipeline.run_practice(feed, settings.load(), "r1")
    assert counts["status"] == "committed"
    assert sum(sum(r.values()) for r in counts["quality"]["quarantined"].values())  # rows say which file
    assert _traces(home) == []
    assert re.match(r"exit 0: 0 finding\(s\) in \d+ file", _scan(capsys))
    manifest = json.loads(next((home / "store" / "_manifests" / "A81001").glob("*.json")).read_text())
    ledger = json.loads((home / "state" / "A81001" / "ledger.json").read_text())
    names = [x["name"] for x in ledger["files"].values()] + \
        [x["name"] for x in manifest["source"]["duplicates_skipped"]]
    token = re.compile(r"file-[0-9a-f]{16}")
    assert len(names) == 3 and all(token.fullmatch(n) for n in names)
    key = load_master_key()
    assert deid.file_token(key, f"{NHS_NAME}.json") in names  # stable: an operator holding the key can match it


def test_a_delivery_failing_its_quality_gate_keeps_file_names_in_the_inbox_only(home, capsys):
    feed = _deliver(home, "A81002").model_copy(update={"max_quarantine_fraction": 0.0, "quarantine_allowance": 0})
    with pytest.raises(QualityGateError) as err:
        pipeline.run_practice(feed, settings.load(), "r1")
    assert not any(w in str(err.value) for w in SENDER_WORDS)
    assert _traces(home) == []
    assert re.match(r"exit 0: 0 finding\(s\) in \d+ file", _scan(capsys))


def test_a_refused_delivery_names_its_file_by_token_beyond_the_refused_folder(home, capsys):
    pipeline.run_practice(_deliver(home, "A81001"), settings.load(), "r0")  # outputs for the scan to read
    feed = _deliver(home, "A81003", broken=True)
    with pytest.raises(SourceError) as err:
        pipeline.run_practice(feed, settings.load(), "r1")
    message = str(err.value)
    assert re.search(r"file file-[0-9a-f]{16}", message) and not any(w in message for w in SENDER_WORDS)
    reason = next((home / "quarantine" / "A81003").glob("*/REASON.json"))
    assert f"{PERSON}_broken.json" in reason.read_text()  # the refused folder keeps the real names
    assert _traces(home) == []
    assert re.match(r"exit 0: 0 finding\(s\) in \d+ file", _scan(capsys))


def test_a_refusal_does_not_quote_the_part_of_a_file_name_it_could_not_place(tmp_path):
    """A file named in the dialect's pattern whose record-type part is a surname: the cause names no value."""
    from gpdata.ingest.dialects import load_dialect
    from gpdata.ingest.sources.flatfile import list_files

    (tmp_path / "A81001_Quinlan_20260101020000.csv").write_text("x\n")
    with pytest.raises(SourceError) as err:
        list_files(tmp_path, load_dialect("emis_csv"), "A81001")
    assert "unknown record type in the file name" in err.value.cause and "Quinlan" not in err.value.cause
