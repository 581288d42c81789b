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

__all__ = ["GateResult", "add_expectations", "gate", "gate_rows", "row_reasons", "run_suites", "run_suites_together",
           "volume_failures"]
