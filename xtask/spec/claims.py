"""What the repository claims, read from its files rather than from any run's results.

A claim is a requirement tag on a scenario, a ``@pytest.mark.req`` on a test function, or
the IDs a Pact interaction recorded. Claims are found statically, so a tagged test that did
not run (or whose result file is missing or from another run) is noticed: trace pairs every
claim with a result of the current run, and a claim without one fails its IDs.

Malformed IDs and module-level markers (which would claim IDs for every test in a file) are
errors, each named with its file and line.
"""

from __future__ import annotations

import ast
import dataclasses
import json
import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from xtask.spec.spec_extract import ID_RE

ROOT = Path(__file__).resolve().parents[2]
_TAG = re.compile(r"@(\S+)")
_ID_LIKE = re.compile(r"^[A-Z][A-Z0-9]*(?:-[A-Z0-9]+)*-\d+$")
_SCENARIO = re.compile(r"^\s*(Scenario(?: Outline| Template)?|Example):\s*(?P<name>.+?)\s*$")
_DESCRIPTION = re.compile(r'^\s*"description": ("(?:[^"\\]|\\.)*"),?\s*$')
# Where each kind of test runs, and the runner its results are reported under.
PYTEST_SUITES = {"tests/unit": "pytest", "tests/e2e": "pytest", "tests/pact": "pact-consumer"}


@dataclass(frozen=True)
class Claim:
    """One test or scenario and the IDs it claims to prove."""

    kind: str  # "scenario" | "pytest" | "pact-interaction"
    key: str  # how results name it (scenario name, file::function, interaction)
    ids: tuple[str, ...]
    location: str  # file:line


@dataclass
class Claims:
    scenarios: list[Claim]
    tests: list[Claim]
    interactions: list[Claim]
    openapi: list[tuple[str, str]]  # (ID, where)
    errors: list[str]


def _relative(path: Path) -> str:
    return str(path.relative_to(ROOT))


def feature_claims(errors: list[str]) -> list[Claim]:
    found: list[Claim] = []
    for feature in sorted((ROOT / "features").glob("**/*.feature")):
        feature_tags: list[str] = []
        pending: list[str] = []
        for lineno, line in enumerate(feature.read_text(encoding="utf-8").splitlines(), 1):
            stripped = line.strip()
            where = f"{_relative(feature)}:{lineno}"
            if stripped.startswith("@"):
                for tag in _TAG.findall(stripped):
                    if _ID_LIKE.match(tag) and not ID_RE.match(tag):
                        errors.append(f"{where}: malformed requirement ID {tag!r}")
                    elif ID_RE.match(tag):
                        pending.append(tag)
                continue
            if stripped.startswith("Feature:"):
                feature_tags, pending = pending, []
                continue
            if stripped.startswith(("Examples:", "Scenarios:")):
                # Tags above Examples belong to that outline's rows, not the next scenario.
                if pending and found and found[-1].location.startswith(f"{_relative(feature)}:"):
                    last = found[-1]
                    merged = tuple(sorted(set(last.ids) | set(pending)))
                    found[-1] = dataclasses.replace(last, ids=merged)
                pending = []
                continue
            match = _SCENARIO.match(line)
            if match:
                ids = tuple(sorted(set(feature_tags + pending)))
                found.append(Claim("scenario", match["name"], ids, where))
                pending = []
    return found


def _req_ids(decorator: ast.expr) -> list[ast.Constant] | None:
    """The arguments of ``pytest.mark.req(...)``, or None for another decorator."""
    if not isinstance(decorator, ast.Call):
        return None
    func = decorator.func
    if not (isinstance(func, ast.Attribute) and func.attr == "req"):
        return None
    return [a for a in decorator.args if isinstance(a, ast.Constant)]


def _check_ids(args: list[ast.Constant], where: str, errors: list[str]) -> tuple[str, ...]:
    ids = []
    for arg in args:
        if not isinstance(arg.value, str) or not ID_RE.match(arg.value):
            errors.append(f"{where}: malformed requirement ID {arg.value!r}")
        else:
            ids.append(arg.value)
    return tuple(sorted(set(ids)))


def pytest_claims(errors: list[str]) -> list[Claim]:
    found: list[Claim] = []
    for suite in PYTEST_SUITES:
        for path in sorted((ROOT / suite).glob("**/test_*.py")):
            tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
            rel = _relative(path)
            for node in ast.walk(tree):
                if isinstance(node, ast.Assign) and any(
                    isinstance(t, ast.Name) and t.id == "pytestmark" for t in node.targets
                ):
                    values = node.value.elts if isinstance(node.value, ast.List) else [node.value]
                    if any(_req_ids(v) is not None for v in values):
                        errors.append(
                            f"{rel}:{node.lineno}: module-level req marker claims IDs for "
                            "every test in the file; mark each test with what it proves"
                        )
                if isinstance(node, ast.ClassDef) and any(
                    _req_ids(d) is not None for d in node.decorator_list
                ):
                    errors.append(f"{rel}:{node.lineno}: class-level req marker; mark tests")
                if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                    continue
                marks = [d for d in node.decorator_list if _req_ids(d) is not None]
                if marks:
                    where = f"{rel}:{marks[0].lineno}"
                    args = [a for d in marks for a in (_req_ids(d) or [])]
                    ids = _check_ids(args, where, errors)
                    found.append(Claim("pytest", f"{rel}::{node.name}", ids, where))
    return found


def pact_claims(pact_file: Path) -> list[Claim]:
    if not pact_file.exists():
        return []
    text = pact_file.read_text(encoding="utf-8")
    # The line of each interaction's description, so the report can point at it.
    lines: dict[str, int] = {}
    for number, line in enumerate(text.splitlines(), 1):
        match = _DESCRIPTION.match(line)
        if match:
            lines.setdefault(json.loads(match.group(1)), number)
    found = []
    for interaction in json.loads(text)["interactions"]:
        comments = interaction.get("comments", {}).get("text", [])
        ids = {i for c in comments if c.startswith("req: ") for i in c[5:].split()}
        description = interaction["description"]
        where = _relative(pact_file)
        if description in lines:
            where = f"{where}:{lines[description]}"
        found.append(Claim("pact-interaction", description, tuple(sorted(ids)), where))
    return found


def openapi_claims() -> list[tuple[str, str]]:
    claims: list[tuple[str, str]] = []
    for name in ("data", "control"):
        doc = yaml.safe_load((ROOT / "contracts" / "openapi" / f"{name}.yaml").read_text())
        for path, item in doc["paths"].items():
            for method, op in item.items():
                where = f"contracts/openapi/{name}.yaml {method.upper()} {path}"
                claims += [(req_id, where) for req_id in op.get("x-req-id", [])]
    return claims


def collect(pact_file: Path) -> Claims:
    errors: list[str] = []
    return Claims(
        scenarios=feature_claims(errors),
        tests=pytest_claims(errors),
        interactions=pact_claims(pact_file),
        openapi=openapi_claims(),
        errors=errors,
    )
