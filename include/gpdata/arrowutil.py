"""Small Arrow helpers shared by the pipeline stages."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc


def const(value: str, n: int) -> pa.Array:
    """A string column holding one value ``n`` times."""
    return pa.array([value] * n, pa.string())


def first_reason(n: int, rules: list[tuple[pa.Array, str]]) -> pa.Array:
    """Per row, the reason of the first rule whose condition holds (nulls count as not holding), else null."""
    out = pa.nulls(n, pa.string())
    for cond, reason in reversed(rules):
        out = pc.if_else(pc.fill_null(cond, False), const(reason, n), out)
    return out
