"""Operators over the gpdata library, one per stage, composable like any Airflow operator.

Each practice operator takes the ODS code and the feed file; the feed is read again when the task runs,
so a corrected YAML takes effect on the next try. Return values (XCom) are counts, never records.
"""

from __future__ import annotations

import logging

from airflow.sdk import Asset, BaseOperator

CURATED_STORE = Asset("gpdata_curated_store")
EXTRACTION_RUN = Asset("gpdata_extraction_run")  # one event per finished extraction run
RELEASES = Asset("gpdata_releases")
log = logging.getLogger("gpdata.airflow")


def _headline(counts: dict) -> str:
    if counts.get("patients_read") is None:  # failed before anything was read: no counts to show
        error = counts.get("error") or {}
        return f"nothing read (failed at {error.get('stage') or 'extraction'}: {error.get('cause') or 'no cause'})"
    quarantined = sum(sum(r.values()) for r in counts.get("quality", {}).get("quarantined", {}).values())
    return (f"patients read {counts.get('patients_read')}, type 1 opt-outs excluded "
            f"{counts.get('type1_optout', {}).get('patients_excluded')}, rows quarantined {quarantined}")


class _PracticeOperator(BaseOperator):
    """Base of the per-practice stages. ``ods_code`` is templated, so the operators work mapped (the DAG maps
    them over ODS codes) as well as on their own."""

    ui_color = "#d5e8f7"
    template_fields = ("ods_code",)

    def __init__(self, *, ods_code: str, feeds_dir: str, **kwargs) -> None:
        kwargs.setdefault("doc_md", " ".join((type(self).__doc__ or "").split()))  # task docs in the UI
        super().__init__(**kwargs)
        self.ods_code = ods_code
        self.feeds_dir = feeds_dir

    def _feed(self):
        from gpdata import settings
        from gpdata.ingest.feeds import find_feed

        return find_feed(self.feeds_dir, self.ods_code), settings.load()

    def execute(self, context):
        # A failure is logged in one line by the DAG's failure callback (gpdata_airflow.alerts)
        feed, cfg = self._feed()
        return self.run_stage(feed, cfg, context)

    def run_stage(self, feed, cfg, context):  # pragma: no cover - overridden
        raise NotImplementedError


class PracticeExtractOperator(_PracticeOperator):
    """Read a practice's delivery, drop type 1 opt-outs and de-identify, in this task's memory only.
    Writes pseudonymised Parquet to staging."""

    ui_color = "#fde2c4"

    def run_stage(self, feed, cfg, context):
        from airflow.sdk import BaseHook
        from airflow.sdk.exceptions import AirflowSkipException

        from gpdata import pipeline
        from gpdata_airflow.params import run_conf

        conf = run_conf(context)
        if conf.practices and feed.ods_code not in conf.practices:
            raise AirflowSkipException(f"practice {feed.ods_code} not among this run's practices")
        uri = BaseHook.get_connection(feed.connection_id).get_uri() if feed.format == "sql" else None
        counts = pipeline.extract(feed, cfg, context["run_id"], force=conf.force, connection_uri=uri)
        if counts.get("status") == "unchanged":
            raise AirflowSkipException(f"practice {feed.ods_code}: nothing new delivered since run "
                                       f"{counts.get('last_committed_run')}")
        return {k: counts[k] for k in ("patients_read", "type1_optout", "staged_rows", "source")}


class QualityGateOperator(_PracticeOperator):
    """Quarantine failing rows and validate each table with its Great Expectations suite.
    Fails (nothing committed for the practice) when the batch breaks its thresholds."""

    ui_color = "#e4f2d5"

    def run_stage(self, feed, cfg, context):
        from gpdata import pipeline

        counts = pipeline.check(feed, cfg, context["run_id"])
        return counts["quality"]


class CuratedCommitOperator(_PracticeOperator):
    """Replace the practice's partition of every curated Delta table and write its run manifest.
    Emits an asset event on the curated store with the practice's counts."""

    ui_color = "#e8dcf5"

    def __init__(self, **kwargs) -> None:
        kwargs.setdefault("outlets", [CURATED_STORE])
        super().__init__(**kwargs)

    def run_stage(self, feed, cfg, context):
        from gpdata import pipeline

        counts = pipeline.commit(feed, cfg, context["run_id"])
        summary = _commit_summary(feed.ods_code, counts)
        context["outlet_events"][CURATED_STORE].extra = summary
        log.info("practice %s committed: %s", feed.ods_code, _headline(counts))
        return summary


def _commit_summary(practice: str, counts: dict) -> dict:
    """A committed practice's counts for its asset event and XCom (no record's values)."""
    return {
        "practice": practice,
        "patients_read": counts["patients_read"],
        "type1_patients_excluded": counts["type1_optout"]["patients_excluded"],
        "committed_rows": counts["committed_rows"],
        "quarantined_rows": {t: sum(r.values()) for t, r in counts["quality"]["quarantined"].items()},
    }


class PlanPracticesOperator(BaseOperator):
    """Plan this group's practices (gpdata.pipeline.plan_chunks): a practice never committed, or delivering more
    than GPDATA_CHUNK_BYTES since its last commit (in a forced run, its whole delivery), runs alone (extract,
    quality and commit as three tasks); the others run together in chunks of at most GPDATA_CHUNK_BYTES and
    GPDATA_CHUNK_PRACTICES practices. Returns the ODS codes of each and their counts."""

    ui_color = "#f2ecc4"

    def __init__(self, *, ods_codes: list[str], feeds_dir: str, **kwargs) -> None:
        kwargs.setdefault("doc_md", " ".join((type(self).__doc__ or "").split()))
        super().__init__(**kwargs)
        self.ods_codes = ods_codes
        self.feeds_dir = feeds_dir

    def execute(self, context):
        from gpdata import pipeline, settings
        from gpdata.ingest.feeds import survey_feeds
        from gpdata_airflow.params import run_conf

        conf = run_conf(context)
        codes = [c for c in self.ods_codes if not conf.practices or c in conf.practices]
        readable = {f.ods_code: f for f in survey_feeds(self.feeds_dir)[0]}
        _, chunks = pipeline.plan_chunks([readable[c] for c in codes if c in readable], settings.load(),
                                         force=conf.force)
        chunked = {c for chunk in chunks for c in chunk}
        # A practice whose feed file cannot be read now runs alone: its extract task fails naming the cause.
        alone = [c for c in codes if c not in chunked]
        log.info("plan: %d practice(s): %d alone, %d in %d chunk(s)%s", len(codes), len(alone), len(chunked),
                 len(chunks), " (force: whole deliveries measured)" if conf.force else "")
        return {"practices": len(codes), "alone": alone, "chunks": chunks, "chunked": len(chunked)}


class PlanPartOperator(BaseOperator):
    """One list of the group's plan (``alone`` or ``chunks``), for the tasks mapped over it. Airflow maps over
    a task's whole return value, never over one key of it (apache/airflow#37073), hence a task per list."""

    ui_color = "#f2ecc4"
    template_fields = ("plan",)

    def __init__(self, *, plan, part: str, **kwargs) -> None:
        super().__init__(**kwargs)
        self.plan = plan
        self.part = part

    def execute(self, context):
        return list(self.plan[self.part])


CHUNK_LABEL = "{{ task.ods_codes[0] }} +{{ task.ods_codes | length - 1 }}"  # "A81001 +49": the chunk's practices


class PracticeChunkOperator(BaseOperator):
    """Several practices with small deliveries in one task (gpdata.pipeline.run_chunk): each extracted, checked
    and committed on its own, as its three tasks would. A practice that fails is recorded in its manifest (stage
    and cause) and logged in one gpdata failure line; the others go on. Emits one asset event on the curated
    store with the counts of the practices committed. Fails, after every practice ran, if any failed."""

    ui_color = "#d5e8f7"
    template_fields = ("ods_codes",)
    records_own_failures = True  # gpdata_airflow.alerts: the failure callback records no practice for this task

    def __init__(self, *, ods_codes: list[str], feeds_dir: str, **kwargs) -> None:
        kwargs.setdefault("doc_md", " ".join((type(self).__doc__ or "").split()))
        kwargs.setdefault("outlets", [CURATED_STORE])
        super().__init__(**kwargs)
        self.ods_codes = ods_codes
        self.feeds_dir = feeds_dir

    def execute(self, context):
        from airflow.sdk import BaseHook
        from airflow.sdk.exceptions import AirflowSkipException

        from gpdata import pipeline, settings
        from gpdata.errors import GpdataError
        from gpdata.ingest.feeds import find_feed
        from gpdata_airflow.params import run_conf

        cfg, run_id, force = settings.load(), context["run_id"], run_conf(context).force
        feeds, uris, out = [], {}, {}
        for ods in self.ods_codes:
            try:
                feed = find_feed(self.feeds_dir, ods)
                if feed.format == "sql":
                    uris[ods] = BaseHook.get_connection(feed.connection_id).get_uri()
                feeds.append(feed)
            except Exception as exc:  # noqa: BLE001 - this practice's failure; the others go on
                out[ods] = pipeline.practice_failed(cfg, ods, run_id, "extract", exc)
        out.update(pipeline.run_chunk(feeds, cfg, run_id, force=force, connection_uris=uris))
        committed, failed = [], []
        for ods in self.ods_codes:
            result = out[ods]
            if result["status"] == "committed":
                committed.append(_commit_summary(ods, result))
                log.info("practice %s committed: %s", ods, _headline(result))
            elif result["status"] == "unchanged":
                log.info("practice %s unchanged: nothing new delivered since run %s", ods, result["last_committed_run"])
            else:
                failed.append(f"{ods} ({result['stage']})")
                log.info("practice %s failed at %s: %s", ods, result["stage"], result["cause"])
        log.info("chunk: %d practice(s): %d committed, %d unchanged, %d failed", len(self.ods_codes),
                 len(committed), len(self.ods_codes) - len(committed) - len(failed), len(failed))
        if failed:  # a failed task emits no asset event; the committed practices' manifests say so
            raise GpdataError(f"{len(failed)} of {len(self.ods_codes)} practices failed: {', '.join(failed)}; "
                              "the others ran (their gpdata failure lines and manifests say why)", stage="chunk")
        if not committed:
            raise AirflowSkipException(f"all {len(self.ods_codes)} practices unchanged: nothing new delivered")
        context["outlet_events"][CURATED_STORE].extra = {"committed": committed}
        return {"committed": [c["practice"] for c in committed],
                "unchanged": [o for o in self.ods_codes if out[o]["status"] == "unchanged"]}


class PrepareStoreOperator(BaseOperator):
    """Create any missing curated table (empty, with its schema) before practices commit in parallel."""

    def execute(self, context):
        from gpdata import settings, store

        created = store.ensure_tables(settings.load().store)
        log.info("curated store ready; tables created: %s", created or "none")
        return created


class RunSummaryOperator(BaseOperator):
    """Log one line per practice for this run, from the run manifests (also after failures)."""

    def __init__(self, *, ods_codes: list[str], feeds_dir: str | None = None, **kwargs) -> None:
        kwargs.setdefault("trigger_rule", "all_done")
        kwargs.setdefault("outlets", [EXTRACTION_RUN])
        super().__init__(**kwargs)
        self.ods_codes = ods_codes
        self.feeds_dir = feeds_dir

    def execute(self, context):
        from gpdata import settings, store

        if self.feeds_dir:  # feed files that cannot be read: their practices did not run (the others did)
            from gpdata.ingest.feeds import survey_feeds

            for problem in survey_feeds(self.feeds_dir)[1]:
                log.warning("feed file left out (its practice did not run): %s: %s", problem.file, problem.cause)
        manifests = store.latest_manifests(settings.load().manifests)
        run_id = context["run_id"]
        out = {}
        for ods in self.ods_codes:
            m = manifests.get(ods)
            if m is None or m.get("run_id") != run_id:
                out[ods] = "no manifest for this run (failed before the quality gate)"
            elif m["status"] == "unchanged":
                out[ods] = f"unchanged: nothing new since run {m.get('last_committed_run')}"
            else:
                out[ods] = f"{m['status']}: {_headline(m)}"
            log.info("practice %s: %s", ods, out[ods])
        context["outlet_events"][EXTRACTION_RUN].extra = {"practices": len(self.ods_codes),
                                                          "committed": sum(v.startswith("committed") for v in
                                                                           out.values())}
        return out


class ReleaseOperator(BaseOperator):
    """Compact the curated tables, pin their versions in a release manifest and publish the data dictionary.
    Emits an asset event on gpdata_releases with the release id."""

    def __init__(self, **kwargs) -> None:
        kwargs.setdefault("outlets", [RELEASES])
        super().__init__(**kwargs)

    def execute(self, context):
        from gpdata import settings
        from gpdata.privacy.keys import load_master_key
        from gpdata.store import release

        root = settings.load().store
        same = release.unchanged_since(root)
        if same is not None:  # an hourly feed with nothing new would otherwise make 24 identical releases a day
            from airflow.sdk.exceptions import AirflowSkipException

            raise AirflowSkipException(f"nothing committed since release {same['release_id']}: no new release "
                                       "(gpdata release create makes one on purpose)")
        manifest = release.create_release(root, note=f"run {context['run_id']}", key=load_master_key())
        summary = {"release_id": manifest["release_id"],
                   "rows": {t: e["rows"] for t, e in manifest["tables"].items()}}
        context["outlet_events"][RELEASES].extra = summary
        log.info("release %s published: %s", manifest["release_id"], summary["rows"])
        return summary


class DisseminateOperator(BaseOperator):
    """One approved project's extract of the latest release: minimum data, National Data Opt-out, project
    pseudonyms, manifest and audit entry; then the public register is rewritten."""

    def __init__(self, *, project_file: str, **kwargs) -> None:
        super().__init__(**kwargs)
        self.project_file = project_file

    def execute(self, context):
        from gpdata import settings
        from gpdata.privacy.keys import load_master_key
        from gpdata.share.disseminate import disseminate_all
        from gpdata.share.projects import load_project

        project = load_project(self.project_file)
        m = disseminate_all(settings.load(), load_master_key(), projects=[project],
                            requested_by=f"airflow:{context['dag'].dag_id}/{context['run_id']}")[project.project_id]
        rows = {t: e["rows"] for t, e in m["tables"].items()}
        log.info("project %s: release %s extracted %s", project.project_id, m["release"], rows)
        return {"project": project.project_id, "release": m["release"], "rows": rows}
