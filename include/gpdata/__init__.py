"""gpdata: GP practice data for planning and research.

The library is pure: functions over Arrow tables that import no Airflow and need no scheduler.
The Airflow face (operators, DAGs) lives in ``plugins/`` and ``dags/``.
"""

__version__ = "0.1.0"
