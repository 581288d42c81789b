"""hmac_hex is the standard HMAC-SHA256 of each value's UTF-8 text, whatever the array type (issue 23)."""

import hashlib
import hmac

import pyarrow as pa
import pytest

from gpdata.privacy.deid import hmac_hex

KEY = bytes(range(32))


def _reference(values):
    return [None if v is None else hmac.new(KEY, str(v).encode(), hashlib.sha256).hexdigest() for v in values]


@pytest.mark.parametrize("array", [
    pa.array(["9990000018", "Ünïcode", None, "9990000018"], pa.string()),
    pa.array(["9990000018", "Ünïcode", None], pa.large_string()),
    pa.chunked_array([["a", "b"], ["a"]]),
    pa.array([20200101, None, 7], pa.int64()),
])
def test_each_value_is_the_standard_hmac_of_its_text_and_nulls_stay_null(array):
    assert hmac_hex(KEY, array).to_pylist() == _reference(array.to_pylist())


@pytest.mark.parametrize("length", [16, 32, 64, 65, 100])
def test_keys_of_any_length_give_the_standard_hmac(length):
    key = bytes(range(length))
    values = pa.array(["9990000018", "LS1 4AB"])
    assert hmac_hex(key, values).to_pylist() == [hmac.new(key, v.encode(), hashlib.sha256).hexdigest()
                                                for v in values.to_pylist()]


def test_a_file_name_becomes_a_token_and_a_token_stays_itself():
    from gpdata.privacy.deid import FILE_TOKEN_PREFIX, file_token
    from gpdata.privacy.keys import MasterKey

    master = MasterKey(ring=(("v1", KEY),), development=False)
    token = file_token(master, "Morwenna Quinlan 1980-05-17.json")
    assert token.startswith(FILE_TOKEN_PREFIX) and len(token) == len(FILE_TOKEN_PREFIX) + 16
    assert file_token(master, token) == token
    for name in ("file-Morwenna", FILE_TOKEN_PREFIX + "0" * 17, "x" + token[1:]):
        assert file_token(master, name) != name  # only a real token's shape passes through


def test_a_valid_nhs_number_in_any_numeric_column_stops_the_batch():
    from gpdata.errors import GpdataError
    from gpdata.privacy.deid import guard_numeric

    guard_numeric({"observations": pa.table({"value": pa.array([1.5, 9990000019.0]),
                                             "code": ["9990000018", "x"]})}, "A81001")  # text or invalid: fine
    for column in (pa.array([3, 9990000018], pa.int64()), pa.array([9990000018.0]),
                   pa.array([9990000018], pa.uint64())):
        with pytest.raises(GpdataError, match=r"observations.value: 1 value\(s\)") as caught:
            guard_numeric({"observations": pa.table({"value": column})}, "A81001")
        assert "9990000018" not in str(caught.value)


def test_appointments_carry_the_staff_role_and_unmatched_postcodes_are_counted(tmp_path):
    from tests.test_helpers import staged_tables

    staged, counts, _ = staged_tables(tmp_path, ())
    assert staged["appointments"]["staff_role"].to_pylist() == ["R0260"]
    assert counts["unmatched_postcodes"] == 1  # LS2 9XY is not in this lookup
    assert set(counts["restricted_code_records"]) == {"observations", "medications", "appointments"}  # with rows
    assert [n for n, t in staged.items() if "staff_role" in t.column_names] == ["appointments"]
