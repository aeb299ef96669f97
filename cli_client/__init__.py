"""The CLI team's view of orchestratord: a small client used by the Pact consumer tests."""

from cli_client.client import Admission, Backoff, OrchClient, OrchError

__all__ = ["Admission", "Backoff", "OrchClient", "OrchError"]
