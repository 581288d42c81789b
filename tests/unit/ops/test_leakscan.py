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
