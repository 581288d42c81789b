"""DAG factories: DAG files call these and do nothing else.

Parse-time work is reading the feed YAML files (small) and building tasks: no data, no heavy imports.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import re

from airflow.providers.standard.operators.empty import EmptyOperator
from airflow.sdk import DAG, TaskGroup, task_group

from gpdata import settings
from gpdata.errors import ConfigError
from gpdata.ingest.feeds import DEFAULT_SCHEDULE, survey_feeds
from gpdata_airflow.alerts import deadline_alert, failure_callback
from gpdata_airflow.operators import (
    CHUNK_LABEL,
    CURATED_STORE,
    EXTRACTION_RUN,
    RELEASES,
    CuratedCommitOperator,
    DisseminateOperator,
    PlanPartOperator,
    PlanPracticesOperator,
    PracticeChunkOperator,
    PracticeExtractOperator,
    PrepareStoreOperator,
    QualityGateOperator,
    ReleaseOperator,
    RunSummaryOperator,
)
from gpdata_airflow.params import ValidateRunConfOperator, extraction_params

EXTRACTION_DOC = """
### GP practice extraction

Every active practice feed with this DAG's schedule, from the feed YAML files in `GPDATA_FEEDS_DIR`
(default `include/config/feeds/`), in static task groups `practices_NNN` of at most `GPDATA_MAP_BATCH`
(default 1000, never above `[core] max_map_length`).

**Plan.** Each group's `plan` task looks at what each practice delivered since its last commit (with
`{"force": true}`, its whole delivery): a practice never committed (a baseline), delivering more than
`GPDATA_CHUNK_BYTES` (default 64 MiB), or whose feed file cannot be read runs **alone**; the others run
together in **chunks** of at most `GPDATA_CHUNK_BYTES` delivered and `GPDATA_CHUNK_PRACTICES` (default 200)
practices. Its XCom lists the ODS codes of each. A run's `practices` conf limits the plan to those practices.

**Alone**: the mapped task group `practice` (`extract >> quality >> commit`), one mapped instance per practice
labelled by its **ODS code**:

1. **extract**: read what is new (a FHIR snapshot, flat-file deliveries, or database changes since the
   watermark), skip duplicate files, drop every record of patients with a type 1 opt-out, de-identify (keyed
   pseudonyms, birth month, LSOA; no names, addresses or free text). Identifiable data exists only in this
   task's memory. Nothing new delivered: the practice is *skipped*. An unreadable delivery is moved to
   `$GPDATA_HOME/quarantine/<ODS>/` and the task fails naming file, row and cause.
2. **quality**: quarantine failing rows with a reason, validate each table with Great Expectations; a batch
   over its threshold fails here and commits nothing.
3. **commit**: replace (baseline) or merge into (incremental: amendments and deletions) the practice's
   partition of each curated Delta table; record the delivered files and watermark; write the run manifest;
   emit an asset event on `gpdata_curated_store` with the counts.

**Chunks**: the mapped task `chunk`, one instance per chunk labelled by its first practice and how many more
(`A81001 +49`). It runs the same three stages for each of its practices, one after the other in one process,
each practice committed on its own, and emits one asset event on `gpdata_curated_store` with the counts of
each practice committed. A practice that fails stops there alone: its manifest names the stage and cause (the
**GP data** page shows them) and the task log has its `gpdata failure` line; the others go on. The task then
fails, naming the failed practices and their stages (a failed task emits no asset event; its committed
practices' manifests say so). All its practices unchanged: the task is *skipped*. Which chunk holds a
practice: the `chunks` list in the `plan` task's XCom, whose position is the `chunk` task's map index.

`run_summary` logs one line per practice; `all_practices_ok` fails the run when any practice failed.
Counts per stage are in `$GPDATA_HOME/store/_manifests/`. Trigger with `{"force": true}` to re-extract
practices whose delivery has not changed. A failed practice logs one line
`gpdata failure: practice=... stage=... cause=...`; the **GP data** page shows it.
"""
DEFAULT_MAP_BATCH = 1000
log = logging.getLogger("gpdata.airflow")


def active_feeds(feeds_dir) -> tuple[list, list[ConfigError]]:
    """The active feeds that can be read, and the feed files that cannot (each logged as a warning naming the
    file, the field and the cause): one broken feed file disables that practice only, never the DAG."""
    feeds, problems = survey_feeds(feeds_dir, active_only=True)
    for problem in problems:
        log.warning("gpdata feed file left out of the extraction DAGs: %s: %s", problem.file, problem.cause)
    return feeds, problems


def _left_out_doc(problems: list[ConfigError]) -> str:
    """The DAG documentation's list of the feed files left out (shown on the DAG's page in the UI)."""
    if not problems:
        return ""
    lines = "\n".join(f"- `{p.file}`: {p.cause}" for p in problems)
    return (f"\n#### Feed files left out ({len(problems)})\n\nThese files cannot be read, so their practices do "
            "not run (every other practice does). Fix each one (`gpdata feeds validate` lists them) and the "
            f"practice joins at the next parse:\n\n{lines}\n")


def map_batch_size() -> int:
    """Practices per mapped task group: GPDATA_MAP_BATCH, capped by Airflow's [core] max_map_length."""
    from airflow.configuration import conf

    limit = conf.getint("core", "max_map_length", fallback=1024)
    wanted = int(os.environ.get("GPDATA_MAP_BATCH") or DEFAULT_MAP_BATCH)
    return max(1, min(wanted, limit))


def catchup() -> bool:
    """Whether the extraction DAGs run every schedule interval missed since their start date (Airflow's
    catchup): only when GPDATA_CATCHUP is true; by default a DAG never catches up."""
    return os.environ.get("GPDATA_CATCHUP", "").strip().lower() in ("1", "true", "yes")


def extraction_dag_id(schedule: str) -> str:
    if schedule == DEFAULT_SCHEDULE:
        return "gpdata_extract"
    return "gpdata_extract_" + (re.sub(r"[^a-z0-9]+", "_", schedule.lower()).strip("_") or "custom")


def build_extraction_dags() -> dict[str, DAG]:
    """One extraction DAG per distinct feed schedule (``gpdata_extract`` for the default, @daily)."""
    cfg = settings.load()
    feeds, problems = active_feeds(cfg.feeds_dir)
    by_schedule: dict[str, list[str]] = {DEFAULT_SCHEDULE: []}
    for feed in feeds:
        by_schedule.setdefault(feed.schedule, []).append(feed.ods_code)
    return {extraction_dag_id(s): build_extraction_dag(extraction_dag_id(s), s, ods_codes=codes, left_out=problems)
            for s, codes in by_schedule.items()}


def build_extraction_dag(dag_id: str = "gpdata_extract", schedule: str | None = DEFAULT_SCHEDULE,
                         ods_codes: list[str] | None = None, left_out: list[ConfigError] | None = None) -> DAG:
    """``left_out``: the feed files that cannot be read (listed in the DAG's documentation)."""
    cfg = settings.load()
    if ods_codes is None:
        feeds, left_out = active_feeds(cfg.feeds_dir)
        ods_codes = [f.ods_code for f in feeds]
    batch = map_batch_size()
    with DAG(
        dag_id=dag_id,
        schedule=schedule,
        start_date=dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
        catchup=catchup(),
        is_paused_upon_creation=False,
        max_active_runs=1,
        tags=["gpdata", "extraction"],
        doc_md=EXTRACTION_DOC + _left_out_doc(left_out or []),
        default_args={"retries": 0, "on_failure_callback": failure_callback},
        deadline=deadline_alert(),
        params=extraction_params(),
    ) as dag:
        prepare = PrepareStoreOperator(task_id="prepare_store")
        ValidateRunConfOperator(task_id="validate_conf") >> prepare
        summary = RunSummaryOperator(task_id="run_summary", ods_codes=ods_codes, feeds_dir=str(cfg.feeds_dir))
        # The run's state comes from its leaves: run_summary runs whatever happened, so this leaf fails the
        # run (upstream_failed) when any practice task failed. none_failed, not all_success: a skip (a practice
        # unchanged, or an empty plan list mapped to no task) must neither fail the run nor, by skipping this
        # leaf before a later failure, hide one.
        all_practices_ok = EmptyOperator(task_id="all_practices_ok", trigger_rule="none_failed",
                                         doc_md="Fails the run when any practice failed")
        feeds_dir = str(cfg.feeds_dir)
        for number, start in enumerate(range(0, len(ods_codes), batch), start=1):
            codes = ods_codes[start:start + batch]
            with TaskGroup(group_id=f"practices_{number:03d}",
                           tooltip=f"practices {codes[0]} to {codes[-1]} ({len(codes)})"):
                plan = PlanPracticesOperator(task_id="plan", ods_codes=codes, feeds_dir=feeds_dir)
                alone = PlanPartOperator(task_id="alone", plan=plan.output, part="alone")
                chunks = PlanPartOperator(task_id="chunks", plan=plan.output, part="chunks")

                @task_group(group_id="practice")
                def practice(ods_code):
                    args = {"ods_code": ods_code, "feeds_dir": feeds_dir,
                            "map_index_template": "{{ task.ods_code }}"}
                    extract = PracticeExtractOperator(task_id="extract", **args)
                    check = QualityGateOperator(task_id="quality", **args)
                    commit = CuratedCommitOperator(task_id="commit", **args)
                    extract >> check >> commit

                chunk = PracticeChunkOperator.partial(
                    task_id="chunk", feeds_dir=feeds_dir, map_index_template=CHUNK_LABEL, outlets=[CURATED_STORE],
                    doc_md=" ".join((PracticeChunkOperator.__doc__ or "").split()),
                ).expand(ods_codes=chunks.output)
                work = [practice.expand(ods_code=alone.output), chunk]
                prepare >> plan
                work >> summary
                work >> all_practices_ok
        summary >> all_practices_ok
    return dag


RELEASE_DOC = """
### Release of the curated store

Runs after each extraction run (asset `gpdata_extraction_run`): compacts small files, pins the version of
every curated table in `$GPDATA_HOME/store/_releases/<id>/release.json` with the data dictionary, and emits
`gpdata_releases`. `gpdata release list` and `gpdata release show ID` read them.
"""


def build_release_dag(dag_id: str = "gpdata_release") -> DAG:
    with DAG(dag_id=dag_id, schedule=[EXTRACTION_RUN], start_date=dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
             catchup=False, is_paused_upon_creation=False, max_active_runs=1, tags=["gpdata", "release"],
             doc_md=RELEASE_DOC) as dag:
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
    from gpdata.share.projects import load_projects

    projects = [p for p in load_projects(settings.load().projects_dir) if p.active]
    with DAG(dag_id=dag_id, schedule=[RELEASES], start_date=dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
             catchup=False, is_paused_upon_creation=False, max_active_runs=1, tags=["gpdata", "dissemination"],
             doc_md=DISSEMINATION_DOC) as dag:
        for p in projects:
            DisseminateOperator(task_id=f"project_{p.project_id}".replace("-", "_"),
                                project_file=str(p.source_file), doc_md=f"{p.organisation}: {p.purpose}")
    return dag
