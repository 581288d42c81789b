"""Check-digit helpers, identifiers and the code tables."""

from __future__ import annotations

import numpy as np
import pytest

from gpdata.synth import codes as C
from gpdata.synth.checks import (
    nhs_check_digit,
    nhs_number_in_test_range,
    nhs_number_valid,
    verhoeff_check_digit,
    verhoeff_valid,
)
from gpdata.synth.identifiers import IdStream, invalid_nhs_number, nhs_number_pool, ods_codes, spaced
from gpdata.synth.people import N_SLOTS, build_area


@pytest.mark.parametrize("code", ["22298006", "195967001", "827241000000103", "827261000000102", "2363",
                                  "44054006", "319283006"])
def test_verhoeff_accepts_real_ids(code: str) -> None:
    assert verhoeff_valid(code)
    assert verhoeff_check_digit(code[:-1]) == code[-1]


@pytest.mark.parametrize("code", ["22298007", "195967002", "", "12a4", "UNKNOWN", "2364"])
def test_verhoeff_rejects(code: str) -> None:
    assert not verhoeff_valid(code)


def test_verhoeff_catches_every_single_digit_error() -> None:
    code = "827241000000103"
    for i in range(len(code)):
        for d in "0123456789":
            if d != code[i]:
                assert not verhoeff_valid(code[:i] + d + code[i + 1:])


def test_nhs_modulus_11() -> None:
    assert nhs_check_digit("943476591") == 9
    assert nhs_number_valid("9434765919")
    assert nhs_number_valid("943 476 5919")
    assert not nhs_number_valid("9434765918")
    assert not nhs_number_valid("943476591")
    assert not nhs_number_valid("94347659A9")
    # remainder 10 means no valid number exists for the nine digits
    first9 = next(f"{999000000 + i}" for i in range(1000) if nhs_check_digit(f"{999000000 + i}") is None)
    assert not any(nhs_number_valid(first9 + str(d)) for d in range(10))


def test_nhs_pool_is_the_whole_valid_test_range() -> None:
    pool = nhs_number_pool(5)
    assert 900_000 < pool.size < 920_000
    assert np.unique(pool).size == pool.size
    sample = [str(x) for x in pool[:2000].tolist()]
    assert all(nhs_number_valid(s) and nhs_number_in_test_range(s) for s in sample)
    assert not np.array_equal(pool[:100], nhs_number_pool(6)[:100])


def test_invalid_nhs_numbers_are_invalid() -> None:
    valid = [str(x) for x in nhs_number_pool(1)[:50].tolist()]
    for v in valid:
        for kind in range(3):
            for digit in range(10):
                assert not nhs_number_valid(invalid_nhs_number(v, kind, digit))
    assert spaced("9991234567") == "999 123 4567"


def test_ods_codes() -> None:
    codes = ods_codes(42, 50)
    assert len(set(codes)) == 50
    assert all(len(c) == 6 and c[0].isalpha() and c[0].isupper() and c[1:].isdigit() for c in codes)
    assert codes == ods_codes(42, 50)
    assert codes != ods_codes(43, 50)


def test_ids_are_uuid_shaped_and_deterministic() -> None:
    a = IdStream(np.random.default_rng(1), chunk=4)
    b = IdStream(np.random.default_rng(1), chunk=4)
    ids = [a.next() for _ in range(20)]
    assert ids == [b.next() for _ in range(20)]
    assert len(set(ids)) == 20
    for i in ids:
        parts = i.split("-")
        assert [len(p) for p in parts] == [8, 4, 4, 4, 12]
        assert parts[2][0] == "4" and parts[3][0] in "89ab"
        int(i.replace("-", ""), 16)


def test_areas_do_not_overlap() -> None:
    seen_pc: set[str] = set()
    seen_lsoa: set[str] = set()
    for slot in (0, 1, 59, 60, 61, 299):
        area = build_area(slot)
        assert 30 <= len(set(area.lsoas)) <= 80
        assert len(set(area.postcodes)) == len(area.postcodes)
        assert not seen_pc & set(area.postcodes)
        assert not seen_lsoa & set(area.lsoas)
        seen_pc |= set(area.postcodes)
        seen_lsoa |= set(area.lsoas)
    assert build_area(N_SLOTS + 3) == build_area(3)


def test_every_valid_snomed_and_dmd_code_passes_verhoeff() -> None:
    lib = C.CodeLibrary()
    codes = lib.valid_codes()
    assert len(codes) > 500
    for system, code in codes:
        if system in (C.SNOMED, C.DMD):
            assert verhoeff_valid(code), (system, code)
            # a concept id: 6-18 digits, no leading zero, partition 00 (core) or 10 (extension)
            assert 6 <= len(code) <= 18 and code[0] != "0" and code[-3:-1] in ("00", "10"), code
        else:
            assert system in (C.READ_V2, C.CTV3)
            assert len(code) == 5


def test_hand_tables_pass_verhoeff() -> None:
    tables = [C.ALLERGIES, C.SEXUAL_ORIENTATION, C.SYMPTOMS, C.REFERRALS, C.ANTIHYPERTENSIVES]
    for table in tables:
        for row in table:
            assert verhoeff_valid(row[0]), row
    for code, _ in C.VACCINES.values():
        assert verhoeff_valid(code)
    for code, _, _ in C.RECALLS.values():
        assert verhoeff_valid(code)
    for system, code, _ in C.OPTOUT_DISSENT + C.OPTOUT_WITHDRAWN:
        assert system != C.SNOMED or verhoeff_valid(code)


def test_antihypertensives_come_from_the_hypertension_list() -> None:
    lib = C.CodeLibrary()
    rows = C.read_codelist(C.DEFAULT_CODELIST_DIR / "user-elsie_horne-hypertension_drugs_dmd.csv")
    ids = {r["code"] for r in rows}
    table = lib.drugs["antihypertensive"].table
    assert len(table) >= 10
    assert all(c["code"] in ids for c in table.codings)


def test_code_library_rejects_missing_dir(tmp_path) -> None:
    with pytest.raises(FileNotFoundError):
        C.CodeLibrary(tmp_path / "nope")
