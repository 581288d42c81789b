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
