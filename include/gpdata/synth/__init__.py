"""Synthetic GP practice generator.

Writes FHIR R4 collection bundles that look like a GP Connect / UK Core extract of English GP practices,
plus the reference files the pipeline needs, with known ground truth (`PracticeTruth`) for tests:

    root/sources/<ODS>/bundle-0001.json ...   one practice per folder, ~500 patients per bundle
    root/reference/postcode_lsoa.csv          postcode,lsoa_code for every postcode used
    root/reference/ndop.csv                   nhs_number of the National Data Opt-out list

Everything is synthetic.  NHS numbers come only from the reserved test range 999 000 0000 - 999 999 9999,
phone numbers from Ofcom's drama range (07700 900xxx), names from built-in lists.  Output depends only on
the arguments (the default `today` is fixed at 2026-01-01), so the same call gives byte-identical files.
"""

from .practice import DEFAULT_TODAY, DIRTY_KEYS, PracticeTruth, generate, generate_practice

__all__ = ["DEFAULT_TODAY", "DIRTY_KEYS", "PracticeTruth", "generate", "generate_practice"]
