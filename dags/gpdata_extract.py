"""Extraction: every active practice feed, pseudonymised at source, into the curated store (one DAG per
feed schedule: gpdata_extract for @daily)."""

from gpdata_airflow.dag_factory import build_extraction_dags

globals().update(build_extraction_dags())
