"""Release: a tagged, reproducible version of the curated store, after each extraction run."""

from gpdata_airflow.dag_factory import build_release_dag

dag = build_release_dag()
