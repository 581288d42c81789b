# The gpdata Airflow image: the official Airflow image plus the pinned environment and this package.
FROM apache/airflow:3.3.2-python3.11
COPY --chown=airflow:root requirements.txt /opt/gpdata/requirements.txt
RUN pip install --no-cache-dir -r /opt/gpdata/requirements.txt
COPY --chown=airflow:root pyproject.toml README.md /opt/gpdata/
COPY --chown=airflow:root include /opt/gpdata/include
RUN pip install --no-cache-dir --no-deps -e /opt/gpdata
