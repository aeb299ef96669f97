"""Regenerate derived contracts; ``--check`` fails on drift instead of writing (HOME-1203).

Today that is the config JSON Schema, generated from the pydantic models so the schema can
never disagree with what the server accepts. Output is canonical JSON (sorted keys, fixed
indent, trailing newline): generating twice gives identical bytes.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from orchestratord.config import Config

ROOT = Path(__file__).resolve().parents[2]
CONFIG_SCHEMA = ROOT / "contracts" / "schemas" / "config.schema.json"
SCHEMA_ID = "https://llama-orch.local/schemas/config.schema.json"


def config_schema_bytes() -> bytes:
    schema: dict[str, Any] = Config.model_json_schema()
    schema = {"$schema": "https://json-schema.org/draft/2020-12/schema", "$id": SCHEMA_ID, **schema}
    return (json.dumps(schema, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode()


def outputs() -> dict[Path, bytes]:
    return {CONFIG_SCHEMA: config_schema_bytes()}


def run(args: argparse.Namespace) -> int:
    drifted = []
    for path, content in outputs().items():
        current = path.read_bytes() if path.exists() else None
        if current == content:
            continue
        if args.check:
            drifted.append(path)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(content)
            print(f"wrote {path.relative_to(ROOT)}")
    for path in drifted:
        print(f"drift: {path.relative_to(ROOT)} differs from its generator", file=sys.stderr)
    if drifted:
        print("run `python -m xtask regen` and commit the result", file=sys.stderr)
        return 1
    return 0


def add_parser(sub: Any) -> None:
    parser = sub.add_parser("regen", help="regenerate contracts/schemas (config schema)")
    parser.add_argument("--check", action="store_true", help="fail on drift, write nothing")
    parser.set_defaults(run=run)
