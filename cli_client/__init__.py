"""The CLI team's view of orchestratord: the client the Pact consumer tests exercise, and
``llorch``, the command line built on it."""

from cli_client.client import Admission, Backoff, OrchClient, OrchError, Unavailable

__all__ = ["Admission", "Backoff", "OrchClient", "OrchError", "Unavailable"]
