"""The Airflow face of gpdata: operators over the library and the DAG factories.

Airflow puts ``plugins/`` on ``sys.path``, so DAG files import ``gpdata_airflow``. Nothing heavy is
imported at module level: pyarrow, deltalake and Great Expectations load inside ``execute``.
"""
