"""NHS numbers: normalisation and the Modulus 11 check, vectorised over Arrow arrays."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

_WEIGHTS = np.arange(10, 1, -1, dtype=np.int64)  # 10..2 for the first nine digits
_POWERS = 10 ** np.arange(9, -1, -1, dtype=np.int64)


def normalise(values: pa.Array | pa.ChunkedArray) -> pa.Array | pa.ChunkedArray:
    """Ten digits from the NHS Data Dictionary format (3-3-4: "943 476 5919", "943-476-5919") or ten plain digits,
    surrounding white space removed. Any other grouping ("01 2345 6789") is left as written, so it fails
    ``is_valid`` (an odd grouping is not a number a clinical system would show)."""
    trimmed = pc.utf8_trim_whitespace(values)
    for sep in (" ", "-"):
        trimmed = pc.replace_substring_regex(trimmed, pattern=rf"^(\d{{3}}){sep}(\d{{3}}){sep}(\d{{4}})$",
                                             replacement=r"\1\2\3")
    return trimmed


def is_valid(values: pa.Array | pa.ChunkedArray) -> pa.Array:
    """True where a normalised value is ten digits with a correct Modulus 11 check digit.

    Null and malformed values are False, never null.
    """
    arr = values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values
    shaped = pc.fill_null(pc.match_substring_regex(arr, r"^\d{10}$"), False)
    ints = pc.cast(pc.if_else(shaped, arr, "0"), pa.int64()).to_numpy(zero_copy_only=False)
    digits = (ints[:, None] // _POWERS) % 10
    remainder = (digits[:, :9] * _WEIGHTS).sum(axis=1) % 11
    check = 11 - remainder
    check = np.where(check == 11, 0, check)
    ok = (check != 10) & (check == digits[:, 9]) & shaped.to_numpy(zero_copy_only=False)
    return pa.array(ok, type=pa.bool_())


def check_digit(first_nine: str) -> int | None:
    """The check digit for nine digits, or None where there is none: the remainder is 10, or the text is not
    nine digits (never an exception)."""
    if not isinstance(first_nine, str) or len(first_nine) != 9 or not first_nine.isascii() \
            or not first_nine.isdigit():
        return None
    total = sum(int(d) * w for d, w in zip(first_nine, range(10, 1, -1), strict=True))
    check = 11 - total % 11
    if check == 11:
        return 0
    return None if check == 10 else check


def in_numbers(values: pa.Array | pa.ChunkedArray) -> pa.Array:
    """True where a numeric value is a whole number of ten digits that passes the Modulus 11 check: an NHS
    number sent as a number (a result typed into the wrong field). Nulls and other values are False."""
    arr = values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values
    if not (pa.types.is_integer(arr.type) or pa.types.is_floating(arr.type) or pa.types.is_decimal(arr.type)):
        return pa.array(np.zeros(len(arr), dtype=bool), pa.bool_())
    x = pc.cast(arr, pa.float64()).to_numpy(zero_copy_only=False)
    with np.errstate(invalid="ignore"):
        whole = np.isfinite(x) & (x >= 1e9) & (x < 1e10) & (np.floor(x) == x)
    out = np.zeros(len(x), dtype=bool)
    if whole.any():  # only the ten-digit whole numbers are checked as text
        out[whole] = is_valid(pa.array(x[whole].astype(np.int64).astype(str), pa.string())).to_numpy(
            zero_copy_only=False)
    return pa.array(out, pa.bool_())
