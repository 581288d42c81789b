"""Operations: the `gpdata` command, the demo, the operators' status page data, run summaries, the leak scanner and
the Airflow environment and run parameters. The only place that imports the synthetic generator (the demo).
"""
