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
        summary = {
            "practice": feed.ods_code,
            "patients_read": counts["patients_read"],
            "type1_patients_excluded": counts["type1_optout"]["patients_excluded"],
            "committed_rows": counts["committed_rows"],
            "quarantined_rows": {t: sum(r.values()) for t, r in counts["quality"]["quarantined"].items()},
        }
        context["outlet_events"][CURATED_STORE].extra = summary
        log.info("practice %s committed: %s", feed.ods_code, _headline(counts))
        return summary


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
