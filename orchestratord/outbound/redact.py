"""Secrets out of everything the outbound path writes or returns (OC-POLICY-4031, HOME-107).

Three kinds of secret: the API token (and the operator's ``outbound.redact_patterns``)
anywhere in a text; the userinfo of a URL (``https://user:pass@host/``); and the values of
query parameters whose names ``outbound.redact_query_params`` lists (``?token=...``).
Each becomes ``[REDACTED]`` in audit records, logs, pull errors and responses.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit, urlunsplit

REDACTED = "[REDACTED]"


class Redactor:
    def __init__(self, secrets: list[str], patterns: list[str], query_names: list[str]) -> None:
        alternatives = [re.escape(s) for s in secrets if s] + list(patterns)
        self._secrets = (
            re.compile("|".join(f"(?:{p})" for p in alternatives)) if alternatives else None
        )
        names = "|".join(re.escape(n) for n in query_names)
        self._query = (
            re.compile(rf"(^|[&;])((?:{names}))=([^&;#]*)", re.IGNORECASE) if names else None
        )
        self.query_names = {n.lower() for n in query_names}

    def text(self, text: str) -> str:
        return self._secrets.sub(REDACTED, text) if self._secrets is not None else text

    def url(self, url: str) -> str:
        try:
            parts = urlsplit(url)
        except ValueError:
            return self.text(url)
        netloc = parts.netloc
        if "@" in netloc:
            netloc = REDACTED + "@" + netloc.rpartition("@")[2]
        query = parts.query
        if self._query is not None and query:
            query = self._query.sub(lambda m: f"{m[1]}{m[2]}={REDACTED}", query)
        rebuilt = urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
        return self.text(rebuilt)

    def credentials_in(self, url: str) -> str | None:
        """What in ``url`` is a credential (for refusing to store one), or None."""
        parts = urlsplit(url)
        if "@" in parts.netloc:
            return "user information (user:password@)"
        for pair in re.split(r"[&;]", parts.query):
            name = pair.partition("=")[0].lower()
            if name in self.query_names:
                return f"the query parameter {name!r}"
        return None
