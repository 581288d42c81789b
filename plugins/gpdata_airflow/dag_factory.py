"""DAG factories: DAG files call these and do nothing else.

Parse-time work is reading the feed YAML files (small) and building tasks: no data, no heavy imports.
"""

from __future__ import annotations

import datetime as dt

from airflow.sdk import DAG, TaskGroup

from gpdata import settings
from gpdata.feeds import load_feeds
from gpdata_airflow.operators import (
    EXTRACTION_RUN,
    RELEASES,
    CuratedCommitOperator,
    DisseminateOperator,
    PracticeExtractOperator,
    PrepareStoreOperator,
    QualityGateOperator,
    ReleaseOperator,
    RunSummaryOperator,
)

EXTRACTION_DOC = """
### GP practice extraction

One task group per active practice feed (named by its ODS code), from the feed YAML files in
`GPDATA_FEEDS_DIR` (default `include/config/feeds/`):

1. **extract**: read the delivery, drop every record of patients with a type 1 opt-out, de-identify
   (keyed pseudonyms, birth month, LSOA; no names, addresses or free text). Identifiable data exists only
   in this task's memory.
2. **quality**: quarantine failing rows with a reason, validate each table with Great Expectations; a batch
   over its threshold fails here and commits nothing.
3. **commit**: replace the practice's partition of each curated Delta table; write the run manifest;
   emit an asset event on `gpdata_curated_store` with the counts.

`run_summary` logs one line per practice. Counts per stage are in `$GPDATA_HOME/store/_manifests/`.
"""


def build_extraction_dag(dag_id: str = "gpdata_extract", schedule: str | None = "@daily") -> DAG:
    cfg = settings.load()
    feeds = load_feeds(cfg.feeds_dir, active_only=True)
    with DAG(
        dag_id=dag_id,
        schedule=schedule,
        start_date=dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
        catchup=False,
        max_active_runs=1,
        tags=["gpdata", "extraction"],
        doc_md=EXTRACTION_DOC,
        default_args={"retries": 0},
    ) as dag:
        prepare = PrepareStoreOperator(task_id="prepare_store")
        summary = RunSummaryOperator(task_id="run_summary", ods_codes=[f.ods_code for f in feeds])
        for feed in feeds:
            args = {"ods_code": feed.ods_code, "feed_file": str(feed.source_file)}
            with TaskGroup(group_id=feed.ods_code, tooltip=f"{feed.name} ({feed.supplier})") as group:
                extract = PracticeExtractOperator(task_id="extract", **args)
                check = QualityGateOperator(task_id="quality", **args)
                commit = CuratedCommitOperator(task_id="commit", **args)
                extract >> check >> commit
            prepare >> group >> summary
    return dag


RELEASE_DOC = """
### Release of the curated store

Runs after each extraction run (asset `gpdata_extraction_run`): compacts small files, pins the version of
every curated table in `$GPDATA_HOME/store/_releases/<id>/release.json` with the data dictionary, and emits
`gpdata_releases`. `gpdata release list` and `gpdata release show ID` read them.
"""


def build_release_dag(dag_id: str = "gpdata_release") -> DAG:
    with DAG(dag_id=dag_id, schedule=[EXTRACTION_RUN], start_date=dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
             catchup=False, max_active_runs=1, tags=["gpdata", "release"], doc_md=RELEASE_DOC) as dag:
        ReleaseOperator(task_id="release")
    return dag


DISSEMINATION_DOC = """
### Dissemination to approved projects

Runs on each new release (asset `gpdata_releases`): one task per active project in
`GPDATA_PROJECTS_DIR` (default `include/config/projects/`). Each writes the project's minimum extract under
`$GPDATA_HOME/extracts/<project>/<release>/` with its own pseudonyms, applies the National Data Opt-out
unless the project records an exemption (a stale list stops the task), appends to the hash-chained audit
log and rewrites the public register.
"""


def build_dissemination_dag(dag_id: str = "gpdata_disseminate") -> DAG:
    from gpdata.projects import load_projects

    projects = [p for p in load_projects(settings.load().projects_dir) if p.active]
    with DAG(dag_id=dag_id, schedule=[RELEASES], start_date=dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
             catchup=False, max_active_runs=1, tags=["gpdata", "dissemination"], doc_md=DISSEMINATION_DOC) as dag:
        for p in projects:
            DisseminateOperator(task_id=f"project_{p.project_id}".replace("-", "_"),
                                project_file=str(p.source_file), doc_md=f"{p.organisation}: {p.purpose}")
    return dag
