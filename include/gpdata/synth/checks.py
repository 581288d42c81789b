"""Check digits for the generator and its tests, from the library (one implementation of each).

* NHS numbers: Modulus 11 over the first nine digits, weights 10..2 (gpdata.privacy.nhsnumber).
* SNOMED CT / dm+d identifiers: Verhoeff check digit on the whole identifier (gpdata.codes).
"""

from __future__ import annotations

from gpdata.codes import verhoeff_check_digit
from gpdata.codes import verhoeff_ok as verhoeff_valid
from gpdata.privacy.nhsnumber import check_digit as nhs_check_digit

__all__ = ["nhs_check_digit", "nhs_number_in_test_range", "nhs_number_valid", "verhoeff_check_digit",
           "verhoeff_valid"]

TEST_RANGE = (9_990_000_000, 9_999_999_999)


def nhs_number_valid(value: str) -> bool:
    """True for a 10-digit string (spaces allowed, as in '999 123 4567') with a valid Modulus 11 check digit."""
    digits = value.replace(" ", "")
    if len(digits) != 10 or not digits.isascii() or not digits.isdigit():
        return False
    return nhs_check_digit(digits[:9]) == int(digits[9])


def nhs_number_in_test_range(value: str) -> bool:
    digits = value.replace(" ", "")
    return digits.isascii() and digits.isdigit() and len(digits) == 10 and (
        TEST_RANGE[0] <= int(digits) <= TEST_RANGE[1]
    )
