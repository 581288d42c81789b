"""Share: approved projects receive the minimum data they need from a release, with the National Data Opt-out
applied, under their own pseudonyms; every extract is audited and listed in the public register.
"""
