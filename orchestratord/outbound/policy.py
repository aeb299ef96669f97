"""The outbound policy (HOME-104, HOME-107, OC-POLICY-4030..4032): one decision for every
request orchestratord sends on someone's behalf — the fetch tool and model pulls alike.

In order, for the URL of the request and again for every redirect hop:

1. only ``http``/``https``, with a host that is a valid name or IP address in any spelling
   (``addresses.py``); a malformed URL is :class:`InvalidTarget`;
2. ``deny_domains`` (the name or a domain above it) — deny wins;
3. a non-empty ``allow_domains`` admits only its names and their subdomains;
4. an IP literal must lie in ``allow_networks``;
5. the name is resolved (off the event loop, bounded: ``resolver.py``) and *every* address
   must be public — globally routable unicast — unless it lies in ``allow_networks``; none
   may lie in ``deny_networks``. A listed name never lifts this: ``allow_domains: [duckdns.org]``
   does not make ``x.duckdns.org → 192.168.1.1`` reachable;
6. the user's hook, which can deny, called in a worker thread; a hook that raises or does
   not answer within ``hook_timeout_ms`` denies.

The addresses returned are the only ones the connection may use (``client.py`` pins them),
so a second DNS answer cannot lead around the decision.
"""

from __future__ import annotations

import asyncio
import importlib
from collections.abc import Callable
from dataclasses import dataclass
from ipaddress import IPv6Address, ip_network
from urllib.parse import urlsplit, urlunsplit

from orchestratord.config import OutboundConfig
from orchestratord.outbound.addresses import (
    InvalidHost,
    IPAddress,
    in_networks,
    is_public,
    name_matches,
    normalize_host,
    shown,
)
from orchestratord.outbound.resolver import ResolveFailed, Resolver


@dataclass(frozen=True)
class FetchRequest:
    """What a hook sees: the request about to be sent (URL with the normalised host)."""

    url: str
    method: str
    headers: dict[str, str]
    body: str | None


Hook = Callable[[FetchRequest], str | None]


class OutboundError(Exception):
    """A request that was not sent, or not completed; the message is safe to show."""


class Denied(OutboundError):
    """The policy refused (403 for the fetch tool)."""


class InvalidTarget(OutboundError):
    """The URL cannot be a request target at all (400 for the fetch tool)."""


@dataclass(frozen=True)
class Target:
    """A decided request: where to send it and the only addresses it may connect to."""

    url: str
    host: str
    port: int
    scheme: str
    addresses: list[IPAddress]

    @property
    def origin(self) -> tuple[str, str, int]:
        return (self.scheme, self.host, self.port)


def load_hook(dotted: str) -> Hook:
    """``package.module:function`` or ``package.module.function``."""
    module_name, _, attribute = dotted.partition(":") if ":" in dotted else dotted.rpartition(".")
    try:
        hook: Hook = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"outbound.hook {dotted!r} cannot be loaded: {exc}") from exc
    if not callable(hook):
        raise ValueError(f"outbound.hook {dotted!r} is not callable")
    return hook


def _split(url: str) -> tuple[str, str, str, int, str]:
    """scheme, userinfo, raw host, port, path+query (InvalidTarget when malformed)."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise InvalidTarget(f"the URL is malformed ({exc})") from exc
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise Denied(f"scheme {parts.scheme or '(none)'!r} is not http or https")
    netloc = parts.netloc
    userinfo, _, hostport = netloc.rpartition("@")
    host = parts.hostname or ""
    if not host:
        raise InvalidTarget("the URL has no host")
    if "%" in hostport.split("]")[0] or any(c.isspace() for c in hostport):
        raise InvalidTarget("percent-encoded or blank characters in the host are not accepted")
    rest = urlunsplit(("", "", parts.path or "/", parts.query, ""))
    return scheme, userinfo, host, port or (443 if scheme == "https" else 80), rest


class Policy:
    def __init__(self, config: OutboundConfig, resolver: Resolver) -> None:
        self.config = config
        self.resolver = resolver
        self.hook = load_hook(config.hook) if config.hook else None
        self._allow_networks = [ip_network(n) for n in config.allow_networks]
        self._deny_networks = [ip_network(n) for n in config.deny_networks]

    async def decide(self, request: FetchRequest) -> Target:
        """Decide on one request; raises Denied or InvalidTarget."""
        config = self.config
        scheme, userinfo, raw_host, port, rest = _split(request.url)
        try:
            host = normalize_host(raw_host)
        except InvalidHost as exc:
            raise InvalidTarget(f"invalid host: {exc}") from exc
        if isinstance(host, str):
            if any(name_matches(host, rule) for rule in config.deny_domains):
                raise Denied(f"{host} is on the deny list")
            if config.allow_domains and not any(
                name_matches(host, rule) for rule in config.allow_domains
            ):
                raise Denied(f"{host} is not on the allow list")
            try:
                addresses = await self.resolver.resolve(host, port)
            except ResolveFailed as exc:
                raise Denied(str(exc)) from exc
            url_host = name = host
        else:
            name = shown(host)
            if in_networks(host, self._deny_networks, carried=True):
                raise Denied(f"{name} is in outbound.deny_networks")
            if not in_networks(host, self._allow_networks):
                raise Denied(f"IP literal {name} is not in outbound.allow_networks")
            addresses = [host]
            url_host = f"[{host}]" if isinstance(host, IPv6Address) else str(host)
        for address in addresses:
            if in_networks(address, self._deny_networks, carried=True):
                raise Denied(f"{name} resolves to {shown(address)}, in outbound.deny_networks")
            if not is_public(address) and not in_networks(address, self._allow_networks):
                raise Denied(
                    f"{name} resolves to {shown(address)}, which is not a public address "
                    "(loopback, private, link-local, CGNAT or reserved); list it in "
                    "outbound.allow_networks to allow it"
                )
        default_port = 443 if scheme == "https" else 80
        netloc = (userinfo + "@" if userinfo else "") + url_host
        netloc += f":{port}" if port != default_port else ""
        target = Target(f"{scheme}://{netloc}{rest}", str(host), port, scheme, addresses)
        if self.hook is not None:
            checked = FetchRequest(target.url, request.method, request.headers, request.body)
            limit_s = config.hook_timeout_ms / 1000
            try:
                # In a worker thread: a hook that looks something up cannot stall streams.
                # A thread cannot be stopped; one past the limit is abandoned, and denies.
                reason = await asyncio.wait_for(asyncio.to_thread(self.hook, checked), limit_s)
            except TimeoutError as exc:
                raise Denied(f"the policy hook did not answer in {limit_s:g} s; denied") from exc
            except Exception as exc:  # a user's hook must never let a request through by crashing
                raise Denied(f"the policy hook failed ({type(exc).__name__}); denied") from exc
            if reason is not None:
                raise Denied(f"the policy hook denied it: {reason}")
        return target
