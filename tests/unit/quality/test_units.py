import pyarrow as pa
import pytest
from hypothesis import given
from hypothesis import strategies as st

from gpdata.quality import units

HEIGHT, WEIGHT, HBA1C, BMI = "139977008", "139985004", "999791000000106", "60621009"


def _obs(rows):
    return pa.table({"code": pa.array([r[0] for r in rows], pa.string()),
                     "value": pa.array([r[1] for r in rows], pa.float64()),
                     "unit": pa.array([r[2] for r in rows], pa.string())})


def test_values_in_other_ucum_units_become_the_configured_unit():
    table, n = units.to_configured(_obs([(HEIGHT, 1.72, "m"), (HEIGHT, 70, "[in_i]"), (WEIGHT, 70000, "g"),
                                         (BMI, 27.5, "kg/m2"), ("123", 5, "m"), (HEIGHT, None, "m")]))
    got = list(zip(table["value"].to_pylist(), table["unit"].to_pylist(), strict=True))
    assert n == 3
    assert got[0] == (pytest.approx(172.0), "cm") and got[1] == (pytest.approx(177.8), "cm")
    assert got[2] == (pytest.approx(70.0), "kg")
    assert got[3:] == [(27.5, "kg/m2"), (5.0, "m"), (None, "m")]  # configured, not a measurement, no value


def test_what_is_not_a_unit_conversion_is_left_for_the_unexpected_unit_rule():
    # an HbA1c percentage is not mmol/mol times a factor; kg is not a length; Cel is an offset scale
    table, n = units.to_configured(_obs([(HBA1C, 6.5, "%"), (HEIGHT, 70, "kg"), (HEIGHT, 5, "nonsense]["),
                                         (WEIGHT, 36, "Cel")]))
    assert n == 0 and table["value"].to_pylist() == [6.5, 70.0, 5.0, 36.0]
    assert units.factor("%", "mmol/mol") is None and units.factor("Cel", "K") is None


@given(st.text(max_size=12))
def test_any_unit_text_gives_a_factor_or_none(text):
    result = units.factor(text, "cm")
    assert result is None or result > 0
