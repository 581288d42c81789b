"""The operators' "GP data" page in the Airflow UI: a FastAPI app (``ui_app``) registered by an Airflow plugin
(``ui_plugin``) with a navigation entry. Every route requires an Airflow login with the Plugins view permission
(the Op and Admin roles with the FAB auth manager). The page reads run manifests, quality results, release and
extract manifests (``gpdata.ops.status``), never a table.
"""
