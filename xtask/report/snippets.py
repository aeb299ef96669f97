"""Snippets for undefined steps, in the project's own form.

behave's own snippets are ``@when(u'...') def step_impl(context)``; this project writes each
step once in ``steps/library.py`` as ``@when("...")`` on a named function taking a ``world``
(``steps/world.py`` holds the logic), registered into behave and pytest-bdd alike. So the
undefined steps are read from behave's JSON report and printed in that form, with quoted
strings and whole numbers turned into typed ``parse`` fields, ready to paste.
``bdd-runner`` and ``python -m xtask bdd`` (the dev loop) both print them.
"""

from __future__ import annotations

import functools
import keyword
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import parse

ROOT = Path(__file__).resolve().parents[2]

_QUOTED = re.compile(r'"[^"]*"')
_NUMBER = re.compile(r"(?<![\w.])-?\d+(?![\w.])")
_WORD = re.compile(r"[a-z0-9]+")


@dataclass(frozen=True)
class UndefinedStep:
    keyword: str  # given | when | then
    text: str
    location: str  # feature file:line of its first use


def is_defined(kind: str, text: str) -> bool:
    """Whether the shared step library has a step of this kind whose pattern takes ``text``.

    Decided against the library itself, not behave's JSON: behave leaves every step after an
    undefined one unmatched in its report, defined or not."""
    return any(
        step.keyword == kind and _compiled(step.pattern).parse(text) is not None
        for step in _library()
    )


@functools.cache
def _library() -> list[Any]:
    # The step library lives at the repository root beside features/, as behave expects it,
    # not in an installed package: make the root importable (bdd-runner runs from anywhere).
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from steps.library import STEPS  # noqa: PLC0415 - only once a report needs it

    return list(STEPS)


@functools.cache
def _compiled(pattern: str) -> parse.Parser:
    return parse.compile(pattern)


def undefined_steps(features: list[dict[str, Any]]) -> list[UndefinedStep]:
    """The steps of a behave JSON report that no definition takes, once each (scenarios
    only: behave lists a background's steps again in every scenario that runs them)."""
    found: dict[tuple[str, str], UndefinedStep] = {}
    for feature in features:
        for element in feature.get("elements", []):
            if element.get("type") != "scenario":
                continue
            for step in element.get("steps", []):
                kind = str(step.get("step_type", "given"))
                if is_defined(kind, step["name"]):
                    continue
                key = (kind, step["name"])
                found.setdefault(key, UndefinedStep(kind, step["name"], step.get("location", "")))
    return list(found.values())


def pattern_of(text: str) -> tuple[str, list[tuple[str, str]]]:
    """The parse pattern for a step's text and its fields as (name, Python type)."""
    fields: list[tuple[str, str]] = []

    def field(base: str, kind: str, fmt: str) -> str:
        count = sum(1 for name, _ in fields if name.rstrip("0123456789") == base)
        name = base if count == 0 else f"{base}{count + 1}"
        fields.append((name, kind))
        return "{" + name + fmt + "}"

    parts: list[str] = []
    for index, chunk in enumerate(_QUOTED.split(text)):
        if index:
            parts.append('"' + field("text", "str", "") + '"')
        escaped = chunk.replace("{", "{{").replace("}", "}}")
        parts.append(_NUMBER.sub(lambda _m: field("number", "int", ":d"), escaped))
    return "".join(parts), fields


def function_name(text: str) -> str:
    words = _WORD.findall(_NUMBER.sub(" ", _QUOTED.sub(" ", text.lower())))
    name = "_".join(words)[:60].strip("_") or "step"
    if name[0].isdigit() or keyword.iskeyword(name):
        name = f"step_{name}"
    return name


def snippet(step: UndefinedStep) -> str:
    pattern, fields = pattern_of(step.text)
    quote = "'" if '"' in pattern else '"'
    params = "".join(f", {name}: {kind}" for name, kind in fields)
    todo = f"{step.keyword.capitalize()} {step.text}"
    return (
        f"@{step.keyword}({quote}{pattern}{quote})\n"
        f"def {function_name(step.text)}(world: World{params}) -> None:\n"
        f"    raise NotImplementedError({todo!r})  # {step.location}\n"
    )


def report(features: list[dict[str, Any]]) -> list[str]:
    """Lines to print: a heading and a snippet per undefined step, or nothing."""
    steps = undefined_steps(features)
    if not steps:
        return []
    lines = [
        f"{len(steps)} undefined step(s): add to steps/library.py "
        "(the work itself goes into steps/world.py):",
        "",
    ]
    for step in steps:
        lines += [*snippet(step).splitlines(), ""]
    return lines
