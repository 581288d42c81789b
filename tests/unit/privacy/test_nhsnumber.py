import pyarrow as pa
from hypothesis import given
from hypothesis import strategies as st

from gpdata.privacy import nhsnumber


def test_modulus_11_accepts_valid_and_rejects_others():
    values = pa.array(["9990000018", "9990000019", "943476591", "94347659190", "99900000AB", None, ""])
    assert nhsnumber.is_valid(values).to_pylist() == [True, False, False, False, False, False, False]


def test_known_published_example_and_check_digit_ten():
    # 943 476 5919 is the NHS Digital worked example; a remainder giving check 10 can never be valid.
    assert nhsnumber.is_valid(pa.array(["9434765919"])).to_pylist() == [True]
    assert nhsnumber.check_digit("943476591") == 9
    nine = next(f"{n:09d}" for n in range(999000000, 999001000) if nhsnumber.check_digit(f"{n:09d}") is None)
    assert all(not v for v in nhsnumber.is_valid(pa.array([nine + str(d) for d in range(10)])).to_pylist())


def test_normalise_spaces_and_hyphens():
    out = nhsnumber.normalise(pa.array(["999 000 0018", "999-000-0018", " 9990000018 "]))
    assert out.to_pylist() == ["9990000018"] * 3


def test_only_the_data_dictionary_grouping_is_normalised():
    out = nhsnumber.normalise(pa.array(["999 000 0018", "999-000-0018", "9990000018", "99 9000 0018",
                                        "999 0000 018", "999 000-0018", "999  000 0018", None]))
    assert out.to_pylist()[:3] == ["9990000018"] * 3
    assert nhsnumber.is_valid(out).to_pylist() == [True, True, True, False, False, False, False, False]


@given(st.text(max_size=12))
def test_check_digit_never_raises(text):
    result = nhsnumber.check_digit(text)
    assert result is None or (0 <= result <= 9 and len(text) == 9 and text.isdigit())
    assert nhsnumber.check_digit("123456") is None and nhsnumber.check_digit("12345678a") is None
