"""Source adapters: each turns one practice delivery into the canonical Arrow tables of gpdata.model."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa

from gpdata.errors import ConfigError


def read_delivery(fmt: str, location: Path, practice: str) -> dict[str, pa.Table]:
    """Read a practice's delivery in the given source format into canonical tables."""
    if fmt == "fhir":
        from gpdata.sources.fhir import read_bundles

        return read_bundles(location, practice)
    raise ConfigError(f"unknown source format {fmt!r}", practice=practice)
