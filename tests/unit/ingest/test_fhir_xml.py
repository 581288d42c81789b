"""FHIR XML deliveries read to the same canonical tables as the JSON of the same records."""

from __future__ import annotations

import json
from pathlib import Path
from xml.sax.saxutils import quoteattr

import pytest

from gpdata.errors import SourceError
from gpdata.ingest.sources.fhir import read_bundles
from tests import factory as f
from tests.conftest import practice_resources

CORPUS = Path(__file__).parent / "conformance"
HOLDERS = {"resource", "contained", "outcome"}


def _primitive(value) -> str:
    return ("true" if value else "false") if isinstance(value, bool) else str(value)


def _element(name: str, value, out: list[str]) -> None:
    """One JSON property as FHIR XML (the official rules: value attributes, id and url attributes, repeated
    elements for arrays, a resource inside its holder element)."""
    if isinstance(value, list):
        for item in value:
            _element(name, item, out)
    elif isinstance(value, dict) and name in HOLDERS:
        out.append(f"<{name}>")
        _resource(value, out)
        out.append(f"</{name}>")
    elif isinstance(value, dict):
        attrs = "".join(f" {a}={quoteattr(str(value[a]))}" for a in ("id", "url") if a in value)
        out.append(f"<{name}{attrs}>")
        for key, item in value.items():
            if key not in ("id", "url"):
                _element(key, item, out)
        out.append(f"</{name}>")
    elif value is not None:
        out.append(f"<{name} value={quoteattr(_primitive(value))}/>")


def _resource(res: dict, out: list[str]) -> None:
    kind = res["resourceType"]
    out.append(f'<{kind} xmlns="http://hl7.org/fhir">' if not out else f"<{kind}>")
    if "id" in res:
        out.append(f"<id value={quoteattr(str(res['id']))}/>")
    for key, item in res.items():
        if key not in ("resourceType", "id"):
            _element(key, item, out)
    out.append(f"</{kind}>")


def to_xml(doc: dict) -> str:
    out: list[str] = []
    _resource(doc, out)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + "\n".join(out)


def _bundles() -> dict[str, dict]:
    factory_doc = {"resourceType": "Bundle", "type": "collection",
                   "entry": [{"fullUrl": f"urn:uuid:{r['id']}", "resource": r} for r in practice_resources()]}
    cases = {p.stem: json.loads(p.read_text()) for p in sorted(CORPUS.glob("*.json"))}
    return {"factory": factory_doc, **{k: c["bundle"] for k, c in cases.items() if "refused" not in c}}


@pytest.mark.parametrize("name", list(_bundles()))
def test_xml_and_json_of_the_same_records_give_identical_tables(name, tmp_path):
    doc = _bundles()[name]
    (tmp_path / "json").mkdir()
    (tmp_path / "xml").mkdir()
    (tmp_path / "json" / "b.json").write_text(json.dumps(doc))
    (tmp_path / "xml" / "b.xml").write_text(to_xml(doc))
    from_json = read_bundles(tmp_path / "json", "A81001")
    from_xml = read_bundles(tmp_path / "xml", "A81001")
    assert from_json.keys() == from_xml.keys()
    for table in from_json:
        assert from_xml[table].drop_columns(["_src_file"]).equals(from_json[table].drop_columns(["_src_file"])), table
    assert sum(t.num_rows for t in from_json.values()) > 0


def test_hand_written_xml_with_narrative_comments_and_one_entry(tmp_path):
    (tmp_path / "one.xml").write_text("""<?xml version="1.0" encoding="UTF-8"?>
<!-- a UK Core style example -->
<Bundle xmlns="http://hl7.org/fhir">
  <type value="collection"/>
  <entry>
    <resource>
      <Patient>
        <id value="p1"/>
        <text><status value="generated"/><div xmlns="http://www.w3.org/1999/xhtml"><p>Alex</p></div></text>
        <identifier><system value="https://fhir.nhs.uk/Id/nhs-number"/><value value="9990000018"/></identifier>
        <name><use value="official"/><family value="Testperson"/><given value="Alex"/><given value="Sam"/></name>
        <gender value="female"/>
        <birthDate value="1980-05-17"><extension url="http://hl7.org/fhir/StructureDefinition/patient-birthTime">
          <valueDateTime value="1980-05-17T10:00:00+01:00"/></extension></birthDate>
      </Patient>
    </resource>
  </entry>
</Bundle>""")
    pat = read_bundles(tmp_path, "A81001")["patients"].to_pylist()[0]
    assert (pat["nhs_number"], pat["given_names"], str(pat["birth_date"]), pat["_src_entry"]) == \
        ("9990000018", "Alex Sam", "1980-05-17", 0)


def test_bad_xml_is_refused_and_entities_are_never_expanded(tmp_path):
    (tmp_path / "bad.xml").write_text("<Bundle xmlns='http://hl7.org/fhir'><entry>")
    with pytest.raises(SourceError, match="bad.xml.*not valid XML"):
        read_bundles(tmp_path, "A81001")
    (tmp_path / "bad.xml").unlink()
    secret = tmp_path / "secret.txt"
    secret.write_text("9990000018")
    (tmp_path / "xxe.xml").write_text(f"""<?xml version="1.0"?>
<!DOCTYPE Bundle [<!ENTITY x SYSTEM "file://{secret}">]>
<Bundle xmlns="http://hl7.org/fhir"><entry><resource><Patient><id value="p1"/>
<identifier><system value="https://fhir.nhs.uk/Id/nhs-number"/><value value="&x;"/></identifier>
</Patient></resource></entry></Bundle>""")
    with pytest.raises(SourceError) as err:  # the external entity is neither fetched nor expanded: refused
        read_bundles(tmp_path, "A81001")
    assert "not valid XML" in str(err.value) and "9990000018" not in str(err.value)
    (tmp_path / "xxe.xml").unlink()
    (tmp_path / "other.xml").write_text("<Patient xmlns='http://hl7.org/fhir'/>")
    with pytest.raises(SourceError, match="not a FHIR Bundle"):
        read_bundles(tmp_path, "A81001")


def test_type1_code_in_xml_is_found(tmp_path):
    resources = [f.organization("A81001"), f.patient("p1", "9990000018"),
                 f.observation("o1", "p1", f.DISSENT, "2022-01-01")]
    doc = {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": r} for r in resources]}
    (tmp_path / "b.xml").write_text(to_xml(doc))
    evidence = read_bundles(tmp_path, "A81001")["type1_evidence"].to_pylist()
    assert [(e["patient_ref"], e["kind"]) for e in evidence] == [("p1", "dissent")]
