"""Bench input: synthetic practices made with gpdata's generator, delivered as FHIR bundles and as flat files.

Generation is slow next to the pipeline (it builds every resource in Python), so it is never timed, and each
practice set is made once per run (or reused from ``--cache DIR`` when the same arguments made it before).
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

FLATFILE_DIALECTS = ("emis_csv", "tpp_pipe")
SEED = 11


@dataclass(frozen=True)
class PracticeSet:
    """``n`` generated practices under ``home``: FHIR in sources/<ODS>, flat files in sources/<ODS>-<dialect>."""

    home: Path
    ods_codes: tuple[str, ...]
    patients: int
    events_per_patient: float
    formats: tuple[str, ...]
    generate_seconds: float

    def folder(self, ods: str, fmt: str) -> Path:
        return self.home / "sources" / (ods if fmt == "fhir" else f"{ods}-{fmt}")

    def feed(self, ods: str, fmt: str):
        from gpdata.ingest.feeds import Feed

        fields = {"format": "fhir"} if fmt == "fhir" else {"format": "flatfile", "dialect": fmt,
                                                             "mode": "baseline"}
        return Feed(ods_code=ods, name="bench", supplier="synthetic", location=str(self.folder(ods, fmt)), **fields)


def practice_set(root: Path, n_practices: int, patients: int, events_per_patient: float,
                 formats: tuple[str, ...] = ("fhir", "emis_csv")) -> PracticeSet:
    """Generate (or reuse from ``root``) ``n_practices`` practices of ``patients`` patients."""
    from gpdata.synth import generate
    from gpdata.synth.exports import export_flatfile

    name = f"p{n_practices}x{patients}x{events_per_patient:g}-s{SEED}"
    home = root / name
    done = home / "bench-input.json"
    if done.exists():
        doc = json.loads(done.read_text())
        missing = [f for f in formats if f not in doc["formats"]]
        if not missing:
            return PracticeSet(home=home, ods_codes=tuple(doc["ods_codes"]), patients=patients,
                               events_per_patient=events_per_patient, formats=tuple(doc["formats"]),
                               generate_seconds=doc["generate_seconds"])
    shutil.rmtree(home, ignore_errors=True)
    home.mkdir(parents=True)
    t0 = time.perf_counter()
    truths = generate(home, n_practices=n_practices, n_patients=patients, events_per_patient=events_per_patient,
                      seed=SEED)
    codes = tuple(t.ods_code for t in truths)
    for ods in codes:
        for fmt in formats:
            if fmt in FLATFILE_DIALECTS:
                export_flatfile(home / "sources" / ods, home / "sources" / f"{ods}-{fmt}", ods, fmt)
    seconds = time.perf_counter() - t0
    ps = PracticeSet(home=home, ods_codes=codes, patients=patients, events_per_patient=events_per_patient,
                     formats=tuple(formats), generate_seconds=round(seconds, 1))
    done.write_text(json.dumps({**asdict(ps), "home": str(home)}))
    return ps
