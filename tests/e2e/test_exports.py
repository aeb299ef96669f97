"""Exports other tools read, read back with real parsers (HARN-601, HARN-602)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from cucumber_json_aggregator.loader import load_files
from cucumber_json_aggregator.summary import summarize
from reqif.parser import ReqIFParser

from xtask.report import cucumber_json, export_reqif
from xtask.spec.spec_extract import all_requirements, fingerprint

ROOT = Path(__file__).resolve().parents[2]
FEATURE = "features/capabilities.feature"

pytestmark = pytest.mark.e2e


def scenario_count(feature: str) -> int:
    text = (ROOT / feature).read_text(encoding="utf-8")
    return sum(1 for line in text.splitlines() if line.strip().startswith("Scenario"))


@pytest.mark.req("HARN-601")
def test_both_runners_write_cucumber_json_that_a_cucumber_reader_reads_back(
    tmp_path: Path,
) -> None:
    outer = {k: v for k, v in os.environ.items() if k not in ("LLORCH_SHARD", "LLORCH_AFFECTED")}
    env = {**outer, "LLORCH_BDD_FEATURE_PATH": FEATURE, "LLORCH_RUN_ID": "export-test"}
    behave_raw = tmp_path / "behave.json"
    behave = subprocess.run(
        [sys.executable, "-m", "behave", "--no-capture", "--format", "json",
         "--outfile", str(behave_raw), FEATURE],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert behave.returncode == 0, behave.stdout[-2000:]
    from_behave = tmp_path / "cucumber-behave.json"
    features = json.loads(behave_raw.read_text(encoding="utf-8"))
    from_behave.write_text(json.dumps(cucumber_json.from_behave(features)), encoding="utf-8")
    from_pytest = tmp_path / "cucumber-pytest-bdd.json"
    pytest_bdd = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/bdd",
         f"--cucumberjson={from_pytest}"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert pytest_bdd.returncode == 0, pytest_bdd.stdout[-2000:]

    expected = scenario_count(FEATURE)
    for path in (from_behave, from_pytest):
        loaded = load_files([path])
        assert loaded.warnings == [], loaded.warnings  # every item is a Cucumber feature
        assert loaded.skipped == 0 and len(loaded.files) == 1
        features = loaded.files[0].features
        summary = summarize(features, len(loaded.files), loaded.skipped, 0)
        assert (summary.features, summary.scenarios) == (1, expected), path.name
        assert summary.passed == expected and summary.failed == 0, path.name
        uris = {f.get("uri", "").split("features/")[-1] for f in features}
        assert uris == {"capabilities.feature"}, path.name


@pytest.mark.req("HARN-602")
def test_the_spec_as_reqif_validates_against_the_schema_and_reads_back_whole(
    tmp_path: Path,
) -> None:
    target = tmp_path / "spec.reqif"
    assert export_reqif.export(target) == 0
    reqif_cli = str(Path(sys.executable).with_name("reqif"))  # the library's own validator
    validate = subprocess.run(
        [reqif_cli, "validate", "--use-reqif-schema", str(target)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert validate.returncode == 0 and "0 schema issues" in validate.stdout, validate.stdout
    bundle = ReqIFParser.parse(str(target))
    assert bundle.exceptions == []
    content = bundle.core_content.req_if_content
    read = {
        o.identifier.removeprefix("SO-"): {a.definition_ref: a.value for a in o.attributes}
        for o in content.spec_objects
    }
    requirements = all_requirements()
    assert set(read) == set(requirements)
    for req_id, req in requirements.items():
        assert read[req_id]["AD-CLAUSE"] == req.text
        assert read[req_id]["AD-LEVEL"] == req.level
        assert read[req_id]["AD-FINGERPRINT"] == fingerprint(req)
    again = tmp_path / "again.reqif"
    export_reqif.export(again)
    assert again.read_bytes() == target.read_bytes()  # byte-stable: no clock in it
