"""Ingest: read one practice's delivery (FHIR bundles, supplier flat files or a supplier database) into canonical,
identifiable Arrow tables, from feed and dialect configuration, with the ledger of what was already delivered.

Nothing here writes a record to disk: identifiable tables exist only in the extraction task's memory.
"""
