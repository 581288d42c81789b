"""CSV formula neutralisation: a formula character first, after leading whitespace, or a leading tab/CR."""

import csv
import io

from hypothesis import given, settings
from hypothesis import strategies as st

from gpdata.share import csvsafe

WHITESPACE = st.text(alphabet=" \t\r\n\x0b\x0c\u00a0\u2003", max_size=6)
FORMULA = st.sampled_from(csvsafe.FORMULA_CHARS)


def _read_back(values: list[str]) -> list[str]:
    rows = [{"cell": v} for v in values]
    return [r["cell"] for r in csv.DictReader(io.StringIO(csvsafe.dumps(["cell"], rows)))]


def test_leading_whitespace_or_newline_before_a_formula_is_neutralised():
    for value in (" =1+1", "\n=HYPERLINK(\"http://x\")", "\r\n@SUM(A1)", "  \t-2+3", "\u00a0+cmd|' /c calc'!A0",
                  "\t=1", "\r=1", "=1", "\uff1d1+1"):
        assert csvsafe.neutralise(value) == "'" + value, repr(value)
    for value in ("Leeds Teaching Hospitals", " plain text", "a=b", "", "email@example.org"):
        assert csvsafe.neutralise(value) == value
    assert csvsafe.neutralise(-5) == -5  # numbers are not text: unchanged


@settings(max_examples=300, deadline=None)
@given(WHITESPACE, FORMULA, st.text(max_size=20))
def test_any_whitespace_then_a_formula_character_is_neutralised_and_survives_a_csv_round_trip(space, char, rest):
    value = space + char + rest
    assert csvsafe.neutralise(value).startswith("'")
    assert _read_back([value]) == ["'" + value]


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=30))
def test_no_cell_read_back_from_the_csv_can_start_a_formula(value):
    (cell,) = _read_back([value])
    assert cell == value or cell == "'" + value
    if cell == value:
        assert not cell.lstrip().startswith(csvsafe.FORMULA_CHARS) and not cell.startswith(("\t", "\r"))
