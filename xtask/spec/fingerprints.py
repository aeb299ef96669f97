"""Clause fingerprints and the claims bound to them (HARN-101..104).

A clause's fingerprint is a hash of what it says: its level, scope, waiver and text, with
whitespace normalised (re-wrapping a row changes nothing; changing a word, MUST to SHOULD, or
in to waived changes it). Every claim — a scenario tag, a pytest marker, a Pact interaction's
IDs, an OpenAPI ``x-req-id`` — is bound to the fingerprint of the clause it was last reviewed
against, in ``requirements/claims.lock`` (YAML):

    HOME-203:
      clauses:
        3f2a9c0d1b4e: "MUST in | When the queue is full ..."
      claims:
        pytest tests/unit/test_queue.py::test_drop_lru: 3f2a9c0d1b4e

``spec-extract`` keeps the file in step with the sources, sorted and byte-stable: a new
claim is bound to the clause as it is now (its author wrote it against that text), a claim
that is gone is dropped, and an existing binding is never changed. When a clause changes,
its claims keep the old fingerprint and are ``suspect`` until a person has looked and run
``python -m xtask review ID...``, which re-binds them (and prints what it re-bound).
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from xtask.spec.spec_extract import (
    Requirement,
    clause_text,
    collect_specs,
    fingerprint,
    id_sort_key,
)

ROOT = Path(__file__).resolve().parents[2]
LOCK = ROOT / "requirements" / "claims.lock"
_HEADER = (
    "# Each claim's requirement, and the fingerprint of the clause it was last reviewed\n"
    "# against (HARN-102). Kept in step by `python -m xtask spec-extract`; after a clause\n"
    "# changes, `python -m xtask review ID...` re-binds its claims. Do not edit by hand.\n"
)


@dataclass(frozen=True)
class Suspect:
    req_id: str
    claim: str
    reviewed_text: str  # the clause as the claim was last reviewed against
    current_text: str


Lock = dict[str, dict[str, dict[str, str]]]  # ID -> {"clauses": fp -> text, "claims": key -> fp}


def claim_keys() -> dict[str, set[str]]:
    """Requirement ID → the keys of every claim naming it, read from the sources."""
    from xtask.spec import claims  # noqa: PLC0415 - claims imports spec_extract, as we do

    found = claims.collect(ROOT / "contracts" / "pacts" / "cli-consumer-orchestratord.json")
    keys: dict[str, set[str]] = {}
    for claim in found.scenarios:
        feature = claim.location.rsplit(":", 1)[0]
        for req_id in claim.ids:
            keys.setdefault(req_id, set()).add(f"scenario {feature}: {claim.key}")
    for claim in found.tests:
        for req_id in claim.ids:
            keys.setdefault(req_id, set()).add(f"pytest {claim.key}")
    for claim in found.interactions:
        for req_id in claim.ids:
            keys.setdefault(req_id, set()).add(f"pact {claim.key}")
    for req_id, where in found.openapi:
        keys.setdefault(req_id, set()).add(f"openapi {where}")
    return keys


def read_lock(path: Path | None = None) -> Lock:
    path = path or LOCK
    if not path.exists():
        return {}
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    return {
        str(req_id): {
            "clauses": {str(k): str(v) for k, v in (entry.get("clauses") or {}).items()},
            "claims": {str(k): str(v) for k, v in (entry.get("claims") or {}).items()},
        }
        for req_id, entry in data.items()
    }


def render_lock(lock: Lock) -> str:
    ordered = {
        req_id: {
            "clauses": dict(sorted(lock[req_id]["clauses"].items())),
            "claims": dict(sorted(lock[req_id]["claims"].items())),
        }
        for req_id in sorted(lock, key=id_sort_key)
        if lock[req_id]["claims"]
    }
    body = yaml.safe_dump(ordered, sort_keys=False, allow_unicode=True, width=100)
    return _HEADER + (body if ordered else "")


def synced(lock: Lock, requirements: Mapping[str, Requirement],
           keys: Mapping[str, set[str]]) -> Lock:  # fmt: skip
    """The lock in step with the sources: new claims bound to their clause as it is now,
    vanished ones (and IDs no spec defines) dropped, existing bindings kept as they are."""
    result: Lock = {}
    for req_id, claim_set in keys.items():
        req = requirements.get(req_id)
        if req is None:
            continue  # trace reports an unknown ID; nothing to bind it to
        old = lock.get(req_id, {"clauses": {}, "claims": {}})
        claims = {k: v for k, v in old["claims"].items() if k in claim_set}
        current = fingerprint(req)
        for key in claim_set - set(claims):
            claims[key] = current
        clauses = {fp: old["clauses"][fp] for fp in set(claims.values()) if fp in old["clauses"]}
        clauses[current] = clause_text(req)
        result[req_id] = {
            "clauses": {fp: t for fp, t in clauses.items() if fp in set(claims.values())},
            "claims": claims,
        }
    return result


def suspects(lock: Lock, requirements: Mapping[str, Requirement]) -> list[Suspect]:
    found = []
    for req_id, entry in lock.items():
        req = requirements.get(req_id)
        if req is None:
            continue
        current = fingerprint(req)
        for claim, bound in sorted(entry["claims"].items()):
            if bound != current:
                reviewed = entry["clauses"].get(bound, "(not recorded)")
                found.append(Suspect(req_id, claim, reviewed, clause_text(req)))
    return found


def reviewed(lock: Lock, requirements: Mapping[str, Requirement],
             ids: Iterable[str]) -> tuple[Lock, list[str]]:  # fmt: skip
    """The lock with every claim of ``ids`` bound to its clause as it is now, and what was
    re-bound, one line each."""
    result = {k: {"clauses": dict(v["clauses"]), "claims": dict(v["claims"])}
              for k, v in lock.items()}  # fmt: skip
    said = []
    for req_id in ids:
        req = requirements.get(req_id)
        if req is None or req_id not in result:
            said.append(f"{req_id}: no spec row or no claims; nothing to review")
            continue
        current = fingerprint(req)
        entry = result[req_id]
        moved = [(c, b) for c, b in sorted(entry["claims"].items()) if b != current]
        for claim, bound in moved:
            entry["claims"][claim] = current
            said.append(f"{req_id}: {claim}: {bound} -> {current}")
        entry["clauses"] = {current: clause_text(req)}
        if not moved:
            said.append(f"{req_id}: every claim already bound to the current clause")
    return result, said


def current_requirements() -> dict[str, Requirement]:
    by_file, _ = collect_specs()
    return {r.id: r for reqs in by_file.values() for r in reqs}


def sync_lock(requirements: Mapping[str, Requirement], *, check: bool) -> list[str]:
    """Write (or with ``check``, compare) the lock; returns the problems."""
    text = render_lock(synced(read_lock(), requirements, claim_keys()))
    if check:
        committed = LOCK.read_text(encoding="utf-8") if LOCK.exists() else ""
        if committed != text:
            shown = LOCK.relative_to(ROOT) if LOCK.is_relative_to(ROOT) else LOCK
            return [f"{shown} is out of date: run `python -m xtask spec-extract`"]
        return []
    LOCK.write_text(text, encoding="utf-8")
    return []


def run_review(args: argparse.Namespace) -> int:
    requirements = current_requirements()
    lock = synced(read_lock(), requirements, claim_keys())
    lock, said = reviewed(lock, requirements, args.ids)
    LOCK.write_text(render_lock(lock), encoding="utf-8")
    for line in said:
        print(f"review: {line}")
    left = sorted({s.req_id for s in suspects(lock, requirements)}, key=id_sort_key)
    if left:
        print(f"review: still suspect: {', '.join(left)}")
    return 0


def add_parser(sub: Any) -> None:
    parser = sub.add_parser(
        "review", help="re-bind the claims of changed clauses after reading them (HARN-104)"
    )
    parser.add_argument("ids", nargs="+", help="the requirement IDs whose claims you checked")
    parser.set_defaults(run=run_review)
