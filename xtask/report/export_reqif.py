"""The spec as ReqIF 1.2, for requirements tools to import (HARN-602).

One SPEC-OBJECT per requirement with its ID, level, scope (with the waiver), clause,
source and fingerprint as string attributes, under one SPECIFICATION per spec file. Built
with the ``reqif`` library's models and unparser (strictdoc's), not hand-written XML; the
identifiers are stable (derived from the IDs), and the header carries no clock, so the same
spec gives the same file.
"""

from __future__ import annotations

import argparse
import subprocess
from pathlib import Path
from typing import Any

from reqif.models.reqif_core_content import ReqIFCoreContent
from reqif.models.reqif_data_type import ReqIFDataTypeDefinitionString
from reqif.models.reqif_namespace_info import ReqIFNamespaceInfo
from reqif.models.reqif_req_if_content import ReqIFReqIFContent
from reqif.models.reqif_reqif_header import ReqIFReqIFHeader
from reqif.models.reqif_spec_hierarchy import ReqIFSpecHierarchy
from reqif.models.reqif_spec_object import ReqIFSpecObject, SpecObjectAttribute
from reqif.models.reqif_spec_object_type import ReqIFSpecObjectType, SpecAttributeDefinition
from reqif.models.reqif_specification import ReqIFSpecification
from reqif.models.reqif_specification_type import ReqIFSpecificationType
from reqif.models.reqif_types import SpecObjectAttributeType
from reqif.object_lookup import ReqIFObjectLookup
from reqif.reqif_bundle import ReqIFBundle
from reqif.unparser import ReqIFUnparser

from xtask.spec.spec_extract import Requirement, collect_specs, fingerprint

ROOT = Path(__file__).resolve().parents[2]
OUTPUT = ROOT / "reports" / "spec.reqif"
STRING = "DT-STRING"
OBJECT_TYPE = "SOT-REQUIREMENT"
SPEC_TYPE = "ST-SPEC-FILE"
FIELDS = ("ID", "Level", "Scope", "Clause", "Source", "Fingerprint")


def _values(req: Requirement) -> dict[str, str]:
    scope = f"waived: {req.waiver}" if req.scope == "waived" and req.waiver else req.scope
    return {
        "ID": req.id,
        "Level": req.level,
        "Scope": scope,
        "Clause": req.text,
        "Source": req.source,
        "Fingerprint": fingerprint(req),
    }


def spec_time() -> str:
    """When the spec last changed (its last commit), for every LAST-CHANGE: no clock."""
    try:
        out = subprocess.run(
            ["git", "-C", str(ROOT), "log", "-1", "--format=%cI", "--", ".specs"],
            capture_output=True, text=True, check=True,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        out = ""
    return out or "2026-01-01T00:00:00+00:00"


def bundle(by_file: dict[str, list[Requirement]], changed: str) -> ReqIFBundle:
    string = SpecObjectAttributeType.STRING
    definitions = [
        SpecAttributeDefinition(
            string, f"AD-{name.upper()}", STRING, long_name=name, last_change=changed
        )
        for name in FIELDS
    ]
    objects: list[ReqIFSpecObject] = []
    specifications: list[ReqIFSpecification] = []
    for stem, reqs in sorted(by_file.items()):
        children = []
        for req in reqs:
            attributes = [
                SpecObjectAttribute(string, f"AD-{name.upper()}", value)
                for name, value in _values(req).items()
            ]
            objects.append(
                ReqIFSpecObject(
                    f"SO-{req.id}", attributes, OBJECT_TYPE, last_change=changed, long_name=req.id
                )
            )
            children.append(
                ReqIFSpecHierarchy(
                    identifier=f"SH-{req.id}",
                    spec_object=f"SO-{req.id}",
                    level=1,
                    last_change=changed,
                )
            )
        specifications.append(
            ReqIFSpecification(
                f"SPEC-{stem}",
                last_change=changed,
                long_name=stem,
                specification_type=SPEC_TYPE,
                children=children,
            )
        )
    content = ReqIFReqIFContent(
        data_types=[
            ReqIFDataTypeDefinitionString(
                STRING, last_change=changed, long_name="String", max_length="65535"
            )
        ],
        spec_types=[
            ReqIFSpecObjectType(
                OBJECT_TYPE,
                last_change=changed,
                long_name="Requirement",
                attribute_definitions=definitions,
            ),
            ReqIFSpecificationType(SPEC_TYPE, last_change=changed, long_name="Spec file"),
        ],
        spec_objects=objects,
        specifications=specifications,
    )
    header = ReqIFReqIFHeader(
        identifier="llama-orch-spec",
        creation_time=changed,
        req_if_tool_id="llama-orch xtask",
        req_if_version="1.0",
        source_tool_id="llama-orch .specs/",
        title="llama-orch requirements",
    )
    return ReqIFBundle(
        namespace_info=ReqIFNamespaceInfo.empty(
            namespace="http://www.omg.org/spec/ReqIF/20110401/reqif.xsd", configuration=None
        ),
        req_if_header=header,
        core_content=ReqIFCoreContent(content),
        tool_extensions_tag_exists=False,
        lookup=ReqIFObjectLookup.empty(),
        exceptions=[],
    )


def export(path: Path = OUTPUT) -> int:
    by_file, problems = collect_specs()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(ReqIFUnparser.unparse(bundle(by_file, spec_time())), encoding="utf-8")
    count = sum(len(reqs) for reqs in by_file.values())
    print(f"export-reqif: {count} requirements from {len(by_file)} spec files → {path}")
    return 1 if problems else 0


def run(args: argparse.Namespace) -> int:
    return export(Path(args.output))


def add_parser(sub: Any) -> None:
    parser = sub.add_parser("export-reqif", help="the spec as ReqIF, for requirements tools")
    parser.add_argument("--output", default=str(OUTPUT), help="where (default reports/spec.reqif)")
    parser.set_defaults(run=run)
