"""The outbound policy's decisions, without any connection (HOME-104, HARD-101).

Each case is decided by :meth:`Policy.decide` against a stand-in resolver; nothing here
opens a socket, so addresses off this machine (CGNAT, TEST-NET, a public DNS server's) can be
named safely: a policy that wrongly allowed them would only return, never connect.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import threading
from typing import Any

import pytest

from orchestratord.config import OutboundConfig, ToolsConfig
from orchestratord.outbound.addresses import InvalidHost, is_public, parse_ip_literal
from orchestratord.outbound.policy import Denied, FetchRequest, InvalidTarget, Policy
from orchestratord.outbound.redact import Redactor
from orchestratord.outbound.resolver import ResolveFailed, SystemResolver
from tests.unit.standin_resolver import StandInResolver


def policy(names: dict[str, list[str]] | None = None, **config: Any) -> Policy:
    return Policy(OutboundConfig(**config), StandInResolver(names))


async def decide(p: Policy, url: str) -> Any:
    return await p.decide(FetchRequest(url, "GET", {}, None))


@pytest.mark.parametrize(
    "address",
    [
        "100.101.102.103",  # CGNAT: Tailscale, carrier NAT
        "100.64.0.1",
        "192.0.2.10",  # TEST-NET-1
        "198.18.0.1",  # benchmarking
        "0.0.0.0",
        "224.0.0.251",  # multicast (mDNS)
        "255.255.255.255",
        "169.254.169.254",  # cloud metadata
        "::ffff:127.0.0.1",  # IPv4-mapped loopback
        "::ffff:10.0.0.1",
        "64:ff9b::7f00:1",  # NAT64 of 127.0.0.1
        "2002:7f00:1::1",  # 6to4 of 127.0.0.1
        "::7f00:1",  # IPv4-compatible 127.0.0.1
        "fe80::1",
        "fd00::1",
        "ff02::1",
    ],
)
@pytest.mark.req("HARD-101", "HOME-104")
async def test_a_name_resolving_to_any_non_public_address_is_refused(address: str) -> None:
    p = policy({"printer.tailnet.ts.net": [address]})
    with pytest.raises(Denied, match="not a public address"):
        await decide(p, "http://printer.tailnet.ts.net/")


@pytest.mark.req("HARD-101")
async def test_one_non_public_address_among_public_ones_refuses_the_name() -> None:
    p = policy({"mixed.example": ["93.184.215.14", "10.0.0.5"]})
    with pytest.raises(Denied, match=r"10\.0\.0\.5"):
        await decide(p, "https://mixed.example/")


@pytest.mark.parametrize(
    ("spelling", "address"),
    [
        ("134744072", "8.8.8.8"),
        ("2130706433", "127.0.0.1"),
        ("0x7f000001", "127.0.0.1"),
        ("0177.0.0.1", "127.0.0.1"),
        ("127.1", "127.0.0.1"),
        ("0x7f.1", "127.0.0.1"),
        ("127.0.0.1.", "127.0.0.1"),
        ("[::ffff:127.0.0.1]", "::ffff:127.0.0.1"),
        ("[::ffff:7f00:1]", "::ffff:127.0.0.1"),
        ("\uff18.\uff18.\uff18.\uff18", "8.8.8.8"),  # fullwidth digits: mapped by UTS #46
        ("127\u30020\u30020\u30021", "127.0.0.1"),  # ideographic full stops
        ("\uff11\uff12\uff17.1", "127.0.0.1"),
    ],
)
@pytest.mark.req("HARD-101", "HOME-104")
async def test_ip_literals_in_every_spelling_are_ip_literals(spelling: str, address: str) -> None:
    assert parse_ip_literal(spelling) == ipaddress.ip_address(address)
    p = policy()
    with pytest.raises(Denied, match=r"IP literal .* is not in outbound\.allow_networks"):
        await decide(p, f"http://{spelling}/")
    assert p.resolver.asked == []  # type: ignore[attr-defined]  # never looked up as a name


@pytest.mark.parametrize(
    "host", ["1.2.3.4.5", "256.1.1.1", "0x1g.0.0.1", "09.1.1.1", "1.2.3.0x100"]
)
@pytest.mark.req("HARD-101")
async def test_hosts_that_look_numeric_but_are_not_addresses_are_invalid(host: str) -> None:
    with pytest.raises(InvalidHost):
        parse_ip_literal(host)
    with pytest.raises(InvalidTarget):
        await decide(policy(), f"http://{host}/")


@pytest.mark.parametrize(
    "spelling",
    [
        "pastebin.com.",
        "PASTEBIN.COM",
        "www.pastebin.com.",
        "\uff50\uff41\uff53\uff54\uff45\uff42\uff49\uff4e.com",  # fullwidth
        "pastebin.com\u3002",  # an ideographic full stop as the trailing dot
        "pastebin\u3002com",
        "pastebin\uff0ecom",  # a fullwidth full stop
    ],
)
@pytest.mark.req("HARD-101", "OC-POLICY-4030")
async def test_names_are_normalised_before_the_deny_list(spelling: str) -> None:
    p = policy({"pastebin.com": ["93.184.215.14"], "www.pastebin.com": ["93.184.215.14"]},
               deny_domains=["pastebin.com"])  # fmt: skip
    with pytest.raises(Denied, match="is on the deny list"):
        await decide(p, f"https://{spelling}/raw/x")
    assert p.resolver.asked == []  # type: ignore[attr-defined]


@pytest.mark.req("HARD-101", "OC-POLICY-4030")
async def test_an_allowed_domain_never_lifts_the_public_address_rule() -> None:
    p = policy(
        {"x.duckdns.org": ["192.168.1.1"], "duckdns.org": ["93.184.215.14"]},
        allow_domains=["duckdns.org"],
    )
    assert (await decide(p, "https://duckdns.org/")).addresses == [
        ipaddress.ip_address("93.184.215.14")
    ]
    with pytest.raises(Denied, match="not a public address"):
        await decide(p, "https://x.duckdns.org/")


@pytest.mark.req("HARD-101")
async def test_only_an_exact_network_entry_allows_a_non_public_address() -> None:
    names = {"nas.lan": ["192.168.1.20"], "router.lan": ["192.168.1.1"]}
    p = policy(names, allow_networks=["192.168.1.20"])
    target = await decide(p, "http://nas.lan:8080/share")
    assert target.addresses == [ipaddress.ip_address("192.168.1.20")]
    assert target.url == "http://nas.lan:8080/share"
    with pytest.raises(Denied):
        await decide(p, "http://router.lan/")
    literal = await decide(p, "http://3232235796/")  # 192.168.1.20, spelled as one number
    assert literal.url == "http://192.168.1.20/"  # the request goes to the canonical address
    with pytest.raises(Denied, match="deny_networks"):
        await decide(
            policy(names, allow_networks=["192.168.1.0/24"], deny_networks=["192.168.1.1"]),
            "http://router.lan/",
        )


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("http://127.0.0.1:99999/", "malformed"),
        ("http://" + "a" * 64 + ".example.org/", "invalid host"),
        ("http:///nohost", "no host"),
        ("http://exa%6dple.org/", "percent-encoded"),
        ("http://[fe80::1%25eth0]/", "percent-encoded"),
    ],
)
@pytest.mark.req("HARD-106")
async def test_malformed_targets_are_invalid_not_crashes(url: str, problem: str) -> None:
    with pytest.raises(InvalidTarget, match=problem):
        await decide(policy(), url)


@pytest.mark.req("HARD-101")
def test_public_means_globally_routable_unicast() -> None:
    assert is_public(ipaddress.ip_address("93.184.215.14"))
    assert is_public(ipaddress.ip_address("2606:4700::1111"))
    assert not is_public(ipaddress.ip_address("100.64.0.1"))
    assert is_public(ipaddress.ip_address("::ffff:8.8.8.8"))  # mapped: judged as 8.8.8.8
    assert not is_public(ipaddress.ip_address("::ffff:10.0.0.1"))


@pytest.mark.req("HARD-102")
async def test_dns_runs_off_the_event_loop_and_gives_up_in_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A lookup that never answers must not freeze the loop: other work keeps running while
    the system resolver hangs, and the policy gives up after dns_timeout_ms."""
    released = threading.Event()

    def hung_getaddrinfo(*args: Any, **kwargs: Any) -> Any:
        released.wait(30)  # the stuck resolver thread; released at the end of the test
        raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure")

    monkeypatch.setattr(socket, "getaddrinfo", hung_getaddrinfo)
    resolver = SystemResolver(timeout_s=0.3)
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0.005)

    running = asyncio.create_task(ticker())
    try:
        with pytest.raises(ResolveFailed, match="did not resolve within"):
            await resolver.resolve("never-answers.example", 443)
        p = Policy(OutboundConfig(dns_timeout_ms=300), resolver)
        with pytest.raises(Denied, match="did not resolve within"):
            await decide(p, "https://never-answers.example/")
    finally:
        running.cancel()
        released.set()
        resolver.close()
    assert ticks >= 10  # the loop went on serving while both lookups hung


@pytest.mark.req("HARD-105", "OC-POLICY-4031")
def test_urls_lose_userinfo_and_named_query_values_when_shown() -> None:
    redactor = Redactor(["the-api-token"], [r"sk-\w+"], ["token", "sig"])
    shown = redactor.url("https://bob:hunter2@example.org/a?sig=abc&page=2&TOKEN=the-api-token#x")
    assert shown == "https://[REDACTED]@example.org/a?sig=[REDACTED]&page=2&TOKEN=[REDACTED]#x"
    assert redactor.url("http://[broken") == "http://[broken"
    assert redactor.credentials_in("https://u:p@h/") == "user information (user:password@)"
    assert redactor.credentials_in("https://h/f?Sig=1") == "the query parameter 'sig'"
    assert redactor.credentials_in("https://h/f?page=1") is None


@pytest.mark.req("HARD-101")
def test_the_old_tools_keys_say_where_they_went() -> None:
    with pytest.raises(ValueError, match=r"outbound\.allow_networks"):
        ToolsConfig(allow_private_networks=True)  # type: ignore[call-arg]
    with pytest.raises(ValueError, match=r"moved to outbound\.deny_domains"):
        ToolsConfig(deny_domains=["x.org"])  # type: ignore[call-arg]
    with pytest.raises(ValueError, match="allow_networks"):
        OutboundConfig(allow_domains=["10.0.0.1"])


@pytest.mark.req("HOME-104")
async def test_a_hook_that_raises_denies() -> None:
    p = Policy(
        OutboundConfig(hook="tests.unit.tool_hooks.crash"),
        StandInResolver({"example.org": ["93.184.215.14"]}),
    )
    with pytest.raises(Denied, match="hook failed"):
        await decide(p, "https://example.org/")


@pytest.mark.parametrize(
    "spelling",
    ["[64:ff9b::808:808]", "[2002:808:808::1]", "[::808:808]", "[::ffff:8.8.8.8]"],
)
@pytest.mark.req("HARD-101")
async def test_a_denied_network_is_denied_in_the_ipv6_forms_that_carry_it(spelling: str) -> None:
    """deny_networks: [8.8.8.0/24], with the IPv6 literals allowed: NAT64, 6to4, compatible
    and mapped forms of 8.8.8.8 are still 8.8.8.8 to the deny list."""
    p = policy(allow_networks=["::/0"], deny_networks=["8.8.8.0/24"])
    with pytest.raises(Denied, match="deny_networks"):
        await decide(p, f"http://{spelling}/")
    names = policy({"dns.example": [spelling.strip("[]")]}, deny_networks=["8.8.8.0/24"])
    with pytest.raises(Denied, match="deny_networks"):
        await decide(names, "http://dns.example/")
