"""A stand-in for DNS in the outbound tests: names map to the addresses a test chooses.

No test of the outbound policy asks a real DNS server, and every address a stand-in hands
out for a name the test connects to is a loopback one, so even a wrong policy sends nothing
off this machine. Names it does not know fail to resolve, as NXDOMAIN would.
"""

from __future__ import annotations

import asyncio
import ipaddress

from orchestratord.outbound.addresses import IPAddress
from orchestratord.outbound.resolver import ResolveFailed


class StandInResolver:
    def __init__(self, names: dict[str, list[str]] | None = None, hang: bool = False) -> None:
        self.names = {"localhost": ["127.0.0.1"], **(names or {})}
        self.hang = hang
        self.asked: list[str] = []

    async def resolve(self, name: str, port: int) -> list[IPAddress]:
        self.asked.append(name)
        if self.hang:
            await asyncio.Event().wait()
        if name not in self.names:
            raise ResolveFailed(f"{name} does not resolve (stand-in: unknown name)")
        return [ipaddress.ip_address(a) for a in self.names[name]]
