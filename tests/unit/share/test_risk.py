"""The risk report's figures against a small example computed by hand."""

import pyarrow as pa
import pytest
from hypothesis import given
from hypothesis import strategies as st

from gpdata.share import risk

# (patient, birth year, sex, local authority). Classes by hand: (1980,F,A) 3, (1980,M,A) 2, (1990,F,B) 4,
# (1975,M,B) 1. Record class sizes: 3,3,3,2,2,4,4,4,4,1 -> k 1, median 3, 1 unique of 10, all below 5 and 10.
PEOPLE = [("p1", 1980, "F", "A"), ("p2", 1980, "F", "A"), ("p3", 1980, "F", "A"), ("p4", 1980, "M", "A"),
          ("p5", 1980, "M", "A"), ("p6", 1990, "F", "B"), ("p7", 1990, "F", "B"), ("p8", 1990, "F", "B"),
          ("p9", 1990, "F", "B"), ("p10", 1975, "M", "B")]


def _patients(rows=PEOPLE):
    return pa.table({"patient_pid": [r[0] for r in rows], "birth_year": pa.array([r[1] for r in rows], pa.int16()),
                     "sex": [r[2] for r in rows], "lad_code": [r[3] for r in rows]})


def test_k_anonymity_by_hand():
    patients = _patients()
    qis = risk.quasi_identifiers(patients)
    assert qis == ["birth_year", "sex", "lad_code"]
    assert risk.k_anonymity(patients, qis) == {
        "records": 10, "classes": 4, "k": 1, "median_k": 3.0, "unique_share": 0.1, "share_below_5": 1.0,
        "share_below_10": 1.0}

def test_k_over_one_column_and_nulls_as_a_value():
    patients = _patients()
    assert risk.k_anonymity(patients, ["sex"])["k"] == 3          # F 7, M 3
    blank = patients.set_column(2, "sex", pa.array([None] * 10, pa.string()))
    assert risk.k_anonymity(blank, ["sex"])["k"] == 10


def test_linkage_by_hand():
    patients = _patients()
    # p10 is the only 1975 male in area B of the extract: one unique match in ten.
    assert risk.linkage(patients, None) == {"auxiliary": ["birth", "sex", "area"], "unique_match_share": 0.1}
    # The population holds another 1975 male of area B: the intruder cannot be sure.
    population = _patients(PEOPLE + [("p11", 1975, "M", "B")])
    assert risk.linkage(patients, population)["certain_match_share"] == 0.0
    assert risk.linkage(patients, _patients())["certain_match_share"] == 0.1


def test_l_diversity_by_hand():
    patients = _patients()
    obs = pa.table({"patient_pid": ["p1", "p2", "p3", "p4", "p5", "p7", "p8", "p9", "p10"],
                    "code": ["X", "X", "Y", "X", "X", "Z", "Z", "Z", "X"]})
    # (1980,F,A) {X,Y} 2; (1980,M,A) {X} 1; (1990,F,B) {none (p6), Z} 2; (1975,M,B) {X} 1.
    assert risk.l_diversity(patients, risk.quasi_identifiers(patients), obs, "code") == {
        "attribute": "code", "l": 1, "classes_below_2": 2}


def test_report_counts_rare_codes_left_and_checks_minimum_k():
    patients = _patients()
    obs = pa.table({"patient_pid": ["p1", "p2", "p3", "p1"], "code": ["X", "X", "X", "Y"]})
    out = risk.report(patients, {"patients": patients, "observations": obs}, population=None,
                      sensitive=("observations", "code"), rare={"min_patients": 3, "rare_codes": 1}, minimum_k=5)
    assert out["k"] == 1 and not out["meets_minimum_k"]
    assert out["rare_codes"]["remaining"] == 1  # Y is held by one patient; X by three
    assert out["l_diversity"]["l"] == 1


@pytest.mark.parametrize("k", [2, 3, 5])
def test_local_suppression_reaches_k_by_hand(k):
    patients = _patients()
    qis = risk.quasi_identifiers(patients)
    out, blanked = risk.suppress_small_classes(patients, qis, k)
    assert risk.k_anonymity(out, qis)["k"] >= k
    # k=2: only p10's class (1) is blanked, but 1 < 2, so the next smallest (2) joins it: 3 records.
    assert blanked == {2: 3, 3: 3, 5: 10}[k]


@given(st.lists(st.tuples(st.sampled_from([1970, 1980, 1990]), st.sampled_from("FM"), st.sampled_from("AB")),
                min_size=1, max_size=40), st.integers(min_value=1, max_value=6))
def test_k_is_the_smallest_count_of_any_combination(rows, k):
    patients = _patients([(f"p{i}", *r) for i, r in enumerate(rows)])
    qis = risk.quasi_identifiers(patients)
    counts = {r: rows.count(r) for r in rows}
    got = risk.k_anonymity(patients, qis)
    assert got["k"] == min(counts.values())
    assert got["unique_share"] == round(sum(1 for r in rows if counts[r] == 1) / len(rows), 4)
    out, _ = risk.suppress_small_classes(patients, qis, k)
    assert risk.k_anonymity(out, qis)["k"] >= min(k, len(rows))
