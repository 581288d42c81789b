"""Shared test helpers that need the library (kept out of conftest so they can be imported)."""

from gpdata import codes
from gpdata.ingest.sources.fhir import read_bundles
from gpdata.privacy import keys
from gpdata.privacy.deid import PostcodeLookup, Pseudonymiser, deidentify
from gpdata.privacy.type1 import apply_type1
from tests import factory as f
from tests.conftest import TEST_KEY, practice_resources


def staged_tables(tmp_path, extra, ods="A81001"):
    """The factory practice (plus extra resources), read, opted-out and de-identified:
    (staged tables, de-identification counts, master key)."""
    src = tmp_path / "src"
    f.write_bundle(src, practice_resources(ods) + list(extra))
    lookup = PostcodeLookup.load(f.write_lookup(tmp_path / "lookup.csv", [("LS1 4AB", "E01000001")]))
    tables, _ = apply_type1(read_bundles(src, ods), codes.optout_codes())
    master = keys.load_master_key({keys.KEY_ENV: TEST_KEY})
    staged, counts = deidentify(tables, ods, Pseudonymiser(master), lookup, codes.restricted_codes())
    return staged, counts, master
