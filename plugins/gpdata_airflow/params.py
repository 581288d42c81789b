"""Run parameters of the extraction DAG as Airflow Params, and the task that checks them again at run time.

Airflow validates a triggered run's ``conf`` against these JSON schemas before it creates the run (the
trigger form, the REST API and ``create_dagrun`` refuse it). Airflow lets keys it does not know through,
so ``ValidateRunConfOperator``, the first task of a run, validates the whole ``dag_run.conf`` with the
library's strict model (``gpdata.ops.runparams``): an unknown key, a path or a shell metacharacter fails the
run before any practice task starts. The schemas come from the library, so both checks are one contract.
"""

from __future__ import annotations

import logging

from airflow.sdk import BaseOperator, Param

from gpdata.ops.runparams import JSON_SCHEMA, RunConf

log = logging.getLogger("gpdata.airflow")
DEFAULTS = {name: getattr(RunConf(), name) for name in JSON_SCHEMA}


def extraction_params() -> dict[str, Param]:
    """The Params of the extraction DAG (new objects each call: Airflow copies and mutates them)."""
    params = {}
    for name, schema in JSON_SCHEMA.items():
        schema = dict(schema)
        description = schema.pop("description")
        params[name] = Param(DEFAULTS[name], description=description, **schema)
    return params


def run_conf(context) -> RunConf:
    """The run's validated ``dag_run.conf`` (gpdata.ops.runparams.validate)."""
    from gpdata.ops import runparams

    return runparams.validate(getattr(context.get("dag_run"), "conf", None) or {})


class ValidateRunConfOperator(BaseOperator):
    """Fail the run, before any practice task, if ``dag_run.conf`` breaks the run parameters' contract.
    Returns the validated parameters (a JSON document of ODS codes and flags)."""

    ui_color = "#f4d6d6"

    def execute(self, context):
        conf = run_conf(context)
        log.info("run parameters accepted: %d practice(s) requested, force=%s", len(conf.practices), conf.force)
        return conf.model_dump(mode="json")
