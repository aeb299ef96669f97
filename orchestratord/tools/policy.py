"""The outbound tool policy (HOME-104, FR-TL-002, OC-POLICY-4030..4032).

Every request of the mediated fetch tool is decided here, and every decision — allowed or
denied — is appended to the audit log. The built-in rules (``tools`` in the config):

- only ``http``/``https``; only the configured methods;
- deny list first (a host or any subdomain of it), then the allow list if it has entries
  (empty: every public host — the permissive default); an IP literal is allowed only when it
  is in the allow list verbatim;
- a host that resolves to a loopback, private, link-local or reserved address is refused
  unless it is in the allow list or ``allow_private_networks`` is on — checked on the
  addresses the connection will use, so DNS cannot smuggle a public name onto the LAN;
- then the user's hook (``module:function``), which can deny; a hook that raises denies.

Redirects are not followed blindly: each hop is decided again (``fetch.py``).
"""

from __future__ import annotations

import importlib
import ipaddress
import re
import socket
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

from orchestratord.config import ToolsConfig

Hook = Callable[["FetchRequest"], str | None]
REDACTED = "[REDACTED]"


@dataclass(frozen=True)
class FetchRequest:
    url: str
    method: str
    headers: dict[str, str]
    body: str | None


class Denied(Exception):
    """The policy refused; the message is the reason (it goes to the client and the audit)."""


def load_hook(dotted: str) -> Hook:
    """``package.module:function`` or ``package.module.function``."""
    module_name, _, attribute = dotted.partition(":") if ":" in dotted else dotted.rpartition(".")
    try:
        hook: Hook = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"tools.hook {dotted!r} cannot be loaded: {exc}") from exc
    if not callable(hook):
        raise ValueError(f"tools.hook {dotted!r} is not callable")
    return hook


def _matches(host: str, rule: str) -> bool:
    rule = rule.lower().strip(".")
    return host == rule or host.endswith("." + rule)


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _resolve(host: str, port: int) -> list[str]:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise Denied(f"{host} does not resolve ({exc.strerror or exc})") from exc
    return sorted({str(info[4][0]) for info in infos})


def _private(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%", maxsplit=1)[0])
    return (
        ip.is_private
        or ip.is_loopback
        or ip.is_link_local
        or ip.is_reserved
        or (ip.is_multicast or ip.is_unspecified)
    )


class Policy:
    def __init__(self, config: ToolsConfig, secrets: list[str]) -> None:
        self.config = config
        self.hook = load_hook(config.hook) if config.hook else None
        patterns = [re.escape(s) for s in secrets if s] + list(config.redact_patterns)
        self._secrets = re.compile("|".join(f"(?:{p})" for p in patterns)) if patterns else None

    def redact(self, text: str) -> str:
        return self._secrets.sub(REDACTED, text) if self._secrets is not None else text

    def check(self, request: FetchRequest) -> list[str]:
        """Decide; returns the addresses the connection may use. Raises Denied."""
        config = self.config
        parts = urlsplit(request.url)
        if parts.scheme not in ("http", "https"):
            raise Denied(f"scheme {parts.scheme or '(none)'!r} is not http or https")
        host = (parts.hostname or "").lower()
        if not host:
            raise Denied("the URL has no host")
        if request.method not in config.methods:
            raise Denied(f"method {request.method} is not allowed ({', '.join(config.methods)})")
        if any(_matches(host, rule) for rule in config.deny_domains):
            raise Denied(f"{host} is on the deny list")
        listed = any(_matches(host, rule) for rule in config.allow_domains)
        if config.allow_domains and not listed:
            raise Denied(f"{host} is not on the allow list")
        if _is_ip(host) and not listed:
            raise Denied(f"IP literal {host} is not on the allow list")
        port = parts.port or (443 if parts.scheme == "https" else 80)
        addresses = _resolve(host, port)
        if not listed and not config.allow_private_networks:
            inside = [a for a in addresses if _private(a)]
            if inside:
                raise Denied(f"{host} resolves to a private or loopback address ({inside[0]})")
        if self.hook is not None:
            try:
                reason = self.hook(request)
            except Exception as exc:  # a user's hook must never let a request through by crashing
                raise Denied(f"the policy hook failed ({type(exc).__name__}); denied") from exc
            if reason is not None:
                raise Denied(f"the policy hook denied it: {reason}")
        return addresses
