"""``python -m xtask <command>``: one entry point for the project's own tooling."""

from __future__ import annotations

import argparse
import sys

from xtask.bench import bench
from xtask.checks import (
    bdd,
    conformance,
    deploy_matrix,
    determinism,
    fit_check,
    metrics_lint,
    mutate,
    pact,
    regen,
    soak,
)
from xtask.fakes import tiny_models
from xtask.loop import affected, dev_loop, history
from xtask.report import dashboard_png, export_reqif, report_page, trace
from xtask.spec import fingerprints, spec_extract


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m xtask")
    sub = parser.add_subparsers(dest="command", required=True)
    dev_loop.add_parser(sub)
    regen.add_parser(sub)
    spec_extract.add_parser(sub)
    metrics_lint.add_parser(sub)
    pact.add_parser(sub)
    bdd.add_parser(sub)
    trace.add_parser(sub)
    report_page.add_parser(sub)
    bench.add_parser(sub)
    soak.add_parser(sub)
    conformance.add_parser(sub)
    mutate.add_parser(sub)
    determinism.add_parser(sub)
    dashboard_png.add_parser(sub)
    fit_check.add_parser(sub)
    tiny_models.add_parser(sub)
    fingerprints.add_parser(sub)
    deploy_matrix.add_parser(sub)
    history.add_parser(sub)
    affected.add_parser(sub)
    export_reqif.add_parser(sub)
    args = parser.parse_args(argv)
    return int(args.run(args))


if __name__ == "__main__":
    sys.exit(main())
