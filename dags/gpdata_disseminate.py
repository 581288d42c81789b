"""Dissemination: each approved project's minimum extract of every new release."""

from gpdata_airflow.dag_factory import build_dissemination_dag

dag = build_dissemination_dag()
