"""Quality: row rules (reasoned quarantine, never values) and the Great Expectations suites that gate a practice's
staged batch; a failing batch is never committed.
"""

from gpdata.quality.rules import GateResult, gate, row_reasons, run_suites, volume_failures

__all__ = ["GateResult", "gate", "row_reasons", "run_suites", "volume_failures"]
