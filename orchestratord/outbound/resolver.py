"""DNS for the outbound policy: off the event loop and bounded in time (HOME-107).

``socket.getaddrinfo`` blocks; called on the event loop, one name whose server never
answers freezes every stream for as long as the system resolver waits. Lookups therefore
run on a small pool of their own threads (so a burst of hung lookups cannot starve the
default executor that file and database work uses) and the caller gives up after
``outbound.dns_timeout_ms``: the lookup thread may go on waiting, the event loop does not.
Tests pass a stand-in with the same interface, so no test ever asks a real DNS server.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol

from orchestratord.outbound.addresses import IPAddress


class ResolveFailed(Exception):
    """The name has no address, or the lookup did not answer in time."""


class Resolver(Protocol):
    async def resolve(self, name: str, port: int) -> list[IPAddress]: ...


class SystemResolver:
    def __init__(self, timeout_s: float, threads: int = 4) -> None:
        self.timeout_s = timeout_s
        self._executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="dns")

    async def resolve(self, name: str, port: int) -> list[IPAddress]:
        loop = asyncio.get_running_loop()
        lookup = loop.run_in_executor(
            self._executor, socket.getaddrinfo, name, port, 0, socket.SOCK_STREAM
        )
        try:
            infos = await asyncio.wait_for(lookup, self.timeout_s)
        except TimeoutError as exc:
            raise ResolveFailed(f"{name} did not resolve within {self.timeout_s:g} s") from exc
        except OSError as exc:
            raise ResolveFailed(f"{name} does not resolve ({exc.strerror or exc})") from exc
        addresses = {ipaddress.ip_address(str(info[4][0]).split("%", 1)[0]) for info in infos}
        if not addresses:
            raise ResolveFailed(f"{name} has no address")
        return sorted(addresses, key=lambda a: (a.version, int(a)))

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
