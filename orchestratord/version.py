"""Versions that clients can see."""

__version__ = "0.1.0"

# Must equal `info.version` of contracts/openapi/{data,control}.yaml (HOME-602); a unit test
# compares them so the capabilities endpoint can never drift from the contract.
API_VERSION = "1.4.0"
