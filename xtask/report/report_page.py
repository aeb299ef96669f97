"""``python -m xtask report-page``: the traceability page, opened in a real headless Chromium.

The dev loop runs it after ``trace``: it loads ``reports/traceability.html`` from disk and checks
it against ``reports/traceability.json`` of the same run: every summary count (per status, per
level, per family) equals the JSON, filtering to each status shows exactly the JSON's IDs of that
status, every link on the page resolves to a file that exists, one spec link and one test link
open in the browser on the right text, and the page's script raised nothing. It then saves a
screenshot (``reports/traceability.png``, or ``--screenshot PATH``: the README's picture is made
this way).

The browser is Chromium from the distribution's packages (``scripts/install.sh`` installs it),
driven by Playwright for Python pointed at that binary (``LLORCH_CHROMIUM`` overrides the path):
Playwright's own browser downloads are not needed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

from xtask.report.report_html import LEVELS, STATUSES, family, slug

if TYPE_CHECKING:
    from playwright.sync_api import Page

ROOT = Path(__file__).resolve().parents[2]
REPORTS = ROOT / "reports"
CHROMIUM_ENV = "LLORCH_CHROMIUM"
# No background traffic: this machine's network is closed, and a report page needs none.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


class BrowserMissing(RuntimeError):
    pass


def chromium_path() -> str:
    configured = os.environ.get(CHROMIUM_ENV)
    if configured:
        return configured
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    raise BrowserMissing(
        "no Chromium found: `bash scripts/install.sh` installs Debian's `chromium` package "
        f"(as root), or set {CHROMIUM_ENV} to a Chromium binary"
    )


class ReportPage:
    """What a reader sees on the page, read through the browser's rendering."""

    def __init__(self, page: Page) -> None:
        self.page = page
        self.errors: list[str] = []
        page.on("pageerror", lambda exc: self.errors.append(str(exc)))

    def cards(self) -> dict[str, int]:
        return {s: int(self.page.inner_text(f"#count-{slug(s)} .n")) for s in ("total", *STATUSES)}

    def table_counts(self, table: str, key: str) -> dict[str, dict[str, int]]:
        rows: dict[str, dict[str, int]] = self.page.eval_on_selector_all(
            f"#{table} tr[data-{key}]",
            """(rows, key) => Object.fromEntries(rows.map(r => [r.dataset[key],
                Object.fromEntries([...r.querySelectorAll('td[data-status]')]
                    .map(td => [td.dataset.status, Number(td.textContent)]))]))""",
            key,
        )
        return rows

    def filter(self, *, status: str = "", level: str = "", fam: str = "", text: str = "") -> None:
        self.page.select_option("#f-status", status)
        self.page.select_option("#f-level", level)
        self.page.select_option("#f-family", fam)
        self.page.fill("#f-text", text)

    def visible_ids(self) -> list[str]:
        ids: list[str] = self.page.eval_on_selector_all(
            "details.req",
            "els => els.filter(e => e.getClientRects().length > 0).map(e => e.dataset.id)",
        )
        return ids

    def shown(self) -> int:
        return int(self.page.inner_text("#shown"))

    def hrefs(self) -> list[str]:
        links: list[str] = self.page.eval_on_selector_all("a.loc", "as => as.map(a => a.href)")
        return links

    def problems(self) -> list[str]:
        return [p.strip() for p in self.page.locator("#problems li").all_inner_texts()]

    def open_requirement(self, req_id: str) -> str:
        details = self.page.locator(f"details#req-{req_id}")
        details.locator("summary").click()
        return details.inner_text()


@contextmanager
def open_report(path: Path, *, width: int = 1280, height: int = 1000) -> Iterator[ReportPage]:
    # Imported here so the other xtask commands start without loading the browser driver.
    from playwright.sync_api import sync_playwright  # noqa: PLC0415

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            page.set_default_timeout(15_000)
            report = ReportPage(page)
            page.goto(path.resolve().as_uri())
            yield report
        finally:
            browser.close()


def file_of(url: str) -> Path | None:
    parts = urlsplit(url)
    return Path(unquote(parts.path)) if parts.scheme == "file" else None


def expected_counts(data: dict[str, Any]) -> tuple[dict[str, dict[str, int]], ...]:
    """Per level and per family counts, recomputed from the JSON's requirements."""
    levels: dict[str, dict[str, int]] = {}
    families: dict[str, dict[str, int]] = {}
    for req in data["requirements"]:
        for table, key in ((levels, req["level"]), (families, family(req["id"]))):
            table.setdefault(key, dict.fromkeys(STATUSES, 0))[req["status"]] += 1
    return {k: levels[k] for k in LEVELS if k in levels}, families


def check(report: ReportPage, data: dict[str, Any]) -> list[str]:
    """Every way the page can disagree with the JSON it was generated beside."""
    problems: list[str] = []
    total = len(data["requirements"])
    cards = report.cards()
    if cards != {"total": total, **data["summary"]}:
        problems.append(f"summary cards {cards} != JSON {data['summary']} of {total}")
    levels, families = expected_counts(data)
    if report.table_counts("levels", "level") != levels:
        problems.append("the per-level table differs from the JSON")
    if report.table_counts("families", "family") != families:
        problems.append("the per-family table differs from the JSON")
    for status in STATUSES:
        report.filter(status=status)
        want = sorted(r["id"] for r in data["requirements"] if r["status"] == status)
        seen = sorted(report.visible_ids())
        if seen != want or report.shown() != len(want):
            problems.append(f"filter {status}: shows {seen}, the JSON has {want}")
    report.filter()
    if len(report.visible_ids()) != total:
        problems.append("with no filter, not every requirement is shown")
    for url in report.hrefs():
        target = file_of(url)
        if target is None or not target.is_file():
            problems.append(f"link {url} does not resolve to a file")
    problems += [f"page script error: {e}" for e in report.errors]
    return problems


def _needle(evidence: dict[str, Any]) -> str:
    """Text the evidence's file must contain: the test function or the scenario's name."""
    if evidence["runner"] == "pytest":
        return str(evidence["name"]).split("::")[-1]
    return str(evidence["name"]).removeprefix(evidence["location"]).strip()


def follow_links(report: ReportPage, data: dict[str, Any]) -> list[str]:
    """Click a spec link, a pytest link and a behave link: each opens the text it points at."""
    page_url = report.page.url.split("#")[0]
    targets: list[tuple[str, str, str]] = []  # requirement, selector, needle
    for runner in ("pytest", "behave"):
        for req in data["requirements"]:
            found = [e for e in req["covered_by"] if e["runner"] == runner]
            if found:
                selector = f"ul.evidence[data-runner='{runner}'] a.loc"
                targets.append((req["id"], selector, _needle(found[0])))
                break
        else:
            return [f"no requirement has {runner} evidence to follow"]
    first = targets[0][0]
    targets.insert(0, (first, "dl.meta a.loc", first))
    problems: list[str] = []
    for req_id, selector, needle in targets:
        report.page.goto(page_url)
        details = report.page.locator(f"details#req-{req_id}")
        details.locator("summary").click()
        details.locator(selector).first.click()
        report.page.wait_for_load_state()
        if needle not in report.page.inner_text("body"):
            problems.append(f"{req_id}: following {selector} did not show {needle!r}")
    return problems


def screenshots(report: ReportPage, path: Path, example: str) -> None:
    """The top of the page, and beside it (``-evidence``) one requirement opened."""
    page = report.page
    report.filter()
    page.evaluate("() => { document.activeElement.blur(); window.scrollTo(0, 0); }")
    page.screenshot(path=str(path))
    report.filter(text=example.lower())
    page.locator(f"details#req-{example} summary").click()
    page.locator(f"details#req-{example}").scroll_into_view_if_needed()
    page.evaluate("id => document.getElementById('req-' + id).scrollIntoView()", example)
    page.evaluate("() => window.scrollBy(0, -60)")
    page.screenshot(path=str(path.with_name(f"{path.stem}-evidence{path.suffix}")))
    report.filter()


def run(args: argparse.Namespace) -> int:
    html_path, json_path = REPORTS / "traceability.html", REPORTS / "traceability.json"
    if not html_path.exists() or not json_path.exists():
        print("report-page: run `python -m xtask trace` first", file=sys.stderr)
        return 1
    data = json.loads(json_path.read_text(encoding="utf-8"))
    try:
        with open_report(html_path) as report:
            problems = check(report, data)
            screenshots(report, args.screenshot, args.example)
            problems += follow_links(report, data)
    except BrowserMissing as exc:
        print(f"report-page: {exc}", file=sys.stderr)
        return 1
    for problem in problems:
        print(f"report-page: {problem}", file=sys.stderr)
    if problems:
        return 1
    status = ", ".join(f"{n} {s}" for s, n in data["summary"].items())
    print(f"report-page: the page agrees with the JSON ({status}); screenshots {args.screenshot}")
    return 0


def add_parser(sub: Any) -> None:
    parser = sub.add_parser(
        "report-page", help="check reports/traceability.html in headless Chromium"
    )
    parser.add_argument(
        "--screenshot", type=Path, default=REPORTS / "traceability.png", help="where to save it"
    )
    parser.add_argument(
        "--example", default="HOME-304", help="the requirement opened in the second screenshot"
    )
    parser.set_defaults(run=run)
