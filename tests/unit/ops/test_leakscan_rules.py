"""The leak scanner's rules at their boundaries (issue 23: every mutant of a guard is caught): which identifiers
are searched, numeric and date columns, text files with a NUL byte, excluded paths and the root's own name."""

import datetime as dt

import pyarrow as pa
import pyarrow.parquet as pq

from gpdata.ops.leakscan import Identifiers, _patient_identifiers, scan_tree
from tests import factory as f
from tests.conftest import practice_resources


def _patient(**fields):
    ids = Identifiers()
    _patient_identifiers({"resourceType": "Patient", **fields}, ids)
    return ids


def test_an_identifier_of_six_characters_is_searched_and_one_of_five_is_not():
    ids = Identifiers()
    ids.add("telecom", "AB 1234")
    ids.add("telecom", "AB123")
    assert ids.counts == {"telecom": 1} and ids.skipped == {"telecom": 1}
    assert ids.find("call ab 1234 now") == "telecom" and ids.find("AB123") is None


def test_an_nhs_number_is_kept_as_a_number_only_in_its_plain_form():
    ids = Identifiers()
    ids.add("nhs_number", "9990000018")
    ids.add("nhs_number", "999 000 0018")
    assert ids.nhs_numbers == {9990000018}


def test_surnames_from_four_letters_and_telephone_numbers_are_collected():
    assert _patient(name=[{"family": "Lamb", "given": ["Jo"]}]).surnames == {"LAMB"}
    assert _patient(name=[{"family": "Lee", "given": ["Jo"]}]).surnames == set()
    assert _patient(name=[{"given": ["Morwenna"]}]).surnames == set()
    phone = _patient(telecom=[{"system": "phone", "value": "0113 496 0000"}])
    assert phone.counts == {"telecom": 1} and phone.find("rang 0113 496 0000") == "telecom"


def _scan(tmp_path, tables, ids, **kw):
    out = tmp_path / "out"
    out.mkdir(exist_ok=True)
    for name, table in tables.items():
        pq.write_table(table, out / name)
    return {(x.path.split("/")[-1], x.where, x.kind) for x in scan_tree([out], ids, **kw)}


def _ids(tmp_path):
    f.write_bundle(tmp_path / "sources" / "A81001", practice_resources())
    from gpdata.ops.leakscan import collect_identifiers

    return collect_identifiers(tmp_path / "sources")


def test_a_valid_nhs_number_or_a_delivered_one_in_a_numeric_column_is_found(tmp_path):
    ids = _ids(tmp_path)
    found = _scan(tmp_path, {"valid.parquet": pa.table({"v": pa.array([1.0, 9434765919.0])}),     # valid, not sent
                             "sent.parquet": pa.table({"v": pa.array([9990000027], pa.int64())}),  # sent, invalid
                             "clean.parquet": pa.table({"v": pa.array([12, 9990000019], pa.int64())})}, ids)
    assert found == {("valid.parquet", "column v", "nhs_number"), ("sent.parquet", "column v", "nhs_number")}


def test_dates_are_checked_only_against_linked_patients_and_other_columns_are_skipped(tmp_path):
    ids = _ids(tmp_path)
    dob = dt.date(1980, 5, 17)
    table = pa.table({"flag": [True], "when": pa.array([dob], pa.date32()), "blob": pa.array([b"\x00"], pa.binary())})
    assert _scan(tmp_path, {"unlinked.parquet": table}, ids) == set()  # no pseudonymiser given: dates not linked
    ids.dob_by_pid = {"p" * 64: "1980-05-17"}
    assert _scan(tmp_path, {"no_pid.parquet": table}, ids) == set()  # no patient_pid column: nobody to link
    linked = table.append_column("patient_pid", pa.array(["p" * 64]))
    assert _scan(tmp_path, {"linked.parquet": linked}, ids) == {("linked.parquet", "column when", "date_of_birth")}


def test_a_text_file_is_read_even_with_a_nul_byte(tmp_path):
    ids = _ids(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    (out / "task.log").write_bytes(b"\x00binary prefix\nnhs 9990000018\n")
    assert {x.kind for x in scan_tree([out], ids)} == {"nhs_number"}


def test_excluded_paths_are_left_out_but_not_their_namesakes(tmp_path):
    ids = _ids(tmp_path)
    out = tmp_path / "out"
    for folder in ("keep", "skip", "skipped"):
        (out / folder).mkdir(parents=True)
        (out / folder / "a.log").write_text("nhs 9990000018\n")
    (out / "one.log").write_text("nhs 9990000018\n")
    stats = {}
    found = {str(x).split(": ")[0].removeprefix(str(out) + "/") for x in
             scan_tree([out], ids, stats, exclude=[out / "skip", out / "one.log"])}
    assert found == {"keep/a.log", "skipped/a.log"} and stats["files"] == 2


def test_the_roots_own_name_is_not_scanned_but_names_below_it_are(tmp_path):
    ids = _ids(tmp_path)
    root = tmp_path / "Morwenna Quinlan"
    (root / "Morwenna Quinlan").mkdir(parents=True)
    (root / "Morwenna Quinlan" / "clean.log").write_text("ok\n")
    found = [(x.where, x.kind) for x in scan_tree([root], ids)]
    assert found == [("folder name", "name")]


def test_a_date_of_an_unlinked_patient_or_a_missing_date_is_no_finding(tmp_path):
    ids = _ids(tmp_path)
    ids.dob_by_pid = {"p" * 64: "1980-05-17"}
    table = pa.table({"patient_pid": ["q" * 64, "p" * 64],
                      "when": pa.array([dt.date(1980, 5, 17), None], pa.date32())})
    assert _scan(tmp_path, {"other.parquet": table}, ids) == set()
