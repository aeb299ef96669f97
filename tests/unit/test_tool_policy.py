"""The mediated fetch tool through ``POST /v1/tools/fetch``, against loopback HTTP servers
only (HOME-104, HARD-101, FR-TL-001, FR-TL-002, OC-POLICY-4030..4032).

Names resolve through a stand-in resolver that hands out loopback addresses only, so a wrong
policy could reach nothing but these test servers.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

import orchestratord.outbound.policy as policy_module
from orchestratord.outbound.addresses import normalize_host
from orchestratord.outbound.client import forwarded_headers
from orchestratord.outbound.policy import Target
from tests.unit import tool_hooks as hooks
from tests.unit.conftest import AUTH, TOKEN
from tests.unit.standin_resolver import StandInResolver

SECRET = "sk-live-0123456789"


@asynccontextmanager
async def site(
    host: str = "127.0.0.1", audit_path: Path | None = None
) -> AsyncIterator[tuple[str, list[dict[str, Any]]]]:
    """A loopback site; ``seen`` records every request that reached it."""
    seen: list[dict[str, Any]] = []
    closing = asyncio.Event()

    def audit_now() -> str:
        return audit_path.read_text() if audit_path is not None and audit_path.exists() else ""

    async def page(request: web.Request) -> web.Response:
        audited = audit_now()
        body = await request.text()
        seen.append(
            {**request.headers, "path": request.path_qs, "audit_then": audited, "body": body}
        )
        return web.Response(text=f"hello; token {TOKEN}; key {SECRET}", content_type="text/plain")

    async def image(request: web.Request) -> web.Response:
        return web.Response(body=b"\x89PNG", content_type="image/png")

    async def big(request: web.Request) -> web.Response:
        return web.Response(text="x" * 5000, content_type="text/plain")

    async def chunked(request: web.Request) -> web.StreamResponse:
        """``n`` bytes in 10 KB chunks, no Content-Length, small pauses between them."""
        seen.append({"path": request.path_qs})
        total = int(request.query["n"])
        response = web.StreamResponse(headers={"Content-Type": "text/plain"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        sent = 0
        while sent < total:
            piece = min(10_000, total - sent)
            await response.write(b"y" * piece)
            sent += piece
            await asyncio.sleep(0.001)
        await response.write_eof()
        return response

    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(2)
        return web.Response(text="late")

    async def declared(request: web.Request) -> web.StreamResponse:
        """Declares ``n`` bytes, sends ten and holds the rest until the site closes: only a
        check of the declared length answers before the tool's timeout."""
        response = web.StreamResponse(headers={"Content-Type": "text/plain"})
        response.content_length = int(request.query["n"])
        await response.prepare(request)
        await response.write(b"z" * 10)
        await closing.wait()
        return response

    async def redirect(request: web.Request) -> web.Response:
        raise web.HTTPFound(request.query["to"])

    async def bad_location(request: web.Request) -> web.Response:
        return web.Response(status=302, headers={"Location": "http://[::1"})

    async def odd_charset(request: web.Request) -> web.Response:
        charset = request.query.get("charset", "x-klingon")
        return web.Response(
            body="grüße".encode(), headers={"Content-Type": f"text/plain; charset={charset}"}
        )

    app = web.Application()
    routes = {"/page": page, "/image": image, "/big": big, "/slow": slow, "/chunked": chunked,
              "/redirect": redirect, "/admin": page, "/bad-location": bad_location,
              "/odd-charset": odd_charset, "/declared": declared}  # fmt: skip
    for path, handler in routes.items():
        app.router.add_route("*", path, handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, 0).start()
    try:
        yield f"http://{host}:{runner.addresses[0][1]}", seen
    finally:
        closing.set()
        await runner.cleanup()


def audit(tmp_path: Path) -> list[dict[str, Any]]:
    lines = (tmp_path / "state" / "tool-audit.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


LOOPBACK = {"allow_networks": ["127.0.0.0/8"], "redact_patterns": [r"sk-live-\w+"]}
TOOLS = {"max_response_bytes": 1000, "timeout_ms": 300}


async def fetch(conductor: Any, **body: Any) -> Any:
    return await conductor.simulate_post("/v1/tools/fetch", json=body, headers=AUTH)


@pytest.mark.req("HOME-104", "FR-TL-001", "OC-POLICY-4031", "OC-POLICY-4032")
async def test_an_allowed_fetch_is_redacted_both_ways_and_audited_before_it_is_sent(
    conductor_for: Any, tmp_path: Path
) -> None:
    audit_path = tmp_path / "state" / "tool-audit.jsonl"
    async with (
        site(audit_path=audit_path) as (url, seen),
        conductor_for(tools=TOOLS, outbound=LOOPBACK) as (_, conductor),
    ):
        got = await fetch(
            conductor,
            url=f"{url}/redirect?to=/page",
            headers={"X-Key": f"Bearer {TOKEN}", "Host": "intranet.corp"},
        )
    assert got.status_code == 200, got.json
    assert got.json["status"] == 200 and got.json["final_url"] == f"{url}/page"
    assert got.json["redirects"] == [f"{url}/page"]
    assert got.json["body"] == "hello; token [REDACTED]; key [REDACTED]"
    assert seen[0]["X-Key"] == "Bearer [REDACTED]"  # the API token never left
    assert seen[0]["Host"] == url.removeprefix("http://")  # the caller's Host was not sent
    records = audit(tmp_path)
    assert [r.get("decision") or r.get("outcome") for r in records] == ["allow", "allow", "ok"]
    assert records[1]["hop"] == 1 and records[1]["url"] == f"{url}/page"
    assert '"decision":"allow","hop":1' in seen[0]["audit_then"]  # on disk before the request
    assert TOKEN not in json.dumps(records)


@pytest.mark.parametrize(
    ("outbound", "path_or_url", "reason"),
    [
        ({**LOOPBACK, "deny_domains": ["localhost"]}, "http://localhost:{port}/page",
         "is on the deny list"),
        ({"allow_domains": ["example.org"]}, "http://localhost:{port}/page",
         "not on the allow list"),
        ({}, "/page", "IP literal 127.0.0.1 is not in outbound.allow_networks"),
        ({}, "http://localhost:{port}/page", "not a public address"),
        ({"allow_networks": ["127.0.0.1/32"]}, "/redirect?to=http://intranet.lan.:{port}/page",
         "not a public address"),  # a redirect may not lead where the URL may not go
        ({"allow_networks": ["127.0.0.1/32"]}, "/redirect?to=http://0x7f000002:{port}/page",
         "IP literal 127.0.0.2"),
        (LOOPBACK, "file:///etc/passwd", "scheme 'file' is not http or https"),
        ({**LOOPBACK, "hook": "tests.unit.tool_hooks:deny_admin"}, "/admin", "no admin pages"),
        ({**LOOPBACK, "hook": "tests.unit.tool_hooks.crash"}, "/page", "hook failed"),
    ],
)  # fmt: skip
@pytest.mark.req("HOME-104", "FR-TL-002", "OC-POLICY-4030", "OC-POLICY-4032")
async def test_denials_are_typed_refusals_with_an_audit_record_and_no_fetch(
    conductor_for: Any,
    tmp_path: Path,
    outbound: dict[str, Any],
    path_or_url: str,
    reason: str,
) -> None:
    resolver = StandInResolver({"intranet.lan": ["127.0.0.2"]})
    async with (
        site() as (url, seen),
        conductor_for(tools=TOOLS, outbound=outbound, resolver=resolver) as (_, c),
    ):
        port = url.rsplit(":", 1)[1]
        target = path_or_url.format(port=port)
        denied = await fetch(c, url=target if "://" in target.split("?")[0] else url + target)
    assert denied.status_code == 403 and denied.json["code"] == "FORBIDDEN", denied.json
    assert reason in denied.json["message"]
    decisions = [r for r in audit(tmp_path) if "decision" in r]
    assert decisions[-1]["decision"] == "deny" and reason in decisions[-1]["reason"]
    assert [s["path"] for s in seen if not s["path"].startswith("/redirect")] == []


@pytest.mark.parametrize(
    "spelling", ["2130706433", "0x7f000001", "0177.0.0.1", "127.1", "[::ffff:127.0.0.1]"]
)
@pytest.mark.req("HARD-101", "HOME-104")
async def test_loopback_in_other_spellings_is_an_unlisted_ip_literal(
    conductor_for: Any, spelling: str
) -> None:
    async with site() as (url, seen), conductor_for(tools=TOOLS) as (_, conductor):
        port = url.rsplit(":", 1)[1]
        denied = await fetch(conductor, url=f"http://{spelling}:{port}/page")
    assert denied.status_code == 403 and "IP literal" in denied.json["message"], denied.json
    assert seen == []


@pytest.mark.req("HARD-101", "OC-POLICY-4030")
async def test_a_trailing_dot_or_capitals_do_not_pass_the_deny_list(conductor_for: Any) -> None:
    resolver = StandInResolver({"pastebin.com": ["127.0.0.1"]})
    outbound = {"allow_networks": ["127.0.0.1/32"], "deny_domains": ["pastebin.com"]}
    async with (
        site() as (url, seen),
        conductor_for(tools=TOOLS, outbound=outbound, resolver=resolver) as (_, conductor),
    ):
        port = url.rsplit(":", 1)[1]
        answers = [
            await fetch(conductor, url=f"http://{name}:{port}/page")
            for name in ("pastebin.com.", "PasteBin.COM", "pastebin.com")
        ]
    assert [a.status_code for a in answers] == [403, 403, 403]
    assert all("deny list" in a.json["message"] for a in answers)
    assert seen == [] and resolver.asked == []


@pytest.mark.req("HARD-101", "OC-POLICY-4030")
async def test_an_allow_listed_domain_does_not_open_the_lan_to_its_subdomains(
    conductor_for: Any,
) -> None:
    resolver = StandInResolver({"x.duckdns.org": ["127.0.0.1"]})  # stands in for 192.168.1.1
    async with (
        site() as (url, seen),
        conductor_for(
            tools=TOOLS, outbound={"allow_domains": ["duckdns.org"]}, resolver=resolver
        ) as (_, conductor),
    ):
        port = url.rsplit(":", 1)[1]
        denied = await fetch(conductor, url=f"http://x.duckdns.org:{port}/page")
    assert denied.status_code == 403 and "not a public address" in denied.json["message"]
    assert seen == []


@pytest.mark.req("HARD-101", "HOME-104")
async def test_a_public_looking_name_is_fetched_under_the_default_policy(
    conductor_for: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The shipped default allows any public host. The stand-in resolves the public-looking
    name to 127.0.0.1 and the test has the policy take that address for a public one; the
    connection is pinned to it, so it reaches the loopback site and nothing else."""
    resolver = StandInResolver({"docs.example-public.org": ["127.0.0.1"]})
    monkeypatch.setattr(policy_module, "is_public", lambda address: True)
    async with site() as (url, seen), conductor_for(resolver=resolver) as (orch, conductor):
        assert orch.config.outbound.allow_domains == [] and orch.config.outbound.deny_domains == []
        port = url.rsplit(":", 1)[1]
        got = await fetch(conductor, url=f"http://docs.example-public.org:{port}/page")
    assert got.status_code == 200 and got.json["status"] == 200, got.json
    assert seen[0]["Host"] == f"docs.example-public.org:{port}"


@pytest.mark.req("HARD-103", "OC-POLICY-4031")
async def test_credentials_do_not_follow_a_redirect_to_another_host(conductor_for: Any) -> None:
    secret_headers = {"Authorization": "Basic dXNlcjpwYXNz", "Cookie": "session=abc"}
    async with (
        site("127.0.0.1") as (first, seen_first),
        site("127.0.0.2") as (second, seen_second),
        conductor_for(tools=TOOLS, outbound=LOOPBACK) as (_, conductor),
    ):
        same = await fetch(conductor, url=f"{first}/redirect?to=/page", headers=secret_headers)
        other = await fetch(
            conductor, url=f"{first}/redirect?to={second}/page", headers=secret_headers
        )
    assert same.status_code == 200 and other.status_code == 200
    assert seen_first[0]["Authorization"] == "Basic dXNlcjpwYXNz"  # same origin: kept
    assert seen_first[0]["Cookie"] == "session=abc"
    assert "Authorization" not in seen_second[0] and "Cookie" not in seen_second[0]


HOP_BY_HOP = {"Connection": "x-private", "Keep-Alive": "timeout=99", "TE": "trailers",
              "Upgrade": "websocket", "Proxy-Connection": "keep-alive", "Trailer": "X-After",
              "Host": "intranet.corp"}  # fmt: skip
CREDENTIALS = {"Authorization": "Bearer caller-secret", "Cookie": "session=abc",
               "Proxy-Authorization": "Basic cHJveHk6cGFzcw=="}  # fmt: skip


@pytest.mark.req("HARD-103")
async def test_a_port_change_drops_every_credential_and_hop_by_hop_headers_never_leave(
    conductor_for: Any,
) -> None:
    """Same host, another port: another origin. The hop there gets none of the caller's
    credentials, nor the first URL's userinfo (sent as Basic auth to the first hop only);
    no hop gets the caller's Host or a hop-by-hop header."""
    async with (
        site("127.0.0.1") as (first, seen_first),
        site("127.0.0.1") as (second, seen_second),
        conductor_for(tools=TOOLS, outbound=LOOPBACK) as (_, conductor),
    ):
        got = await fetch(
            conductor,
            url=f"{first}/redirect?to={second}/page",
            headers={**CREDENTIALS, **HOP_BY_HOP},
        )
        with_userinfo = first.replace("http://", "http://bob:hunter2@")
        userinfo = await fetch(conductor, url=f"{with_userinfo}/redirect?to={second}/page")
    assert got.status_code == 200 and got.json["final_url"] == f"{second}/page", got.json
    assert userinfo.status_code == 200 and userinfo.json["status"] == 200, userinfo.json
    (redirected, plain) = seen_second
    for name in CREDENTIALS:
        assert name not in redirected, (name, redirected)
    assert "Authorization" not in plain  # the userinfo did not follow either
    for seen in (redirected, plain):
        assert seen["Host"] == second.removeprefix("http://")
        for name, value in HOP_BY_HOP.items():
            assert seen.get(name) != value, (name, seen)
    assert seen_first == []  # /redirect answers before ``page`` records anything


@pytest.mark.req("HARD-103")
def test_credentials_are_kept_on_the_same_origin_and_dropped_on_a_scheme_change() -> None:
    """The rule itself, for the change a loopback test cannot serve (http to https)."""
    loopback = normalize_host("127.0.0.1")
    assert not isinstance(loopback, str)

    def target(scheme: str, host: str, port: int) -> Target:
        return Target(f"{scheme}://{host}:{port}/", host, port, scheme, [loopback])

    caller = {**CREDENTIALS, **HOP_BY_HOP, "Accept": "text/plain"}
    http = target("http", "docs.example.org", 443)
    first = forwarded_headers(caller, None, http)
    assert first == {**CREDENTIALS, "Accept": "text/plain"}
    assert forwarded_headers(first, http, target("http", "docs.example.org", 443)) == first
    for changed in (
        target("https", "docs.example.org", 443),
        target("http", "docs.example.org", 8443),
        target("http", "other.example.org", 443),
    ):
        assert forwarded_headers(first, http, changed) == {"Accept": "text/plain"}, changed


@pytest.mark.req("HARD-105", "OC-POLICY-4031", "OC-POLICY-4032")
async def test_userinfo_and_secret_query_values_stay_out_of_the_audit_and_the_answer(
    conductor_for: Any, tmp_path: Path
) -> None:
    async with (
        site() as (url, seen),
        conductor_for(tools=TOOLS, outbound=LOOPBACK) as (_, conductor),
    ):
        host = url.removeprefix("http://")
        got = await fetch(conductor, url=f"http://bob:hunter2@{host}/page?token=abc123&page=2")
    assert got.status_code == 200, got.json
    assert seen[0]["path"] == "/page?token=abc123&page=2"  # the site got what was asked
    shown = f"http://[REDACTED]@{host}/page?token=[REDACTED]&page=2"
    assert got.json["url"] == shown and got.json["final_url"] == shown
    text = (tmp_path / "state" / "tool-audit.jsonl").read_text()
    assert "hunter2" not in text and "abc123" not in text and "bob" not in text


@pytest.mark.parametrize(
    ("path_or_url", "status", "problem"),
    [
        ("http://127.0.0.1:99999/page", 400, "malformed"),
        ("http://" + "a" * 64 + ".example.org/", 400, "invalid host"),
        ("/bad-location", 200, "Location is not a valid URL"),
        ("/odd-charset", 200, "unknown charset"),
    ],
)
@pytest.mark.req("HARD-106", "OC-POLICY-4032")
async def test_odd_urls_and_answers_are_typed_errors_and_audited(
    conductor_for: Any, tmp_path: Path, path_or_url: str, status: int, problem: str
) -> None:
    async with site() as (url, _), conductor_for(tools=TOOLS, outbound=LOOPBACK) as (_, c):
        got = await fetch(c, url=path_or_url if "://" in path_or_url else url + path_or_url)
    assert got.status_code == status, got.json
    text = got.json["message"] if status == 400 else got.json["error"]
    assert problem in text
    assert audit(tmp_path), "every request leaves an audit record"
    if path_or_url == "/odd-charset":
        assert got.json["body"] == "grüße"


@pytest.mark.req("HOME-104", "HARD-104")
async def test_bodies_are_read_to_the_limit_and_refused_past_it(
    conductor_for: Any, tmp_path: Path
) -> None:
    tools = {"max_response_bytes": 400_000, "timeout_ms": 5000}
    async with site() as (url, _), conductor_for(tools=tools, outbound=LOOPBACK) as (_, c):
        whole = await fetch(c, url=f"{url}/chunked?n=300000")
        over = await fetch(c, url=f"{url}/chunked?n=400001")
    assert whole.status_code == 200 and whole.json["bytes"] == 300_000
    assert whole.json["body"] == "y" * 300_000
    assert over.status_code == 403 and "more than 400000 bytes" in over.json["message"]
    assert audit(tmp_path)[-1]["outcome"] == "refused"


@pytest.mark.req("HARD-104")
async def test_a_declared_length_past_the_limit_is_refused_without_reading_the_body(
    conductor_for: Any, tmp_path: Path
) -> None:
    """The site declares 5000 bytes, sends ten and holds the rest: reading would run into
    the tool's timeout (an ``error`` answer); the declared length is refused at once."""
    tools = {"max_response_bytes": 1000, "timeout_ms": 5000}
    async with site() as (url, _), conductor_for(tools=tools, outbound=LOOPBACK) as (_, c):
        over = await fetch(c, url=f"{url}/declared?n=5000")
    assert over.status_code == 403, over.json
    assert over.json["message"].endswith("the response has 5000 bytes, more than 1000")
    assert audit(tmp_path)[-1]["outcome"] == "refused"


@pytest.mark.req("HARD-105")
async def test_secrets_in_headers_and_body_are_redacted_from_what_is_sent(
    conductor_for: Any, tmp_path: Path
) -> None:
    tools = {**TOOLS, "methods": ["GET", "POST"]}
    async with site() as (url, seen), conductor_for(tools=tools, outbound=LOOPBACK) as (_, c):
        got = await fetch(
            c, url=f"{url}/page", method="POST", headers={"X-Note": f"key {SECRET}"},
            body=f"token={TOKEN}&key={SECRET}&plain=1",
        )  # fmt: skip
    assert got.status_code == 200, got.json
    (sent,) = seen
    assert sent["body"] == "token=[REDACTED]&key=[REDACTED]&plain=1"
    assert sent["X-Note"] == "key [REDACTED]"
    assert TOKEN not in json.dumps(audit(tmp_path)) and SECRET not in json.dumps(audit(tmp_path))


@pytest.mark.req("HOME-104")
async def test_methods_and_timeouts_are_bounded(conductor_for: Any, tmp_path: Path) -> None:
    async with site() as (url, _), conductor_for(tools=TOOLS, outbound=LOOPBACK) as (_, c):
        post = await fetch(c, url=f"{url}/page", method="POST", body="x")
        slow = await fetch(c, url=f"{url}/slow")
        image = await fetch(c, url=f"{url}/image")
        big = await fetch(c, url=f"{url}/big")
    assert post.status_code == 403 and "method POST is not allowed" in post.json["message"]
    assert slow.status_code == 200 and slow.json["error"].startswith("fetch failed")
    assert "TimeoutError" in slow.json["error"]
    assert image.status_code == 403 and "content type image/png" in image.json["message"]
    assert big.status_code == 403 and "more than 1000" in big.json["message"]
    kinds = [r.get("decision") or r.get("outcome") for r in audit(tmp_path)]
    assert kinds == ["deny", "allow", "error", "allow", "refused", "allow", "refused"]


@pytest.mark.parametrize("charset", ["base64", "rot13", "hex", "zlib", "bz2", "uu", "quopri"])
@pytest.mark.req("HARD-106", "OC-POLICY-4032")
async def test_a_codec_that_is_not_a_text_encoding_is_a_typed_answer_with_its_outcome(
    conductor_for: Any, tmp_path: Path, charset: str
) -> None:
    """Python knows these names but they decode bytes to bytes (or text to text): the
    answer says so and gives the body as UTF-8, and the audit has the allow's outcome."""
    async with site() as (url, _), conductor_for(tools=TOOLS, outbound=LOOPBACK) as (_, c):
        got = await fetch(c, url=f"{url}/odd-charset?charset={charset}")
    assert got.status_code == 200, got.text
    assert "is not a text encoding" in got.json["error"] and got.json["body"] == "grüße"
    kinds = [r.get("decision") or r.get("outcome") for r in audit(tmp_path)]
    assert kinds == ["allow", "error"]


@pytest.mark.req("HARD-105", "OC-POLICY-4031")
async def test_secrets_in_the_url_are_not_sent_upstream(conductor_for: Any, tmp_path: Path) -> None:
    """The API token and a redact_patterns match in the query are redacted in the request
    that leaves, not only in what the answer and the audit show."""
    async with site() as (url, seen), conductor_for(tools=TOOLS, outbound=LOOPBACK) as (_, c):
        got = await fetch(c, url=f"{url}/page?key={TOKEN}&other={SECRET}&plain=1")
    assert got.status_code == 200, got.text
    (sent,) = seen
    assert TOKEN not in sent["path"] and SECRET not in sent["path"], sent["path"]
    assert "plain=1" in sent["path"] and sent["path"].count("REDACTED") == 2
    assert TOKEN not in json.dumps(audit(tmp_path)) and SECRET not in got.text


@pytest.mark.req("HARD-107")
async def test_the_policy_hook_runs_off_the_event_loop_and_a_slow_one_denies(
    conductor_for: Any,
) -> None:
    hooks.entered.clear()
    hooks.released.clear()
    hooks.outcome.clear()
    outbound = {**LOOPBACK, "hook": "tests.unit.tool_hooks:wait_for_release"}
    try:
        async with site() as (url, seen), conductor_for(tools=TOOLS, outbound=outbound) as (_, c):
            fetching = asyncio.create_task(fetch(c, url=f"{url}/page"))
            assert await asyncio.to_thread(hooks.entered.wait, 10), "the hook was never called"
            # The loop serves another request while the hook waits ...
            served = await c.simulate_get("/v1/capabilities", headers=AUTH)
            assert served.status_code == 200
            hooks.released.set()  # ... and only then is the hook let go
            answered = await fetching
        assert hooks.outcome == {"released_while_waiting": True}
        assert answered.status_code == 200 and answered.json["status"] == 200
        hooks.entered.clear()
        hooks.released.clear()
        slow = {**outbound, "hook_timeout_ms": 50}
        async with site() as (url, seen), conductor_for(tools=TOOLS, outbound=slow) as (_, c):
            denied = await fetch(c, url=f"{url}/page")
        assert denied.status_code == 403, denied.json
        assert "the policy hook did not answer in 0.05 s" in denied.json["message"]
        assert seen == []
    finally:
        hooks.released.set()  # a hook thread past its limit is not left waiting


@pytest.mark.req("HARD-107", "HARD-105")
async def test_an_unwritable_audit_log_refuses_the_request_and_the_log_is_rotated(
    conductor_for: Any, tmp_path: Path
) -> None:
    audit_path = tmp_path / "state" / "tool-audit.jsonl"
    bounded = {**LOOPBACK, "audit_max_bytes": 4096, "audit_keep": 2}
    async with site() as (url, seen), conductor_for(tools=TOOLS, outbound=bounded) as (o, c):
        threads: set[bool] = set()
        append = o.outbound.audit._append

        def watched(line: bytes) -> None:
            threads.add(threading.current_thread() is threading.main_thread())
            append(line)

        o.outbound.audit._append = watched
        for n in range(30):
            ok = await fetch(c, url=f"{url}/page?n={n}")
            assert ok.status_code == 200, ok.json
        kept = sorted(p.name for p in audit_path.parent.glob("tool-audit.jsonl*"))
        sizes = [p.stat().st_size for p in audit_path.parent.glob("tool-audit.jsonl*")]
        newest = audit(tmp_path)[-1]
        audit_path.unlink()
        audit_path.symlink_to(tmp_path / "elsewhere")  # O_NOFOLLOW: it cannot be opened
        refused = await fetch(c, url=f"{url}/page?n=last")
    assert kept == ["tool-audit.jsonl", "tool-audit.jsonl.1", "tool-audit.jsonl.2"]
    assert max(sizes) <= 4096
    assert newest["outcome"] == "ok"
    assert refused.status_code == 403 and refused.json["code"] == "FORBIDDEN", refused.json
    assert "cannot be written" in refused.json["message"]
    assert [s["path"] for s in seen if s["path"].endswith("n=last")] == []
    assert threads == {False}  # every record was written from a worker thread
