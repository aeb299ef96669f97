"""Fetching a catalog model into the model cache (HOME-501, FR-CP-001, HOME-107, HOME-108).

``https://`` and ``http://`` are downloaded through the outbound client — the same policy,
audit and redirect rules as the fetch tool, so a catalog entry cannot point the server at
a service on the LAN — into ``<cache_dir>/models/catalog/<id>.gguf`` via a ``.part`` file:
a pull that fails part-way keeps it and the next pull resumes with a ``Range`` request (a
server that ignores the range starts over). A ``.part`` already complete (a kill between
the last byte and the rename) is verified and renamed, not requested again. The sha256 is
computed as the bytes arrive; only a file whose digest equals the entry's is renamed into
place, so a mismatch or a truncated download never leaves a usable file.
``hf://org/repo/path/file.gguf`` is Hugging Face's download URL for that file;
``file://`` must name a regular file inside ``catalog.model_dirs`` and is checked, not copied.

Every pull ends: done, or failed with a reason that says what went wrong on this side
(refused by the policy, stalled, disk full, the digest did not match) without echoing what
the remote served. Writing, hashing and fsync run in a thread; one pull per model runs at a
time; a source that sends less than ``catalog.pull_stall_bytes`` in
``catalog.pull_stall_timeout_ms`` is given up on.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import time
from pathlib import Path
from typing import IO, Any
from urllib.parse import unquote, urlsplit

import aiohttp

from orchestratord.catalog.catalog import Catalog, CatalogError, CatalogRecord, now_ms
from orchestratord.config import CatalogConfig
from orchestratord.outbound.client import OutboundClient, UpstreamFailed
from orchestratord.outbound.policy import Denied, InvalidTarget

log = logging.getLogger("orchestratord.catalog")

_CHUNK = 1 << 20
_SAVE_EVERY_S = 1.0
_RESUME_ATTEMPTS = 2


class PullFailed(Exception):
    """The pull ended without a usable file; the message is safe to show the caller."""


class _TooLarge(PullFailed):
    """Past catalog.max_model_bytes: nothing of it is kept (there is nothing to resume)."""


class _Restart(Exception):
    """The .part file cannot be resumed from: start over from byte 0."""


def download_url(source_url: str) -> str:
    """The HTTP(S) URL a source URL is fetched from (hf:// mapped to Hugging Face's)."""
    parts = urlsplit(source_url)
    if parts.scheme == "hf":
        org, repo, *path = [p for p in (parts.netloc + parts.path).split("/") if p]
        return f"https://huggingface.co/{org}/{repo}/resolve/main/{'/'.join(path)}"
    return source_url


class Puller:
    def __init__(
        self, catalog: Catalog, cache_dir: Path, config: CatalogConfig, client: OutboundClient
    ) -> None:
        self.catalog = catalog
        self.target_dir = cache_dir / "models" / "catalog"
        self.config = config
        self.client = client
        self.running: dict[str, asyncio.Task[None]] = {}
        self._by_operator: set[str] = set()  # pulls cancelled through the API, not by a stop

    async def stop(self) -> None:
        """Cancel pulls in flight; each records why it ended (a restart resumes it)."""
        for task in self.running.values():
            task.cancel()
        await asyncio.gather(*self.running.values(), return_exceptions=True)

    async def cancel(self, record: CatalogRecord) -> bool:
        """Stop the model's pull if one runs (its ``.part`` stays: a later pull resumes);
        returns whether one ran. Answers once the pull has recorded that it was cancelled."""
        running = self.running.get(record.id)
        if running is None or running.done() or (record.pull or {}).get("state") in (
            "done", "failed"
        ):  # fmt: skip
            return False
        self._by_operator.add(record.id)
        running.cancel()
        await asyncio.wait({running})
        return True

    async def remove(self, record: CatalogRecord) -> list[str]:
        """Cancel the model's pull and delete what pulls left of it in the model cache (the
        pulled file and its ``.part``); a file:// source or a declared file is the
        operator's and is never deleted. Returns the names deleted."""
        await self.cancel(record)
        mine = [self.target_dir / f"{record.id}.gguf", self.target_dir / f"{record.id}.gguf.part"]

        def unlink_all() -> list[str]:
            gone = []
            for path in mine:
                try:
                    path.unlink()
                except FileNotFoundError:
                    continue
                gone.append(path.name)
            return gone

        return await asyncio.to_thread(unlink_all)

    async def start(self, record: CatalogRecord, correlation_id: str | None = None) -> None:
        if record.entry.source_url is None:
            raise CatalogError("invalid", f"model {record.id} has no source_url to pull from")
        while (running := self.running.get(record.id)) is not None and not running.done():
            if (record.pull or {}).get("state") not in ("done", "failed"):
                return  # a pull is under way; this request joins it
            # That pull has ended and is storing its outcome: this one starts after it,
            # never joined to it (a retry would be lost).
            await asyncio.wait({running})
        record.pull = {"state": "queued", "bytes": 0, "total_bytes": None, "started_ms": now_ms()}
        # Registered before the first await, so a concurrent request joins this pull.
        self.running[record.id] = asyncio.get_running_loop().create_task(
            self._run(record, correlation_id), name=f"pull-{record.id}"
        )

    async def _run(self, record: CatalogRecord, correlation_id: str | None) -> None:
        source = record.entry.source_url
        assert source is not None
        try:
            await self.catalog.save(record)
            if urlsplit(source).scheme == "file":
                path = await self._check_local(record, source)
            else:
                path = await self._download(record, download_url(source), correlation_id)
        except (PullFailed, CatalogError) as exc:
            self._failed(record, str(exc))
        except asyncio.CancelledError:
            if record.id in self._by_operator:
                self._by_operator.discard(record.id)
                self._failed(record, "cancelled by request (the next pull resumes)")
                await self._save_outcome(record)
                return
            self._failed(record, "cancelled: orchestratord stopped (the next pull resumes)")
            await self._save_outcome(record)
            raise
        except Exception as exc:
            log.exception("pull of model %s failed unexpectedly", record.id)
            self._failed(record, f"internal error ({type(exc).__name__}); see the server log")
        else:
            record.local_path = str(path)
            record.pull = {**(record.pull or {}), "state": "done", "finished_ms": now_ms()}
            log.info("pulled model %s into %s", record.id, path)
        await self._save_outcome(record)

    def _failed(self, record: CatalogRecord, reason: str) -> None:
        record.pull = {**(record.pull or {}), "state": "failed", "error": reason,
                       "finished_ms": now_ms()}  # fmt: skip
        log.warning("pull of model %s failed: %s", record.id, reason)

    async def _save_outcome(self, record: CatalogRecord) -> None:
        try:
            await self.catalog.save(record)
        except Exception:  # the in-memory record still answers GET with the outcome
            log.exception("pull of model %s: could not store its outcome", record.id)

    async def _check_local(self, record: CatalogRecord, source: str) -> Path:
        path = self.catalog.allowed_path(Path(unquote(urlsplit(source).path)))
        if not await asyncio.to_thread(path.is_file):
            raise PullFailed(f"{path} is not a regular file")
        try:
            digest = await asyncio.to_thread(_sha256_of, path)
            size = await asyncio.to_thread(lambda: path.stat().st_size)
        except OSError as exc:
            raise PullFailed(f"cannot read {path}: {exc.strerror or exc}") from exc
        self._check_digest(record, digest)
        record.pull = {**(record.pull or {}), "bytes": size}
        return path

    def _check_digest(self, record: CatalogRecord, digest: str) -> None:
        if digest != record.entry.digest:
            log.warning("model %s: digest %s, the entry says %s", record.id, digest,
                        record.entry.digest)  # fmt: skip
            raise PullFailed("the file's sha256 does not match the entry's digest")

    async def _download(self, record: CatalogRecord, url: str, correlation_id: str | None) -> Path:
        final = self.target_dir / f"{record.id}.gguf"
        part = final.with_suffix(".gguf.part")
        try:
            await asyncio.to_thread(self.target_dir.mkdir, parents=True, exist_ok=True)
        except OSError as exc:
            raise PullFailed(f"cannot create {self.target_dir}: {exc.strerror or exc}") from exc
        for _ in range(_RESUME_ATTEMPTS):
            hasher = hashlib.sha256()
            have = await asyncio.to_thread(lambda: part.stat().st_size if part.exists() else 0)
            if have:
                await asyncio.to_thread(_feed, hasher, part)
                if "sha256:" + hasher.hexdigest() == record.entry.digest:
                    log.info("model %s: the partial file is complete; not downloading", record.id)
                    await asyncio.to_thread(os.replace, part, final)
                    return final
            try:
                # Opened before the request, so reading starts the moment headers arrive.
                handle = await asyncio.to_thread(part.open, "ab" if have else "wb")
            except OSError as exc:
                raise PullFailed(f"cannot write {part.name}: {exc.strerror or exc}") from exc
            try:
                hasher = await self._fetch(
                    record, url, correlation_id, handle=handle, hasher=hasher, have=have
                )
            except _Restart:
                await asyncio.to_thread(part.unlink, missing_ok=True)
                continue
            except _TooLarge:
                await asyncio.to_thread(_close, handle)
                await asyncio.to_thread(part.unlink, missing_ok=True)
                raise
            finally:
                await asyncio.to_thread(_close, handle)
            digest = "sha256:" + hasher.hexdigest()
            if digest != record.entry.digest:
                await asyncio.to_thread(part.unlink, missing_ok=True)
                self._check_digest(record, digest)
            await asyncio.to_thread(os.replace, part, final)
            return final
        raise PullFailed("the source did not serve the file from the start")

    async def _fetch(
        self,
        record: CatalogRecord,
        url: str,
        correlation_id: str | None,
        *,
        handle: IO[bytes],
        hasher: Any,
        have: int,
    ) -> Any:
        """Download into ``part`` from byte ``have``; returns the hasher of the whole file."""
        stall_s = self.config.pull_stall_timeout_ms / 1000
        timeout = aiohttp.ClientTimeout(total=None, connect=15, sock_read=stall_s)
        headers = {"Range": f"bytes={have}-"} if have else {}
        pull: dict[str, Any] = record.pull or {}
        try:
            # The stall window runs from the request: a source that trickles its status line
            # and headers is given up on like one that trickles its body (HARD-203).
            async with (
                asyncio.timeout(stall_s) as until_headers,
                self.client.open(
                    url, purpose="pull", correlation_id=correlation_id, headers=headers,
                    client_timeout=timeout,
                ) as opened,
            ):  # fmt: skip
                until_headers.reschedule(None)
                response = opened.response
                if response.status == 416 and have:
                    raise _Restart  # the .part is as long as the file but does not match
                if response.status == 200 and have:  # the range was ignored: start over
                    hasher, have = hashlib.sha256(), 0
                    await asyncio.to_thread(_truncate, handle)
                elif response.status not in (200, 206):
                    log.warning("pull of %s: the source answered HTTP %d", record.id,
                                response.status)  # fmt: skip
                    raise PullFailed("the source did not serve the file (an HTTP error status)")
                length = response.content_length
                total = length + have if length is not None else None
                if total is not None and total > self.config.max_model_bytes:
                    raise _TooLarge(
                        f"the file is larger than catalog.max_model_bytes "
                        f"({self.config.max_model_bytes})"
                    )
                pull.update(state="downloading", bytes=have, total_bytes=total, resumed_from=have)
                record.pull = pull
                await self._receive(record, response, handle, hasher, have)
                return hasher
        except Denied as exc:
            raise PullFailed(f"refused by the outbound policy: {exc}") from exc
        except InvalidTarget as exc:
            raise PullFailed(f"source_url cannot be fetched: {exc}") from exc
        except UpstreamFailed as exc:
            log.warning("pull of %s: %s", record.id, self.client.redactor.text(str(exc)))
            raise PullFailed("could not reach the source (the next pull resumes)") from exc
        except TimeoutError as exc:
            raise PullFailed(
                f"the source stalled: less than {self.config.pull_stall_bytes} bytes in "
                f"{stall_s:g} s (the next pull resumes)"
            ) from exc
        except aiohttp.ClientError as exc:
            log.warning("pull of %s: %r", record.id, exc)
            raise PullFailed("the download was interrupted (the next pull resumes)") from exc
        except OSError as exc:  # writing the .part file: disk full, I/O error
            raise PullFailed(f"cannot write {handle.name}: {exc.strerror or exc}") from exc

    async def _receive(
        self,
        record: CatalogRecord,
        response: aiohttp.ClientResponse,
        handle: IO[bytes],
        hasher: Any,
        have: int,
    ) -> None:
        loop = asyncio.get_running_loop()
        stall_s = self.config.pull_stall_timeout_ms / 1000
        saved_at, window_start = time.monotonic(), have
        pending = bytearray()
        try:
            async with asyncio.timeout(stall_s) as window:
                async for chunk in response.content.iter_chunked(_CHUNK):
                    have += len(chunk)
                    if have > self.config.max_model_bytes:
                        raise _TooLarge(
                            "the file is larger than catalog.max_model_bytes "
                            f"({self.config.max_model_bytes})"
                        )
                    pending += chunk
                    if len(pending) >= _CHUNK:
                        await asyncio.to_thread(_write, handle, hasher, bytes(pending))
                        pending.clear()
                    assert record.pull is not None
                    record.pull["bytes"] = have
                    if have - window_start >= self.config.pull_stall_bytes:
                        window_start = have
                        window.reschedule(loop.time() + stall_s)
                    if time.monotonic() - saved_at > _SAVE_EVERY_S:
                        saved_at = time.monotonic()
                        await self.catalog.save(record)
        finally:
            # What arrived is kept (and fsynced) whatever ended the transfer: the next pull
            # resumes after it.
            await asyncio.to_thread(_write, handle, hasher, bytes(pending))
            await asyncio.to_thread(_sync, handle)
        expected = record.pull.get("total_bytes") if record.pull else None
        if expected is not None and have != expected:
            raise PullFailed(
                f"the download ended at {have} of {expected} bytes (the next pull resumes)"
            )


def _write(handle: IO[bytes], hasher: Any, data: bytes) -> None:
    handle.write(data)
    hasher.update(data)


def _truncate(handle: IO[bytes]) -> None:
    handle.seek(0)
    handle.truncate()


def _sync(handle: IO[bytes]) -> None:
    handle.flush()
    os.fsync(handle.fileno())


def _close(handle: IO[bytes]) -> None:
    try:
        handle.close()
    except OSError:
        log.warning("closing %s failed", handle.name)


def _feed(hasher: Any, path: Path) -> None:
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(_CHUNK), b""):
            hasher.update(block)


def _sha256_of(path: Path) -> str:
    hasher = hashlib.sha256()
    _feed(hasher, path)
    return "sha256:" + hasher.hexdigest()
