"""Runs features/ (or LLORCH_BDD_FEATURE_PATH) through pytest-bdd with the shared steps."""

from __future__ import annotations

import os
from pathlib import Path

from pytest_bdd import scenarios

ROOT = Path(__file__).resolve().parents[2]
FEATURES = Path(os.environ.get("LLORCH_BDD_FEATURE_PATH") or ROOT / "features")

scenarios(str(FEATURES if FEATURES.is_absolute() else ROOT / FEATURES))
