"""``python -m xtask trace --merge DIR...``: one run from the reports of N shards (HARN-304).

Each ``DIR`` is the ``reports/`` folder a ``dev-loop --shard I/N`` left, with its
``shard.json``. The merge refuses a set that is not exactly shards 1..N of one commit (a
missing, duplicated or foreign shard) and any test or scenario reported by two shards; it
then writes the union of their result files into ``reports/`` under a new run id, for trace
to read as one run.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

from xtask.loop.results import start_run, write_result


def _read(path: Path) -> dict[str, Any] | None:
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    return document if isinstance(document, dict) else None


def check_shards(dirs: list[Path]) -> tuple[list[dict[str, Any]], list[str]]:
    manifests: list[dict[str, Any]] = []
    problems: list[str] = []
    for folder in dirs:
        manifest = _read(folder / "shard.json")
        if manifest is None:
            problems.append(f"{folder}: no shard.json (not the reports of dev-loop --shard)")
        else:
            manifests.append({**manifest, "dir": folder})
    if problems or not manifests:
        return manifests, problems or ["no shards given"]
    counts = {m["of"] for m in manifests}
    commits = {m["commit"] for m in manifests}
    if len(counts) != 1:
        problems.append(f"shards of different splits: N = {sorted(counts)}")
    if len(commits) != 1:
        problems.append(f"shards of different commits: {sorted(commits)}")
    seen = Counter(m["shard"] for m in manifests)
    total = max(counts)
    duplicated = sorted(i for i, n in seen.items() if n > 1)
    missing = sorted(set(range(1, total + 1)) - set(seen))
    if duplicated:
        problems.append(f"shard(s) {duplicated} of {total} given more than once")
    if missing:
        problems.append(f"shard(s) {missing} of {total} missing")
    return manifests, problems


def merge(dirs: list[Path], reports: Path, result_files: list[str]) -> list[str]:
    """Problems; none means ``reports/`` now holds the merged run."""
    manifests, problems = check_shards(dirs)
    if problems:
        return problems
    merged: dict[str, dict[str, Any]] = {}
    for name in result_files:
        parts = []
        for manifest in manifests:
            document = _read(manifest["dir"] / name)
            if document is not None and document.get("run_id") == manifest["run_id"]:
                parts.append((manifest["shard"], document))
        if not parts:
            continue
        if name == "behave.json":
            features = [f for _, d in parts for f in d.get("features", [])]
            where = Counter(e.get("location") for f in features for e in f.get("elements", []))
            problems += [
                f"{name}: scenario {loc} in two shards" for loc, n in where.items() if n > 1
            ]
            merged[name] = {"features": features}
            continue
        results: dict[str, Any] = {}
        for shard, document in parts:
            for key, entry in document.get("results", {}).items():
                if key in results:
                    problems.append(f"{name}: {key} reported by two shards (one is {shard})")
                results[key] = entry
        merged[name] = {"results": results}
    if problems:
        return problems
    start_run()
    for name, payload in merged.items():
        write_result(reports / name, payload)
    shards_run = ", ".join(
        f"{m['shard']}/{m['of']}" for m in sorted(manifests, key=lambda m: m["shard"])
    )
    print(f"trace --merge: shards {shards_run} of {manifests[0]['commit']} merged into {reports}")
    return []
