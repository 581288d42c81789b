"""Measurement values to the configured unit, by UCUM (ucumvert: the UCUM grammar over pint).

The first unit of each measurement in include/config/quality.yaml is the one values are stored in. A value in
another UCUM unit of the same dimension (a height in ``m`` or ``[in_i]``, a weight in ``g`` or ``[lb_av]``) is
converted; a unit that UCUM does not define, one of another dimension, an offset unit (``Cel``) and any
dimensionless ratio (``%`` against ``mmol/mol``: an HbA1c percentage is not a unit conversion of mmol/mol) are
left as they are, for the row rules to quarantine as ``unexpected_unit``.
"""

from __future__ import annotations

from functools import lru_cache

import pyarrow as pa
import pyarrow.compute as pc

from gpdata.quality import suites


@lru_cache(maxsize=1)
def _registry():
    from ucumvert import PintUcumRegistry

    return PintUcumRegistry()


@lru_cache(maxsize=4096)
def factor(source: str, target: str) -> float | None:
    """What a value in UCUM unit ``source`` is multiplied by to be in ``target``, or None when that is not a
    plain conversion between two units of one (non-dimensionless) dimension."""
    if source == target:
        return 1.0
    ureg = _registry()
    try:
        src, dst = ureg.from_ucum(source), ureg.from_ucum(target)
        if src.dimensionless or dst.dimensionless or src.dimensionality != dst.dimensionality:
            return None
        if (0 * src).to(dst.units).magnitude != 0:  # an offset scale (temperatures): not a multiplication
            return None
        out = float(src.to(dst.units).magnitude / dst.magnitude)
    except Exception:  # noqa: BLE001 - any unit UCUM cannot parse or pint cannot convert stays as delivered
        return None
    return out if out > 0 and out == out else None


def to_configured(table: pa.Table) -> tuple[pa.Table, int]:
    """Observations (with ``code``, ``value``, ``unit``) whose measurement value is in another unit than the
    configured one, converted where UCUM allows it. Returns the table and how many values were converted. Loops
    run over the distinct units only."""
    if table.num_rows == 0 or not {"code", "value", "unit"} <= set(table.column_names):
        return table, 0
    code, value, unit = (table[c].combine_chunks() for c in ("code", "value", "unit"))
    converted = 0
    for m in suites.measurements():
        if not m.units:
            continue
        target = m.units[0]
        mask = pc.fill_null(pc.and_(pc.and_(pc.is_in(code, value_set=pa.array(m.codes, pa.string())),
                                            pc.is_valid(value)),
                                    pc.invert(pc.is_in(unit, value_set=pa.array(m.units, pa.string())))), False)
        if not pc.any(mask).as_py():
            continue
        units = [u for u in pc.unique(unit.filter(mask)).to_pylist() if u is not None]
        factors = {u: factor(u, target) for u in units}
        convertible = [u for u, fct in factors.items() if fct is not None]
        if not convertible:
            continue
        at = pc.index_in(unit, value_set=pa.array(convertible, pa.string()))
        row_factor = pc.take(pa.array([factors[u] for u in convertible], pa.float64()), at)
        hit = pc.and_(mask, pc.is_valid(row_factor))
        converted += pc.sum(hit).as_py() or 0
        value = pc.if_else(hit, pc.multiply(value, row_factor), value)
        unit = pc.if_else(hit, pa.scalar(target, pa.string()), unit)
    if not converted:
        return table, 0
    table = table.set_column(table.column_names.index("value"), table.schema.field("value"), value)
    table = table.set_column(table.column_names.index("unit"), table.schema.field("unit"), unit)
    return table, converted
