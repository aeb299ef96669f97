"""Cucumber JSON from behave's own JSON report (HARN-601).

pytest-bdd writes Cucumber JSON itself (``--cucumberjson``); behave has no such formatter
(the PyPI one pins an older behave), so its JSON report is translated here: features with
``uri``, ``id``, ``line`` and ``{name, line}`` tags, scenarios as ``elements`` of type
``scenario`` (behave repeats a background's steps, with their results, in each scenario, so
its result-less ``background`` element is left out), steps with
``match.location`` and ``result`` whose ``duration`` is in nanoseconds, as Cucumber's own
implementations write it. A flaky scenario (re-run, then passed) reports its re-run.
"""

from __future__ import annotations

import re
from typing import Any


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def _line(location: str) -> int:
    return int(location.rsplit(":", 1)[1]) if ":" in location else 0


def _tags(tags: list[str], line: int) -> list[dict[str, Any]]:
    return [{"name": "@" + str(t).lstrip("@"), "line": max(1, line - 1)} for t in tags]


def _status(status: str | None) -> str:
    if status in ("passed", "failed", "skipped", "undefined", "pending"):
        return status
    return "failed" if status == "error" else "skipped"


def _step(step: dict[str, Any]) -> dict[str, Any]:
    result = step.get("result", {})
    out: dict[str, Any] = {
        "keyword": step.get("keyword", "").strip() + " ",
        "name": step.get("name", ""),
        "line": _line(step.get("location", "")),
        "match": {"location": step.get("match", {}).get("location", "")},
        "result": {
            "status": _status(result.get("status")),
            "duration": int(float(result.get("duration", 0.0)) * 1e9),
        },
    }
    if result.get("error_message"):
        message = result["error_message"]
        out["result"]["error_message"] = (
            "\n".join(message) if isinstance(message, list) else str(message)
        )
    return out


def from_behave(features: list[dict[str, Any]]) -> list[dict[str, Any]]:
    converted = []
    for feature in features:
        uri = feature.get("location", "").rsplit(":", 1)[0]
        feature_id = _slug(feature.get("name", "") or uri)
        line = _line(feature.get("location", ""))
        elements = []
        for element in feature.get("elements", []):
            kind = element.get("type", "scenario")
            if kind != "scenario":
                continue
            element_line = _line(element.get("location", ""))
            description = element.get("description", [])
            elements.append(
                {
                    "id": f"{feature_id};{_slug(element.get('name', '')) or kind}",
                    "keyword": element.get("keyword", "Scenario"),
                    "name": element.get("name", ""),
                    "line": element_line,
                    "description": "\n".join(description) if isinstance(description, list) else "",
                    "type": kind,
                    "tags": _tags(element.get("tags", []), element_line),
                    "steps": [_step(s) for s in element.get("steps", [])],
                }
            )
        description = feature.get("description", [])
        converted.append(
            {
                "uri": uri,
                "id": feature_id,
                "keyword": feature.get("keyword", "Feature"),
                "name": feature.get("name", ""),
                "line": line,
                "description": "\n".join(description) if isinstance(description, list) else "",
                "tags": _tags(feature.get("tags", []), line),
                "elements": elements,
            }
        )
    return converted
