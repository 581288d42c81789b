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


def emis_incremental_practice(home, *, n_patients: int, events_per_patient: float, seed: int):
    """A generated practice's records delivered as the first delivery of an incremental emis_csv feed under
    ``home/inbox``: (its canonical tables, the feed, the dialect)."""
    from gpdata.ingest.dialects import load_dialect
    from gpdata.ingest.feeds import Feed
    from gpdata.ingest.sources.flatfile import write_delivery
    from gpdata.synth import exports, generate

    ods = generate(home, n_practices=1, n_patients=n_patients, events_per_patient=events_per_patient,
                   dirty_fraction=0.0, seed=seed)[0].ods_code
    canonical = exports.canonical_of(home / "sources" / ods, ods)
    dialect = load_dialect("emis_csv")
    write_delivery(canonical, home / "inbox" / ods, ods, dialect, exports.FIRST_STAMP)
    feed = Feed(ods_code=ods, name="p", location=str(home / "inbox" / ods), format="flatfile", dialect="emis_csv",
                mode="incremental", max_quarantine_fraction=0.5)
    return canonical, feed, dialect


def in_batches(table, rows: int, fail_after: int | None = None):
    """A table as ``store.Batches`` of ``rows`` rows; with ``fail_after``, reading stops with an error after that
    many batches (a worker losing its staged file midway)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from gpdata import store

    def open_():
        def batches():
            for i, batch in enumerate(table.to_batches(max_chunksize=rows)):
                if i == fail_after:
                    raise OSError("staged file lost")
                yield batch
        return pa.RecordBatchReader.from_batches(table.schema, batches())

    versions = pc.unique(table["key_version"]).to_pylist() if "key_version" in table.column_names else []
    return store.Batches(open_, frozenset(versions))
