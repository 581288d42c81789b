"""Quality: row rules (reasoned quarantine, never values) and the Great Expectations suites that gate a practice's
staged batch; a failing batch is never committed.
"""

from gpdata.quality.rules import (
    GateResult,
    add_expectations,
    gate,
    gate_rows,
    row_reasons,
    run_suites,
    run_suites_together,
    volume_failures,
)
from gpdata.quality.stream import fits_one_batch, gate_rows_streamed, run_suites_streamed

__all__ = ["GateResult", "add_expectations", "fits_one_batch", "gate", "gate_rows", "gate_rows_streamed", "row_reasons",
           "run_suites", "run_suites_streamed", "run_suites_together", "volume_failures"]
