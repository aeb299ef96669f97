"""The spec and its claims: clause tables to requirements, fingerprints, the claims found in the
sources, and the quarantine file.
"""
