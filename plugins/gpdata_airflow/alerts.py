"""Failure and lateness alerts for the gpdata DAGs.

``failure_callback`` is a task ``on_failure_callback``. It logs ONE line an operator can act on::

    gpdata failure: practice=A81001 stage=quality cause=quality gate failed, nothing committed: ...

records the failure in the practice's run manifest (so the GP data page shows it), and notifies through the
configured notifier, if any. The cause comes from a ``GpdataError`` (which names practice, file, row and
cause, never a record's values); any other exception is named by its type only, since its message may
quote data.

``late_delivery_alerts()`` logs and notifies, the same way, each practice whose delivery is late (no delivery
for longer than its feed's schedule plus the grace period; the GP data page shows them as late).

``deadline_alert()`` builds an Airflow Deadline Alert for a late run from ``GPDATA_DEADLINE_MINUTES``
(unset or 0: none). Settings, all environment variables, all off by default:

- ``GPDATA_ALERT_NOTIFIER``: dotted path of an Airflow notifier class (e.g.
  ``airflow.providers.smtp.notifications.smtp.SmtpNotifier``);
- ``GPDATA_ALERT_NOTIFIER_KWARGS``: its keyword arguments as JSON; templated fields may use
  ``{{ gpdata_alert }}``, the one-line message;
- ``GPDATA_DEADLINE_MINUTES``: minutes after a run is queued by which it must have finished.

Airflow imports happen inside the functions, so DAG files that import this stay light.
"""

from __future__ import annotations

import datetime as dt
import importlib
import json
import logging
import os
import re

log = logging.getLogger("gpdata.airflow.alerts")

NOTIFIER_ENV = "GPDATA_ALERT_NOTIFIER"
NOTIFIER_KWARGS_ENV = "GPDATA_ALERT_NOTIFIER_KWARGS"
DEADLINE_ENV = "GPDATA_DEADLINE_MINUTES"
ODS_RE = re.compile(r"^[A-Z][0-9A-Z]{2,5}$")  # as gpdata.store.tables.ODS_RE (kept here: no heavy import)
STAGES = ("extract", "quality", "commit")


def _one_line(text: str, limit: int = 1000) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _task_practice(context) -> str | None:
    """The practice a task works on: its ods_code, its rendered map index, or its task group's id. None for a
    task that records its practices' failures itself (a chunk of practices: a failure is not the first one's)."""
    task = context.get("task")
    if getattr(task, "records_own_failures", False):
        return None
    ods = getattr(task, "ods_code", None)
    if isinstance(ods, str) and ODS_RE.match(ods):
        return ods
    ti = context.get("ti") or context.get("task_instance")
    candidates = [getattr(ti, "rendered_map_index", None)]
    task_id = getattr(ti, "task_id", None) or getattr(task, "task_id", None) or ""
    candidates += task_id.split(".")[:-1]
    for value in candidates:
        if isinstance(value, str) and ODS_RE.match(value):
            return value
    return None


def _task_stage(context) -> str:
    ti = context.get("ti") or context.get("task_instance")
    task_id = getattr(ti, "task_id", None) or getattr(context.get("task"), "task_id", None) or "unknown"
    return task_id.rsplit(".", 1)[-1]


def describe_failure(context) -> tuple[str | None, str, str]:
    """(practice, stage, cause) of a failed task, from its exception when it is a GpdataError."""
    from gpdata.errors import GpdataError

    exc = context.get("exception")
    practice = _task_practice(context)
    stage = _task_stage(context)
    if isinstance(exc, GpdataError):
        practice = exc.practice or practice
        stage = exc.stage or stage
    if exc is None:
        cause = "task failed (no exception recorded; see the task log)"
    elif type(exc).__module__.startswith("airflow."):
        cause = f"{type(exc).__name__}: {exc}"  # Airflow's own errors (timeouts, zombies) say no data
    else:
        from gpdata.pipeline import failure_cause

        cause = failure_cause(exc)
    return practice, stage, _one_line(cause)


def failure_line(practice: str | None, stage: str, cause: str) -> str:
    return f"gpdata failure: practice={practice or '-'} stage={stage} cause={cause}"


def record_failure(settings, practice: str, run_id: str, *, stage: str, cause: str,
                   task_id: str | None = None) -> dict:
    """Put the failure in the practice's run manifest. A manifest of the same run (a richer
    ``failed_quality`` one, with its counts) keeps its status and counts and gains the error; otherwise a
    ``failed`` manifest is written for the run. Returns the manifest written."""
    from gpdata import pipeline

    if not ODS_RE.match(practice):
        raise ValueError(f"not an ODS code: {practice!r}")
    return pipeline.record_failure(settings, practice, run_id, stage=stage, cause=cause, task_id=task_id)


def load_notifier(env=None):
    """The configured notifier instance, or None when none is configured."""
    env = os.environ if env is None else env
    path = (env.get(NOTIFIER_ENV) or "").strip()
    if not path:
        return None
    module, _, name = path.rpartition(".")
    if not module:
        raise ValueError(f"{NOTIFIER_ENV}={path!r} is not a dotted class path")
    cls = getattr(importlib.import_module(module), name)
    try:
        kwargs = json.loads(env.get(NOTIFIER_KWARGS_ENV) or "{}")
    except json.JSONDecodeError as exc:
        raise ValueError(f"{NOTIFIER_KWARGS_ENV} is not JSON: {exc.msg} at character {exc.pos}") from None
    if not isinstance(kwargs, dict):
        raise ValueError(f"{NOTIFIER_KWARGS_ENV} must be a JSON object")
    return cls(**kwargs)


def notify(context, line: str, env=None) -> bool:
    """Send ``line`` through the configured notifier; a notifier's failure is logged, never raised (the
    task has failed already; the alert must not hide why)."""
    try:
        notifier = load_notifier(env)
        if notifier is None:
            return False
        notifier({**context, "gpdata_alert": line})
        return True
    except Exception as exc:  # noqa: BLE001 - any notifier error
        log.warning("gpdata alert: notifier %s failed: %s", (env or os.environ).get(NOTIFIER_ENV),
                    _one_line(f"{type(exc).__name__}: {exc}", 300))
        return False


def failure_callback(context) -> str:
    """Task on_failure_callback: one log line, the failure recorded for the page, an optional notification."""
    practice, stage, cause = describe_failure(context)
    line = failure_line(practice, stage, cause)
    log.error(line)
    ti = context.get("ti") or context.get("task_instance")
    run_id = context.get("run_id") or getattr(ti, "run_id", None)
    if practice and run_id:
        try:
            from gpdata import settings

            record_failure(settings.load(), practice, str(run_id), stage=stage, cause=cause,
                           task_id=getattr(ti, "task_id", None))
        except Exception as exc:  # noqa: BLE001 - recording must not mask the failure
            log.warning("gpdata alert: could not record the failure in the manifest: %s", type(exc).__name__)
    notify(context, line)
    return line


def late_delivery_alerts(settings=None, now=None, env=None, context=None) -> list[str]:
    """Late deliveries raise the same alert as a failure: one log line per late practice (see
    ``gpdata.ops.status.lateness``) and the configured notifier. Callable from any task or callback."""
    from gpdata.ops import status

    if settings is None:
        from gpdata import settings as settings_module

        settings = settings_module.load()
    lines = [status.late_line(late) for late in status.late_practices(settings, now)]
    for line in lines:
        log.error(line)
        notify(dict(context or {}), line, env)
    return lines


async def late_run(context=None, minutes: int | None = None, **_):
    """Deadline Alert callback (runs in the triggerer): one log line, then the configured notifier."""
    import asyncio

    run = (context or {}).get("dag_run") or {}
    deadline = (context or {}).get("deadline") or {}
    line = (f"gpdata late run: dag={run.get('dag_id', '-')} run={run.get('run_id', '-')} "
            f"not finished {minutes} minutes after it was queued (deadline {deadline.get('deadline_time', '-')})")
    log.error(line)
    await asyncio.to_thread(notify, dict(context or {}), line)
    return line


def deadline_alert(env=None):
    """A Deadline Alert for a run not finished ``GPDATA_DEADLINE_MINUTES`` after it was queued, or None."""
    env = os.environ if env is None else env
    raw = (env.get(DEADLINE_ENV) or "").strip()
    if raw in ("", "0"):
        return None
    try:
        minutes = int(raw)
    except ValueError:
        minutes = -1
    if minutes < 0:
        from gpdata.errors import ConfigError

        raise ConfigError(f"{DEADLINE_ENV} must be a whole number of minutes (0 or unset: off), not {raw!r}")
    from airflow.sdk import AsyncCallback, DeadlineAlert, DeadlineReference

    return DeadlineAlert(reference=DeadlineReference.DAGRUN_QUEUED_AT, interval=dt.timedelta(minutes=minutes),
                         callback=AsyncCallback(late_run, kwargs={"minutes": minutes}), name="gpdata_late_run")
