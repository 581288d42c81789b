"""Peak memory of one partition write as the commit does it: a table read from a Parquet file, TIMES over, into one
practice's partition of a curated table, in a process of its own.

    python -m bench.partition_write PARQUET TABLE TIMES STORE

PARQUET holds rows of curated table TABLE (e.g. a store's ``observations/practice_code=<ODS>/*.parquet`` file; its
practice's rows); they are written TIMES over (``store.replace_partition`` from ``Batches`` of ``batch_rows()``
rows, read from the file anew each time over) into STORE, a folder made afresh. Prints one JSON line: rows written,
RSS before the write and its peak (MiB), CPU seconds of the write. No record is printed.
"""

from __future__ import annotations

import json
import resource
import sys
from pathlib import Path


def main(argv: list[str]) -> int:
    source, name, times, root = Path(argv[0]), argv[1], int(argv[2]), Path(argv[3])
    import pyarrow as pa
    import pyarrow.parquet as pq

    from gpdata import arrowutil, store
    from gpdata.model import CURATED, PARTITION

    schema = CURATED[name]
    file = pq.ParquetFile(source)
    practice = "A81651"
    store.ensure_tables(root)

    def batches():
        for _ in range(times):
            for batch in pq.ParquetFile(source).iter_batches(arrowutil.batch_rows()):
                if PARTITION not in batch.schema.names:
                    batch = batch.append_column(PARTITION, pa.array([practice] * batch.num_rows, pa.string()))
                yield batch.select(schema.names).cast(schema)

    rows = store.Batches(lambda: pa.RecordBatchReader.from_batches(schema, batches()))
    before = resource.getrusage(resource.RUSAGE_SELF)
    store.replace_partition(root, name, practice, rows)
    after = resource.getrusage(resource.RUSAGE_SELF)
    rows = file.metadata.num_rows * times
    print(json.dumps({"rows": rows, "rss_before_mib": round(before.ru_maxrss / 1024),
                      "peak_rss_mib": round(after.ru_maxrss / 1024),
                      "cpu": round(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime, 2)}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
