"""``python -m xtask spec-extract``: `.specs/*.md` clause tables → ``requirements/*.yaml``.

Each spec file's rows become one YAML file with the same stem, requirements sorted by ID,
keys in a fixed order: the same specs always give the same bytes. ``--check`` fails when the
committed YAML differs. Malformed rows (unknown level, bad scope, duplicate or ill-formed
ID) are errors, never silently skipped.
"""

from __future__ import annotations

import argparse
import hashlib
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
SPECS = ROOT / ".specs"
REQUIREMENTS = ROOT / "requirements"

ID_PATTERN = (
    r"(?:HOME-\d{3,4}|ORCH-\d{4}|OC-[A-Z]+-\d{4}|FR-[A-Z]{2}-\d{3}|PROD-\d{3}|HARD-\d{3}"
    r"|RES-\d{3}|PERF-\d{3}|HARN-\d{3})"
)
ID_RE = re.compile(rf"^{ID_PATTERN}$")
_ROW = re.compile(r"^\|\s*(?P<id>[A-Z][A-Z0-9-]+)\s*\|(?P<rest>.*)\|\s*$")
LEVELS = ("MUST", "SHOULD", "MAY")


@dataclass(frozen=True)
class Requirement:
    id: str
    level: str
    scope: str  # "in" or "waived"
    waiver: str | None
    text: str
    source: str

    def as_yaml(self) -> dict[str, Any]:
        data: dict[str, Any] = {"id": self.id, "level": self.level, "scope": self.scope}
        if self.waiver:
            data["waiver"] = self.waiver
        data["text"] = self.text
        data["fingerprint"] = fingerprint(self)
        data["source"] = self.source
        return data


_SPACE = re.compile(r"\s+")


def clause_text(req: Requirement) -> str:
    """What a clause says, in one line: level, scope (with its waiver), the text; the part of a
    row a fingerprint covers (HARN-101)."""
    scope = f"waived: {req.waiver}" if req.scope == "waived" else "in"
    return _SPACE.sub(" ", f"{req.level} {scope} | {req.text}").strip()


def fingerprint(req: Requirement) -> str:
    """A hash of :func:`clause_text`: re-wrapping a row keeps it, changing what it says does not."""
    return hashlib.sha256(clause_text(req).encode()).hexdigest()[:12]


class SpecError(Exception):
    pass


def id_sort_key(req_id: str) -> tuple[str, int]:
    prefix, _, number = req_id.rpartition("-")
    return prefix, int(number)


def parse_file(path: Path, text: str | None = None) -> tuple[list[Requirement], list[str]]:
    """The file's requirement rows and the problems found in it (each naming file:line);
    ``text``: the file as it was at another commit, instead of as it is.

    A row with an empty clause is kept (so reports still list it) but is a problem; any
    other malformed row is left out and is a problem.
    """
    found: list[Requirement] = []
    problems: list[str] = []
    source = path.read_text(encoding="utf-8") if text is None else text
    for lineno, line in enumerate(source.splitlines(), 1):
        match = _ROW.match(line)
        if not match or match["id"] == "ID":
            continue
        where = f"{path.relative_to(ROOT)}:{lineno}"
        cells = [c.strip() for c in match["rest"].split("|")]
        if len(cells) != 3:
            problems.append(f"{where}: expected | ID | Level | Scope | Clause |")
            continue
        level, scope, text = cells
        waiver = None
        if not ID_RE.match(match["id"]):
            problems.append(f"{where}: malformed requirement ID {match['id']!r}")
            continue
        if level not in LEVELS:
            problems.append(f"{where}: level must be one of {LEVELS}, not {level!r}")
            continue
        if scope.startswith("waived:"):
            waiver = scope.removeprefix("waived:").strip()
            if not waiver:
                problems.append(f"{where}: a waiver needs a one-line reason")
                continue
            scope = "waived"
        elif scope != "in":
            problems.append(f"{where}: scope must be 'in' or 'waived: <reason>', not {scope!r}")
            continue
        if not text:
            problems.append(f"{where}: {match['id']} has an empty clause")
        found.append(Requirement(match["id"], level, scope, waiver, text, where))
    return found, problems


def spec_files() -> list[Path]:
    return sorted(p for p in SPECS.glob("*.md") if p.name != "README.md")


def collect_specs() -> tuple[dict[str, list[Requirement]], list[str]]:
    """Requirements per spec file stem, and every problem found; the first definition of an
    ID defined twice is the one kept."""
    by_file: dict[str, list[Requirement]] = {}
    problems: list[str] = []
    seen: dict[str, str] = {}
    for path in spec_files():
        reqs, found = parse_file(path)
        problems += found
        kept = []
        for req in reqs:
            if req.id in seen:
                problems.append(f"{req.source}: {req.id} is already defined at {seen[req.id]}")
                continue
            seen[req.id] = req.source
            kept.append(req)
        by_file[path.stem] = sorted(kept, key=lambda r: id_sort_key(r.id))
    return by_file, problems


def load_specs() -> dict[str, list[Requirement]]:
    """Requirements per spec file stem; raises SpecError on any malformed or duplicate row."""
    by_file, problems = collect_specs()
    if problems:
        raise SpecError("; ".join(problems))
    return by_file


def all_requirements() -> dict[str, Requirement]:
    return {r.id: r for reqs in load_specs().values() for r in reqs}


def render(reqs: list[Requirement], stem: str) -> bytes:
    document = {
        "generated_from": f".specs/{stem}.md",
        "requirements": [r.as_yaml() for r in reqs],
    }
    text = yaml.safe_dump(document, sort_keys=False, allow_unicode=True, width=100)
    return ("# Generated by `python -m xtask spec-extract`; do not edit.\n" + text).encode()


def outputs() -> dict[Path, bytes]:
    return {REQUIREMENTS / f"{stem}.yaml": render(r, stem) for stem, r in load_specs().items()}


def run(args: argparse.Namespace) -> int:
    _, problems = collect_specs()
    for problem in problems:
        print(f"spec-extract: {problem}", file=sys.stderr)
    if problems:
        return 1
    wanted = outputs()
    stale = sorted(set(REQUIREMENTS.glob("*.yaml")) - set(wanted))
    drift = [p for p, content in wanted.items() if not p.exists() or p.read_bytes() != content]
    from xtask.spec import fingerprints  # noqa: PLC0415 - it reads the claims, which import us

    requirements = {r.id: r for reqs in load_specs().values() for r in reqs}
    if args.check:
        for path in drift + stale:
            print(f"drift: {path.relative_to(ROOT)} (run `python -m xtask spec-extract`)")
        lock_problems = fingerprints.sync_lock(requirements, check=True)
        for problem in lock_problems:
            print(f"drift: {problem}")
        return 1 if drift or stale or lock_problems else 0
    REQUIREMENTS.mkdir(exist_ok=True)
    for path in stale:
        path.unlink()
    for path in drift:
        path.write_bytes(wanted[path])
    fingerprints.sync_lock(requirements, check=False)
    total = sum(len(reqs) for reqs in load_specs().values())
    print(f"spec-extract: {total} requirements from {len(wanted)} spec files")
    return 0


def add_parser(sub: Any) -> None:
    parser = sub.add_parser("spec-extract", help=".specs/*.md → requirements/*.yaml")
    parser.add_argument("--check", action="store_true", help="fail on drift, write nothing")
    parser.set_defaults(run=run)
