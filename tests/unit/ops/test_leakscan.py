import pyarrow as pa
import pyarrow.parquet as pq

from gpdata.ops.leakscan import collect_identifiers, scan_tree
from gpdata.privacy import keys
from gpdata.privacy.deid import Pseudonymiser
from tests import factory as f
from tests.conftest import TEST_KEY, practice_resources


def _ids(tmp_path):
    f.write_bundle(tmp_path / "sources" / "A81001", practice_resources())
    return collect_identifiers(tmp_path / "sources")


def test_clean_outputs_pass(tmp_path):
    ids = _ids(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    pq.write_table(pa.table({"code": ["60621009"], "pid": ["ab" * 32]}), out / "t.parquet")
    (out / "task.log").write_text("practice A81001: read 4 patients\nOak Roadside Hillside Quinlanesque\n")
    assert scan_tree([out], ids) == []


def test_every_kind_of_planted_identifier_is_found(tmp_path):
    ids = _ids(tmp_path)
    planted = {
        "nhs.parquet": pa.table({"x": ["9990000018"]}),
        "nhs_spaced.parquet": pa.table({"x": ["note: 999 000 0018."]}),
        "postcode.parquet": pa.table({"x": ["ls14ab"]}),
        "surname.parquet": pa.table({"x": ["QUINLAN"]}),
        "address.parquet": pa.table({"x": ["lives at 12, Oak Road"]}),
        "dob_text.parquet": pa.table({"x": ["born 17/05/1980"]}),
    }
    out = tmp_path / "out"
    out.mkdir()
    for name, table in planted.items():
        pq.write_table(table, out / name)
    (out / "task.log").write_text("ok\nprocessing Morwenna Quinlan\n")
    found = {(p.split("/")[-1], kind) for p, _, kind in (str(x).split(": ") for x in scan_tree([out], ids))}
    assert found == {("nhs.parquet", "nhs_number"), ("nhs_spaced.parquet", "nhs_number"),
                     ("postcode.parquet", "postcode"), ("surname.parquet", "name"),
                     ("address.parquet", "address"), ("dob_text.parquet", "date_of_birth"),
                     ("task.log", "name")}


def test_full_date_of_birth_in_a_patient_row_is_found_but_birth_month_is_not(tmp_path):
    import datetime as dt

    ids = _ids(tmp_path)
    pseudo = Pseudonymiser(keys.load_master_key({keys.KEY_ENV: TEST_KEY}))
    ids.link(lambda nhs: pseudo(nhs, "nhs_number"))
    pid = pseudo(pa.array(["9990000018"]), "nhs_number")[0].as_py()
    out = tmp_path / "out"
    out.mkdir()
    pq.write_table(pa.table({"patient_pid": [pid], "birth_month": [dt.date(1980, 5, 1)]}), out / "ok.parquet")
    pq.write_table(pa.table({"patient_pid": [pid], "d": [dt.date(1980, 5, 17)]}), out / "leak.parquet")
    findings = [str(x) for x in scan_tree([out], ids)]
    assert len(findings) == 1 and "leak.parquet" in findings[0] and "date_of_birth" in findings[0]


def test_delta_log_statistics_are_scanned_except_for_chance_birthday_dates(tmp_path):
    ids = _ids(tmp_path)
    log = tmp_path / "out" / "t" / "_delta_log"
    log.mkdir(parents=True)
    (log / "00000000000000000000.json").write_text('{"stats": {"minValues": {"registration_date": "1980-05-17"}}}\n')
    assert scan_tree([tmp_path / "out"], ids) == []
    (log / "00000000000000000001.json").write_text('{"stats": {"minValues": {"x": "9990000018"}}}\n')
    assert [f.kind for f in scan_tree([tmp_path / "out"], ids)] == ["nhs_number"]


def test_short_identifiers_are_not_searched_so_css_and_counts_are_not_findings(tmp_path):
    """A practitioner identifier '100' would match 'width: 100%' on every Data Docs page."""
    resources = [*practice_resources(), *f.practitioner("prac-2", "100")]
    f.write_bundle(tmp_path / "sources" / "A81001", resources)
    ids = collect_identifiers(tmp_path / "sources")
    assert ids.skipped == {"identifier": 1} and "not searched" in ids.describe()
    out = tmp_path / "out"
    out.mkdir()
    (out / "index.html").write_text('<div style="width: 100%">100 rows</div>\n')
    assert scan_tree([out], ids) == []
    (out / "leak.html").write_text("<td>999 000 0018</td>\n")  # a real one is still found
    assert [x.kind for x in scan_tree([out], ids)] == ["nhs_number"]


def test_an_nhs_number_in_a_numeric_column_is_found(tmp_path):
    ids = _ids(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    pq.write_table(pa.table({"value": pa.array([27.5, 9990000018.0])}), out / "floats.parquet")
    pq.write_table(pa.table({"value": pa.array([1, 9990000018], pa.int64())}), out / "ints.parquet")
    pq.write_table(pa.table({"value": pa.array([1, 9990000019], pa.int64())}), out / "clean.parquet")
    found = sorted((str(x).split(": ")[0].rsplit("/", 1)[-1], x.kind) for x in scan_tree([out], ids))
    assert found == [("floats.parquet", "nhs_number"), ("ints.parquet", "nhs_number")]


def test_file_and_folder_names_are_scanned_once_each(tmp_path):
    ids = _ids(tmp_path)
    folder = tmp_path / "out" / "Morwenna Quinlan"
    folder.mkdir(parents=True)
    (folder / "9990000018.json").write_text("{}")
    (folder / "other.json").write_text("{}")
    found = sorted((x.where, x.kind) for x in scan_tree([tmp_path / "out"], ids))
    assert found == [("file name", "nhs_number"), ("folder name", "name")]


def test_findings_are_grouped_with_direct_identifiers_first(tmp_path):
    from gpdata.ops.leakscan import Finding, group

    findings = [Finding(f"/o/docs/p{i}.html", "line 1", "identifier") for i in range(40)] + \
        [Finding("/o/store/_quarantine/a.parquet", "column source_file", "nhs_number")]
    groups = group(findings)
    assert [(g["kind"], g["folder"], g["count"]) for g in groups] == [
        ("nhs_number", "/o/store/_quarantine", 1), ("identifier", "/o/docs", 40)]


def test_a_surname_that_is_also_an_ethnic_group_is_no_finding_in_that_vocabulary(tmp_path):
    """Seen on the demo: a patient called White, and the HTN extract's ethnic_group column."""
    resources = [*practice_resources(), f.patient("p9", "9990000042", family="White", given="Ada")]
    f.write_bundle(tmp_path / "sources" / "A81001", resources)
    ids = collect_identifiers(tmp_path / "sources")
    out = tmp_path / "out"
    out.mkdir()
    pq.write_table(pa.table({"ethnic_group": ["White", "Asian", None]}), out / "patients.parquet")
    assert scan_tree([out], ids) == []
    pq.write_table(pa.table({"note": ["Ada White"]}), out / "leak.parquet")  # the full name is still found
    assert [x.kind for x in scan_tree([out], ids)] == ["name"]


def test_gpdata_codes_inside_a_text_cell_are_no_surname_but_a_surname_beside_them_is(tmp_path):
    """Seen in the status index: counts by quarantine reason kept as a JSON text cell, {"invalid_nhs_number": 1},
    and a failure's cause naming reasons, with a test patient whose family name is Invalid."""
    f.write_bundle(tmp_path / "sources" / "A81001", practice_resources())  # p3: given Number, family Invalid
    ids = collect_identifiers(tmp_path / "sources")
    out = tmp_path / "out"
    out.mkdir()
    pq.write_table(pa.table({"quarantined": ['{"invalid_nhs_number": 1, "patient_invalid_nhs_number": 1}', None],
                             "error_cause": ["patients: 1 of 3 rows quarantined: invalid_nhs_number 1", None]}),
                   out / "index.parquet")
    assert scan_tree([out], ids) == []
    for leak in ('{"note": "Invalid"}', '{"Invalid": 1}', '["seen", ["Abernethy"]]', "invalid_nhs_number Invalid",
                 "Invalid_Nhs_Number"):
        pq.write_table(pa.table({"quarantined": [leak]}), out / "index.parquet")
        assert [x.kind for x in scan_tree([out], ids)] == ["name"], leak
