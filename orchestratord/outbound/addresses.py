"""Hosts as the outbound policy sees them: IP literals in every spelling, names normalised,
and which addresses count as the public internet (HOME-107).

A URL's host is an IP address whenever a browser or an HTTP client would treat it as one:
``127.0.0.1``, but also ``2130706433``, ``0x7f000001``, ``0177.0.0.1``, ``127.1`` and
``[::ffff:127.0.0.1]``. Parsing only the dotted-quad form would let those spellings pass a
rule written for IP literals, so the WHATWG URL standard's IPv4 parser is followed: a host
whose last label is a number is an IPv4 address or invalid, never a name.

"Public" is stricter than :attr:`ipaddress.IPv4Address.is_global`: multicast is refused,
and IPv6 addresses that carry an IPv4 address (mapped, compatible, 6to4, NAT64, Teredo) are
judged by the address they carry, so ``[64:ff9b::7f00:1]`` is loopback, not the internet.
"""

from __future__ import annotations

import ipaddress
import re

import idna

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_V4_COMPATIBLE = ipaddress.IPv6Network("::/96")
_NUMBER = re.compile(r"^(?:0[xX][0-9a-fA-F]*|[0-9]+)$")


class InvalidHost(ValueError):
    """The URL's host is neither a valid name nor a valid IP address."""


def _ipv4_number(part: str) -> int:
    if part[:2].lower() == "0x":
        return int(part[2:] or "0", 16)
    if len(part) > 1 and part.startswith("0"):
        if not re.fullmatch(r"[0-7]+", part):
            raise InvalidHost(f"{part!r} is not an octal number")
        return int(part, 8)
    return int(part)


def _parse_ipv4(host: str) -> ipaddress.IPv4Address | None:
    """WHATWG IPv4 parsing: None when the host is a name, the address, or InvalidHost."""
    labels = host.split(".")
    if labels[-1] == "" and len(labels) > 1:
        labels = labels[:-1]
    if not labels or not _NUMBER.match(labels[-1]):
        return None  # a name (the last label is not numeric)
    if len(labels) > 4 or not all(_NUMBER.match(label) for label in labels):
        raise InvalidHost(f"{host!r} looks like an IPv4 address but is not one")
    numbers = [_ipv4_number(label) for label in labels]
    if any(n > 255 for n in numbers[:-1]) or numbers[-1] >= 256 ** (5 - len(numbers)):
        raise InvalidHost(f"{host!r} is out of the IPv4 range")
    value = numbers[-1]
    for index, number in enumerate(numbers[:-1]):
        value += number << (8 * (3 - index))
    return ipaddress.IPv4Address(value)


def parse_ip_literal(host: str) -> IPAddress | None:
    """The address a URL host spells, or None when it is a name."""
    host = _uts46(host)
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if ":" in host:
        if "%" in host:
            raise InvalidHost("IPv6 zone identifiers are not accepted")
        try:
            return ipaddress.IPv6Address(host)
        except ValueError as exc:
            raise InvalidHost(f"{host!r} is not an IPv6 address") from exc
    return _parse_ipv4(host)


def normalize_name(host: str) -> str:
    """A DNS name as the lists compare it: IDNA (UTS #46), lower case, no trailing dot."""
    host = _uts46(host)
    if host.endswith("."):
        host = host[:-1]
    if not host or ".." in host or host.startswith("."):
        raise InvalidHost("the host has an empty label")
    try:
        ascii_name = idna.encode(host, uts46=True).decode("ascii")
    except (idna.IDNAError, UnicodeError) as exc:
        raise InvalidHost(f"the host is not a valid name ({exc})") from exc
    return ascii_name.lower()


def normalize_host(host: str) -> str | IPAddress:
    """A URL host as the policy decides on it: an address, or a normalised name."""
    address = parse_ip_literal(host)
    return address if address is not None else normalize_name(host)


def _uts46(host: str) -> str:
    """The UTS #46 mapping, applied first, as a resolver or a browser applies it: 8.8.8.8 in
    fullwidth digits is the IP literal 8.8.8.8, and pastebin.com followed by an ideographic
    full stop (U+3002) is ``pastebin.com.``, for the IP-literal rule and the lists alike."""
    if host.isascii():
        return host
    try:
        return str(idna.uts46_remap(host, std3_rules=False, transitional=False))
    except (idna.IDNAError, UnicodeError) as exc:
        raise InvalidHost(f"the host is not a valid name ({exc})") from exc


def embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address carries, where it carries one."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address.teredo is not None:
        return address.teredo[1]
    if address in _NAT64 or (address in _V4_COMPATIBLE and int(address) > 1):
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def is_public(address: IPAddress) -> bool:
    """Globally routable unicast: the internet, not this machine, the LAN or a VPN."""
    if isinstance(address, ipaddress.IPv6Address):
        carried = embedded_ipv4(address)
        if carried is not None:
            return is_public(carried)
    return address.is_global and not address.is_multicast


def shown(address: IPAddress) -> str:
    """An address as messages show it (IPv4-mapped IPv6 in its dotted form)."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return f"::ffff:{address.ipv4_mapped}"
    return str(address)


def in_networks(address: IPAddress, networks: list[IPNetwork], *, carried: bool = False) -> bool:
    """Whether ``address`` lies in one of ``networks``; an IPv4-mapped address as its IPv4
    form. With ``carried`` (a deny list), an IPv6 address that carries an IPv4 address in
    any form (NAT64, 6to4, Teredo, compatible) is in a network that either form is in."""
    forms: list[IPAddress] = [address]
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            forms = [address.ipv4_mapped]
        elif carried and (inner := embedded_ipv4(address)) is not None:
            forms.append(inner)
    return any(a.version == net.version and a in net for a in forms for net in networks)


def name_matches(name: str, rule: str) -> bool:
    """``rule`` (normalised) names ``name`` itself or a domain above it."""
    return name == rule or name.endswith("." + rule)
