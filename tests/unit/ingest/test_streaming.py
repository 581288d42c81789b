"""A flat-file snapshot is extracted in bounded memory: its event files are checked block by block and read
batch by batch (GPDATA_BATCH_ROWS), with the same staged output, counts, type 1 exclusions and errors as when
every table is read whole."""

import csv
import io
import json

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from gpdata import pipeline, settings
from gpdata.errors import SourceError
from gpdata.ingest.dialects import load_dialect
from gpdata.ingest.feeds import Feed
from gpdata.ingest.sources import flatfile
from gpdata.privacy import nhsnumber
from gpdata.synth import exports, generate
from tests.factory import DISSENT, file_token

ODS = "A81001"
DIALECT = load_dialect("emis_csv")


@pytest.fixture
def canonical(home):
    generate(home, n_practices=1, n_patients=50, events_per_patient=60, seed=11, ods_codes=[ODS])
    tables = exports.canonical_of(home / "sources" / ODS, ODS)
    assert tables["observations"].num_rows > 1200  # several batches of 500 rows
    return tables


def _deliver(home, tables, deleted=None):
    inbox = home / "inbox"
    paths = flatfile.write_delivery(tables, inbox, ODS, DIALECT, exports.FIRST_STAMP, deleted=deleted)
    feed = Feed(ods_code=ODS, name="Flat", format="flatfile", dialect="emis_csv", mode="baseline",
                location=str(inbox))
    return feed, paths


def _extract(feed, run_id, monkeypatch, rows=None):
    if rows:
        monkeypatch.setenv("GPDATA_BATCH_ROWS", str(rows))
    else:
        monkeypatch.delenv("GPDATA_BATCH_ROWS", raising=False)
    cfg = settings.load()
    counts = pipeline.extract(feed, cfg, run_id)
    folder = pipeline.staging_dir(cfg, run_id, ODS) / "extracted"
    meta = json.loads((folder / "counts.json").read_text())
    for volatile in ("seconds", "run_id"):
        meta.pop(volatile)
    return counts, folder, meta


def _sorted(table: pa.Table) -> pa.Table:
    return table.sort_by([(c, "ascending") for c in table.column_names])


def test_batches_of_500_rows_stage_what_one_batch_does(home, canonical, monkeypatch):
    obs = canonical["observations"]
    gone = {"observations": obs.slice(0, 7), "medications": canonical["medications"].slice(3, 2)}
    kept = {**canonical, "observations": obs.slice(7)}
    feed, _ = _deliver(home, kept, deleted=gone)
    whole_counts, whole, whole_meta = _extract(feed, "whole", monkeypatch)
    counts, streamed, meta = _extract(feed, "streamed", monkeypatch, rows=500)
    assert pq.ParquetFile(whole / "observations.parquet").metadata.num_row_groups == 1
    assert pq.ParquetFile(streamed / "observations.parquet").metadata.num_row_groups > 2  # really in batches
    assert meta == whole_meta
    assert meta["deleted_by_source"] == {"observations": 7, "medications": 2}
    assert meta["records_read"]["observations"] == obs.num_rows - 7
    assert sorted(p.name for p in streamed.iterdir()) == sorted(p.name for p in whole.iterdir())
    for path in whole.glob("*.parquet"):
        a, b = pq.read_table(path), pq.read_table(streamed / path.name)
        assert a.schema == b.schema, path.name
        assert _sorted(b).equals(_sorted(a)), path.name
    assert pq.read_table(streamed / "deletions.parquet").num_rows == 9


def _first_patient_with_a_valid_number(canonical) -> str:
    patients = canonical["patients"]
    valid = nhsnumber.is_valid(nhsnumber.normalise(patients["nhs_number"]))
    refs = set(patients.filter(valid)["source_id"].to_pylist())
    return next(r for r in canonical["observations"]["patient_ref"].to_pylist() if r in refs)


def test_a_dissent_in_the_last_batch_excludes_the_patients_rows_of_the_first(home, canonical, monkeypatch):
    obs = canonical["observations"]
    ref = _first_patient_with_a_valid_number(canonical)
    dissent = obs.filter(pc.equal(obs["patient_ref"], ref)).slice(0, 1)
    for column, value in (("code", DISSENT), ("code_system", "snomed"),
                          ("source_id", "late-dissent")):
        dissent = dissent.set_column(dissent.schema.get_field_index(column), column,
                                     pa.array([value], dissent.schema.field(column).type))
    tables = {**canonical, "observations": pa.concat_tables([obs, dissent])}  # the last row of the file
    feed, _ = _deliver(home, tables)
    counts, folder, _ = _extract(feed, "r1", monkeypatch, rows=500)
    theirs = [i + 1 for i, r in enumerate(tables["observations"]["patient_ref"].to_pylist()) if r == ref]
    assert theirs[0] <= 500 < theirs[-1]  # rows of the first batch and the dissent in a later one
    staged = pq.read_table(folder / "observations.parquet")
    assert not set(theirs) & set(staged["_src_entry"].to_pylist())
    assert counts["type1_optout"]["records_excluded"]["observations"] >= len(theirs)
    assert staged.num_rows == tables["observations"].num_rows - counts["type1_optout"]["records_excluded"][
        "observations"] - counts["restricted_code_records"].get("observations", 0)


def _edit_line(path, row: int, edit) -> None:
    """Rewrite one data row (the header is row 0) through ``edit(bytes) -> bytes``."""
    lines = path.read_bytes().split(b"\n")
    text = path.read_text()
    assert len(list(csv.reader(io.StringIO(text, newline="")))) == len(lines) - 1  # one line per row
    lines[row] = edit(lines[row])
    path.write_bytes(b"\n".join(lines))


def _cells(line: bytes) -> list[str]:
    return next(csv.reader(io.StringIO(line.decode())))


def _write_cells(cells: list[str]) -> bytes:
    out = io.StringIO()
    csv.writer(out, lineterminator="").writerow(cells)
    return out.getvalue().encode()


def _retyped(line: bytes) -> bytes:
    cells = _cells(line)
    cells[DIALECT.columns("observations").index("NumericValue")] = "high"
    return _write_cells(cells)


DEEP = {  # corruption, cause named, found by
    "NUL byte": (lambda line: line[:5] + b"\x00" + line[5:], "NUL bytes"),              # the file checks
    "invalid UTF-8": (lambda line: line[:5] + b"\xe9" + line[5:], "not valid utf-8"),   # the file checks
    "ragged row": (lambda line: _write_cells(_cells(line)[:-1]), "wrong number of fields"),  # type 1 pass
    "retyped value": (_retyped, "column NumericValue: not a number"),                   # staging pass
}


@pytest.mark.parametrize("case", DEEP)
def test_a_fault_deep_in_a_file_names_its_row_and_quarantines_the_delivery(home, canonical, monkeypatch, case):
    monkeypatch.setattr(flatfile, "BLOCK_BYTES", 4096)  # checked and read in many blocks
    corrupt, cause = DEEP[case]
    feed, paths = _deliver(home, canonical)
    path = next(p for p in paths if "_Observation_" in p.name)
    row = canonical["observations"].num_rows - 3
    assert 3 * 4096 < len(b"\n".join(path.read_bytes().split(b"\n")[:row]))  # well after the first block
    _edit_line(path, row, corrupt)
    monkeypatch.setenv("GPDATA_BATCH_ROWS", "500")
    cfg = settings.load()
    with pytest.raises(SourceError) as err:
        pipeline.extract(feed, cfg, "broken")
    message = str(err.value)
    assert message.startswith(f"practice {ODS}: stage extract: file {file_token(path.name)}: row {row}: "), message
    assert cause in message
    assert not any(p.exists() for p in paths)  # the whole delivery was moved to quarantine
    reason = json.loads(next((cfg.quarantined_deliveries / ODS).glob("*/REASON.json")).read_text())
    assert reason["row"] == row and reason["file"] == path.name
    staging = pipeline.staging_dir(cfg, "broken", ODS)
    assert not (staging / "extracted").exists() and not (staging / "extracted.tmp").exists()


def test_the_file_checks_find_the_same_row_in_one_block_or_many(tmp_path, monkeypatch):
    header = ",".join(DIALECT.columns("allergies")).encode()
    row = b",".join([b"x"] * len(DIALECT.columns("allergies")))
    for fault, cause in ((b"\x00", "NUL bytes"), (b"\xc3", "not valid utf-8")):
        path = tmp_path / f"{ODS}_Allergy_{exports.FIRST_STAMP}.csv"
        # a character split across two blocks is no fault; the faulty byte is on row 700
        body = [row] * 699 + [row[:3] + fault + row[3:]] + [row] * 50
        path.write_bytes(header + b"\n" + "é".encode() * 2047 + b"\n".join(body) + b"\n")
        f = flatfile.DeliveredFile(path=path, table="allergies", stamp=exports.FIRST_STAMP)
        rows = []
        for block in (1 << 22, 4095, 4096, 4097):
            monkeypatch.setattr(flatfile, "BLOCK_BYTES", block)
            with pytest.raises(SourceError, match=cause) as err:
                flatfile.check_file(f, DIALECT, ODS)
            rows.append(err.value.row)
        assert rows == [700] * 4, (fault, rows)


def _plain_file(tmp_path, rows: int) -> tuple[flatfile.DeliveredFile, flatfile.FileShape, list[str]]:
    """An allergies file of ``rows`` identical rows of text (read as text columns: nothing is parsed)."""
    columns = DIALECT.columns("allergies")
    path = tmp_path / f"{ODS}_Allergy_{exports.FIRST_STAMP}.csv"
    row = ",".join(["x" * 18] * len(columns))
    path.write_text(",".join(columns) + "\n" + "\n".join([row] * rows) + "\n")
    f = flatfile.DeliveredFile(path=path, table="allergies", stamp=exports.FIRST_STAMP)
    return f, flatfile.check_file(f, DIALECT, ODS), columns


@pytest.mark.parametrize("rows", [40_000, 41_234])
def test_a_file_is_read_in_batches_of_exactly_the_batch_rows(tmp_path, monkeypatch, rows):
    monkeypatch.setattr(flatfile, "BLOCK_BYTES", 1 << 14)  # many reader blocks to a batch
    monkeypatch.setenv("GPDATA_BATCH_ROWS", "5000")
    f, shape, columns = _plain_file(tmp_path, rows)
    sizes = [t.num_rows for t in flatfile._raw_batches(f, DIALECT, ODS, shape, columns)]
    assert sizes == [5000] * (rows // 5000) + ([rows % 5000] if rows % 5000 else [])


def test_the_csv_reader_reads_ahead_a_bounded_number_of_blocks_not_the_file(tmp_path, monkeypatch):
    """pyarrow's streaming CSV reader queues up to 32 blocks on a background thread: with blocks the size of a
    batch, that was most of a file (its memory grew with the practice); with fixed blocks it is bounded."""
    import time

    monkeypatch.setattr(flatfile, "BLOCK_BYTES", 1 << 14)
    monkeypatch.setenv("GPDATA_BATCH_ROWS", "5000")
    f, shape, columns = _plain_file(tmp_path, 40_000)
    bound = 48 * flatfile.BLOCK_BYTES  # 32 queued blocks, the one parsed and the row that straddles them
    assert f.path.stat().st_size > 7 * bound
    before = pa.total_allocated_bytes()
    held = []  # Arrow memory besides the batch itself, once the reader has had time to read ahead
    for table in flatfile._raw_batches(f, DIALECT, ODS, shape, columns):
        time.sleep(0.05)
        held.append(pa.total_allocated_bytes() - before - table.nbytes)
    assert max(held) < bound, held
    assert len(held) == 8


def test_a_row_up_to_a_block_is_read_and_one_of_several_blocks_is_refused(tmp_path, monkeypatch):
    """The reader's block (``BLOCK_BYTES``, 1 MiB; a field holds at most 65,536 characters, 256 KiB) is the longest
    row a file may hold, whatever its size: before, blocks grew with the batch, and so did the limit."""
    monkeypatch.setattr(flatfile, "BLOCK_BYTES", 4096)
    columns = DIALECT.columns("allergies")
    path = tmp_path / f"{ODS}_Allergy_{exports.FIRST_STAMP}.csv"
    row = ",".join(["x" * 18] * len(columns))
    f = flatfile.DeliveredFile(path=path, table="allergies", stamp=exports.FIRST_STAMP)
    for length, refused in ((4000, False), (3 * 4096, True)):
        long = ",".join(["y" * length] + ["x"] * (len(columns) - 1))
        path.write_text(",".join(columns) + "\n" + "\n".join([row] * 300 + [long] + [row] * 300) + "\n")
        shape = flatfile.check_file(f, DIALECT, ODS)
        if not refused:
            assert sum(t.num_rows for t in flatfile._raw_batches(f, DIALECT, ODS, shape, columns)) == 601
            continue
        with pytest.raises(SourceError, match="a row longer than 4096 bytes") as err:
            list(flatfile._raw_batches(f, DIALECT, ODS, shape, columns))
        assert err.value.file == path.name


def test_a_file_replaced_between_the_passes_stages_nothing(home, canonical, monkeypatch):
    """The attacker's view: the observations file rewritten after the type 1 pass read it, now with a patient's
    dissent and more of their records. Read on, the second pass would stage that patient's rows under the first
    pass's status (no dissent). The file must be found changed and the delivery refused and quarantined."""
    feed, paths = _deliver(home, canonical)
    path = next(p for p in paths if "_Observation_" in p.name)
    ref = _first_patient_with_a_valid_number(canonical)
    obs = canonical["observations"]
    dissent = obs.filter(pc.equal(obs["patient_ref"], ref)).slice(0, 1)
    for column, value in (("code", DISSENT), ("code_system", "snomed"), ("source_id", "late-dissent")):
        dissent = dissent.set_column(dissent.schema.get_field_index(column), column,
                                     pa.array([value], dissent.schema.field(column).type))
    evidence = pipeline._evidence

    def then_replaced(batch, optout):
        found = evidence(batch, optout)
        flatfile.write_delivery({**canonical, "observations": pa.concat_tables([obs, dissent])}, path.parent, ODS,
                                DIALECT, exports.FIRST_STAMP)
        return found

    monkeypatch.setattr(pipeline, "_evidence", then_replaced)
    monkeypatch.setenv("GPDATA_BATCH_ROWS", "500")
    cfg = settings.load()
    with pytest.raises(SourceError, match="file changed while the delivery was being read") as err:
        pipeline.extract(feed, cfg, "r1")
    assert err.value.file == file_token(path.name)
    assert not any(p.exists() for p in paths)  # the whole delivery was moved to quarantine
    staging = pipeline.staging_dir(cfg, "r1", ODS)
    assert not (staging / "extracted").exists() and not (staging / "extracted.tmp").exists()
