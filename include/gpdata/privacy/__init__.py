"""Privacy: keys and pseudonyms, type 1 opt-outs (never collected), de-identification at source and the National
Data Opt-out list (pseudonymised on arrival, applied at dissemination). Nothing identifiable leaves this stage.
"""
