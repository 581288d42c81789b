"""Deterministic identifiers: NHS numbers (reserved test range only), ODS codes, resource ids."""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from .checks import nhs_check_digit

# Stream tags: seeds derived as (seed, tag) so they never collide with the (seed, practice index) streams.
TAG_NHS = 1_000_003
TAG_ODS = 1_000_004
TAG_NDOP = 1_000_005
TAG_SLOTS = 1_000_006

_BASE_LOW = 999_000_000  # first nine digits of 9990000000
_N_BASES = 1_000_000


@lru_cache(maxsize=4)
def nhs_number_pool(seed: int) -> np.ndarray:
    """All valid NHS numbers in the reserved test range 999 000 0000 - 999 999 9999 (about 909,000), in an
    order fixed by `seed`.  Practices take disjoint slices, so numbers never repeat within a run."""
    bases = np.arange(_BASE_LOW, _BASE_LOW + _N_BASES, dtype=np.int64)
    total = np.zeros(_N_BASES, dtype=np.int64)
    for i, w in enumerate(range(10, 1, -1)):
        total += (bases // 10 ** (8 - i)) % 10 * w
    check = 11 - total % 11
    check[check == 11] = 0
    ok = check != 10
    numbers = bases[ok] * 10 + check[ok]
    rng = np.random.default_rng([seed, TAG_NHS])
    out = numbers[rng.permutation(numbers.size)]
    out.setflags(write=False)
    return out


def spaced(number: str) -> str:
    """'9991234567' -> '999 123 4567'."""
    return f"{number[:3]} {number[3:6]} {number[6:]}"


def invalid_nhs_number(valid: str, kind: int, digit: int) -> str:
    """A deliberately invalid NHS number derived from a valid one.

    kind 0: wrong check digit (still 10 digits in the test range); kind 1: nine digits; kind 2: a letter
    in place of a digit.  `digit` (0-9) picks the variation."""
    if kind == 0:
        good = int(valid[9])
        bad = (good + 1 + digit % 9) % 10  # never the right digit
        return valid[:9] + str(bad)
    if kind == 1:
        return valid[:9]
    pos = 3 + digit % 7
    return valid[:pos] + "ABEHKMOSXZ"[digit] + valid[pos + 1:]


def ods_codes(seed: int, n: int) -> list[str]:
    """`n` distinct GP-practice-style ODS codes (one letter + five digits), fixed by `seed`."""
    rng = np.random.default_rng([seed, TAG_ODS])
    letters = "ABCDEFGHJKLMNP"
    out: list[str] = []
    seen: set[str] = set()
    while len(out) < n:
        code = f"{letters[int(rng.integers(len(letters)))]}{int(rng.integers(80000, 90000)):05d}"
        if code not in seen:
            seen.add(code)
            out.append(code)
    return out


_VARIANT = {c: "89ab"[int(c, 16) & 3] for c in "0123456789abcdef"}


class IdStream:
    """UUID-format (version 4 layout) ids drawn from a numpy Generator, buffered for speed."""

    def __init__(self, rng: np.random.Generator, chunk: int = 8192) -> None:
        self._rng = rng
        self._chunk = chunk
        self._hex = ""
        self._pos = 0

    def next(self) -> str:
        if self._pos + 32 > len(self._hex):
            self._hex = self._rng.bytes(16 * self._chunk).hex()
            self._pos = 0
        h = self._hex[self._pos:self._pos + 32]
        self._pos += 32
        return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{_VARIANT[h[16]]}{h[17:20]}-{h[20:]}"


def check_digit_ok(number: str) -> bool:
    return len(number) == 10 and number.isdigit() and nhs_check_digit(number[:9]) == int(number[9])
