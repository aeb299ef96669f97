"""Requirements that are about documentation, checked against the README itself."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")


@pytest.mark.req("HOME-106")
def test_readme_explains_remote_access_without_weakening_the_loopback_default() -> None:
    assert re.search(r"ssh -N -L \d+:127\.0\.0\.1:\d+", README)
    assert "127.0.0.1" in README and "--host" in README


@pytest.mark.req("HOME-903", "FR-ER-002")
def test_readme_gives_retry_guidance_consistent_with_the_429_headers() -> None:
    section = README[README.index("**Backpressure and retries**") :][:1200]
    for needle in ("Retry-After", "X-Backoff-Ms", "retry_after_ms", "jitter", "policy_label"):
        assert needle in section, needle


@pytest.mark.req("HOME-203")
def test_readme_documents_every_full_queue_policy() -> None:
    for policy in ("`reject`", "`drop-lru`", "`shed-low-priority`"):
        assert policy in README, policy
