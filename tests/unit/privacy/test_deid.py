import datetime as dt
import hmac

import pyarrow as pa

from gpdata.model import CURATED, POSITION, staged_schema
from gpdata.privacy import keys
from gpdata.privacy.deid import Pseudonymiser
from tests import factory as f
from tests.conftest import practice_resources
from tests.test_helpers import staged_tables


def _staged(tmp_path, extra=()):
    staged, counts, master = staged_tables(tmp_path, extra)
    return (staged, counts), master


def test_only_allow_listed_columns_leave(tmp_path):
    (staged, _), _ = _staged(tmp_path)
    for name, table in staged.items():
        assert table.schema.names == staged_schema(name).names
        assert set(table.schema.names) - set(CURATED[name].names) == {*POSITION, "_issue"}


def test_pseudonym_is_keyed_hmac_of_normalised_nhs_number(tmp_path):
    (staged, _), master = _staged(tmp_path)
    pats = {p["_src_entry"]: p for p in staged["patients"].to_pylist()}
    expected = hmac.digest(master.derive("nhs_number"), b"9990000018", "sha256").hex()
    assert pats[3]["patient_pid"] == expected  # delivered as "999 000 0018"
    assert pats[3]["birth_month"] == dt.date(1980, 5, 1)
    assert (pats[3]["lsoa_code"], pats[3]["postcode_district"]) == ("E01000001", "LS1")
    assert pats[4]["lsoa_code"] is None  # LS2 9XY is not in this lookup
    assert pats[5]["patient_pid"] is None and pats[5]["_issue"] == "invalid_nhs_number"
    assert pats[3]["key_version"] == "v1"


def test_events_link_to_patients_and_flag_orphans(tmp_path):
    (staged, _), _ = _staged(tmp_path, [f.observation("orphan", "nobody", f.BMI, "2020-01-01")])
    obs = staged["observations"].to_pylist()
    pids = {p["patient_pid"] for p in staged["patients"].to_pylist()}
    assert {o["_issue"] for o in obs} == {None, "unknown_patient", "patient_invalid_nhs_number"}
    assert all(o["patient_pid"] in pids for o in obs if o["_issue"] is None)
    assert all(len(o["record_id"]) == 64 for o in obs)


def test_restricted_codes_are_dropped(tmp_path):
    (staged, counts), _ = _staged(tmp_path, [f.observation("r1", "p1", "184095009", "2020-01-01")])  # forename
    assert counts["restricted_code_records"]["observations"] == 1
    assert "184095009" not in staged["observations"]["code"].to_pylist()


def test_different_master_keys_give_disjoint_pseudonyms():
    values = pa.array(["9990000018", "9990000026", "9990000034"])
    a = Pseudonymiser(keys.load_master_key({keys.KEY_ENV: "01" * 32}))(values, "nhs_number").to_pylist()
    b = Pseudonymiser(keys.load_master_key({keys.KEY_ENV: "02" * 32}))(values, "nhs_number").to_pylist()
    again = Pseudonymiser(keys.load_master_key({keys.KEY_ENV: "01" * 32}))(values, "nhs_number").to_pylist()
    assert not set(a) & set(b) and a == again and len(set(a)) == 3


def test_unreadable_fhir_entry_keeps_its_reason_through_deidentification(tmp_path):
    bad = f.observation("bad1", "p1", f.BMI, "2020-01-01")
    bad["code"] = {"coding": [["nested"]]}  # no way to read this coding
    staged, _, _ = staged_tables(tmp_path, [bad])
    obs = staged["observations"].to_pylist()
    assert [o["_src_entry"] for o in obs if o["_issue"] == "unreadable_entry"] == [len(practice_resources())]
    assert sum(1 for o in obs if o["_issue"] is None) > 0
