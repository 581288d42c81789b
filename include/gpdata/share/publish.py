"""Which outputs are publishable and which are access-controlled (docs/disclosure.md).

Publishable files may be read by anyone: every count in them is suppressed with one deterministic rule
(``suppress``: 0 stays 0, 1-7 redacted, the rest rounded to the nearest 5), so the same count is published the
same way everywhere (consistent rounding) and no exact non-zero count is ever published: a redacted cell cannot
be recovered by differencing a total and its other parts, since every published operand is only known to
within +-2. Exact counts live only in access-controlled files.
"""

from __future__ import annotations

from pathlib import Path

REDACTED = "[REDACTED]"

PUBLISHABLE = {
    "register/register.csv": "the public data release register",
    "register/register.html": "the public data release register",
    "extracts/<project>/<release>/summary.json": "an extract's aggregate summary",
}
ACCESS_CONTROLLED = {
    "extracts/<project>/<release>/manifest.json": "exact row counts and file checksums, for the recipient",
    "extracts/<project>/<release>/risk.json": "the re-identification risk report, exact class sizes",
    "extracts/<project>/<release>/*.parquet": "the extract itself, for the recipient",
    "store/_audit/": "the hash-chained audit log, exact counts",
    "store/_manifests/": "run manifests, exact counts per practice and stage",
    "store/_erasures/": "erasure log, counts",
    "store/_quality/, store/_docs/": "quality results and Data Docs, counts",
    "GP data page, gpdata summary": "operators' views of the manifests, behind Airflow's authentication",
}


def suppress(n: int) -> int | str:
    """Small-number suppression for published counts: 1-7 redacted, the rest rounded to the nearest 5."""
    if n == 0:
        return 0
    if n <= 7:
        return REDACTED
    return int(5 * round(n / 5))


def publishable_files(home: Path, register: Path, extracts: Path) -> list[Path]:
    """Every publishable file that exists under these folders."""
    files = [register / "register.csv", register / "register.html"]
    files += sorted(Path(extracts).glob("*/*/summary.json"))
    return [f for f in files if f.exists()]
