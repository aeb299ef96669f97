"""Which pact was verified by which provider (HARN-501, HARN-502): a local can-i-deploy.

Every provider verification (``xtask pact``) records one row in
``contracts/pacts/verifications.json``, committed next to the pact: the pact's content hash,
the consumer's and the provider's source hashes (what the CLI and the server were built
from, so an uncommitted change counts), the commits they sit on, and the result of every
interaction. A row for the same pact and provider replaces the older one; the file stays
sorted and byte-stable.

``python -m xtask can-i-deploy`` answers for the working tree: was this pact verified by
this provider, and which interactions were not verified or failed. Exit 0 only for yes.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
PACT_FILE = ROOT / "contracts" / "pacts" / "cli-consumer-orchestratord.json"
MATRIX = ROOT / "contracts" / "pacts" / "verifications.json"
CONSUMER_SOURCES = ("cli_client",)
PROVIDER_SOURCES = ("orchestratord",)
_KEEP = 50  # rows; the oldest go first


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def pact_digest(pact_file: Path | None = None) -> str | None:
    path = pact_file or PACT_FILE
    return _digest(path.read_bytes()) if path.exists() else None


def source_digest(folders: tuple[str, ...], root: Path | None = None) -> str:
    """A hash of every Python file under ``folders`` (path and content), in a fixed order."""
    base = root or ROOT
    digest = hashlib.sha256()
    for folder in folders:
        for path in sorted((base / folder).rglob("*.py")):
            digest.update(str(path.relative_to(base)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def commit(folders: tuple[str, ...]) -> str:
    """HEAD's short hash, ``-dirty`` when ``folders`` have uncommitted changes."""
    git = ["git", "-C", str(ROOT)]
    try:
        head = subprocess.run(
            [*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        status = subprocess.run(
            [*git, "status", "--porcelain", "--", *folders],
            capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("-dirty" if status.strip() else "")


def read_matrix(path: Path | None = None) -> list[dict[str, Any]]:
    path = path or MATRIX
    if not path.exists():
        return []
    rows: list[dict[str, Any]] = json.loads(path.read_text(encoding="utf-8"))["verifications"]
    return rows


def render_matrix(rows: list[dict[str, Any]]) -> str:
    document = {
        "about": "Each provider verification of the pact: written by `python -m xtask pact`, "
        "read by `python -m xtask can-i-deploy`. Do not edit.",
        "verifications": sorted(rows, key=lambda r: (r["pact"], r["provider"], r["consumer"])),
    }
    return json.dumps(document, indent=1, sort_keys=True) + "\n"


def _same_result(row: dict[str, Any], entry: dict[str, Any]) -> bool:
    keys = ("pact", "provider", "consumer", "interactions")
    return all(row.get(k) == entry.get(k) for k in keys)


def recorded(rows: list[dict[str, Any]], entry: dict[str, Any]) -> list[dict[str, Any]]:
    """``rows`` with ``entry`` in place of an older row for the same pact and provider. A
    verification that only repeats a row (same sources, same results) keeps the row, and
    the commits it was first verified at: re-running the loop leaves the file unchanged."""
    if any(_same_result(r, entry) for r in rows):
        return rows
    kept = [r for r in rows if (r["pact"], r["provider"]) != (entry["pact"], entry["provider"])]
    return [*kept, entry][-_KEEP:]


def current_entry(outcomes: dict[str, str]) -> dict[str, Any] | None:
    pact = pact_digest()
    if pact is None:
        return None
    return {
        "pact": pact,
        "consumer": source_digest(CONSUMER_SOURCES),
        "consumer_commit": commit(CONSUMER_SOURCES),
        "provider": source_digest(PROVIDER_SOURCES),
        "provider_commit": commit(PROVIDER_SOURCES),
        "interactions": dict(sorted(outcomes.items())),
    }


def record(outcomes: dict[str, str]) -> None:
    """Called after a provider verification with each interaction's outcome."""
    entry = current_entry(outcomes)
    if entry is not None:
        MATRIX.write_text(render_matrix(recorded(read_matrix(), entry)), encoding="utf-8")


def answer(rows: list[dict[str, Any]], pact: str | None, provider: str,
           descriptions: list[str]) -> tuple[bool, list[str]]:  # fmt: skip
    """Whether ``pact`` was verified by ``provider`` in full, and the reasons if not."""
    if pact is None:
        return False, ["there is no pact: run `python -m xtask pact consumer`"]
    row = next((r for r in rows if r["pact"] == pact and r["provider"] == provider), None)
    if row is None:
        verified_by = [r["provider_commit"] for r in rows if r["pact"] == pact]
        seen = f" (it was, by provider {', '.join(verified_by)})" if verified_by else ""
        return False, [f"this pact was never verified by this provider{seen}: run "
                       "`python -m xtask pact`"]  # fmt: skip
    reasons = [
        f"{d}: {row['interactions'].get(d, 'not verified')}"
        for d in descriptions
        if row["interactions"].get(d) != "passed"
    ]
    return not reasons, reasons


def run(args: argparse.Namespace) -> int:
    descriptions = (
        [i["description"] for i in json.loads(PACT_FILE.read_text())["interactions"]]
        if PACT_FILE.exists()
        else []
    )
    pact, provider = pact_digest(), source_digest(PROVIDER_SOURCES)
    yes, reasons = answer(read_matrix(), pact, provider, descriptions)
    print(f"can-i-deploy: pact {pact}, provider {provider} ({commit(PROVIDER_SOURCES)})")
    for reason in reasons:
        print(f"can-i-deploy: {reason}")
    print(f"can-i-deploy: {'yes' if yes else 'no'}")
    return 0 if yes else 1


def add_parser(sub: Any) -> None:
    parser = sub.add_parser(
        "can-i-deploy", help="was the current pact verified by the current provider?"
    )
    parser.set_defaults(run=run)
