"""Extraction: every active practice feed, pseudonymised at source, into the curated store."""

from gpdata_airflow.dag_factory import build_extraction_dag

dag = build_extraction_dag()
