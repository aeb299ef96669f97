"""Fetching a catalog model into the model cache (HOME-501, FR-CP-001).

``https://`` and ``http://`` are downloaded into ``<cache_dir>/models/catalog/<id>.gguf``
through a ``.part`` file: a pull that fails part-way keeps it, and the next pull resumes
with a ``Range`` request (a server that ignores the range starts over). The sha256 is
computed as the bytes arrive; only a file whose digest equals the entry's is renamed into
place (atomically), so a mismatch or a truncated download never leaves a usable file.
``hf://org/repo/path/file.gguf`` is Hugging Face's download URL for that file;
``file://`` must name a file inside ``catalog.model_dirs`` and is checked, not copied.
Progress (state, bytes, total) is on the entry for ``GET`` to read.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import time
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import aiohttp

from orchestratord.catalog.catalog import Catalog, CatalogError, CatalogRecord, now_ms

log = logging.getLogger("orchestratord.catalog")

_CHUNK = 1 << 20
_SAVE_EVERY_S = 1.0
_TIMEOUT = aiohttp.ClientTimeout(total=None, connect=15, sock_read=60)


class PullFailed(Exception):
    pass


def download_url(source_url: str) -> str:
    """The HTTP(S) URL a source URL is fetched from (hf:// mapped to Hugging Face's)."""
    parts = urlsplit(source_url)
    if parts.scheme == "hf":
        org, repo, *path = [p for p in (parts.netloc + parts.path).split("/") if p]
        return f"https://huggingface.co/{org}/{repo}/resolve/main/{'/'.join(path)}"
    return source_url


class Puller:
    def __init__(self, catalog: Catalog, cache_dir: Path, max_bytes: int) -> None:
        self.catalog = catalog
        self.target_dir = cache_dir / "models" / "catalog"
        self.max_bytes = max_bytes
        self.running: dict[str, asyncio.Task[None]] = {}

    async def stop(self) -> None:
        """Cancel pulls in flight (a restart resumes them from their .part file)."""
        for task in self.running.values():
            task.cancel()
        await asyncio.gather(*self.running.values(), return_exceptions=True)

    async def start(self, record: CatalogRecord) -> None:
        if record.entry.source_url is None:
            raise CatalogError("invalid", f"model {record.id} has no source_url to pull from")
        running = self.running.get(record.id)
        if running is not None and not running.done():
            return  # a pull is under way; this request joins it
        record.pull = {"state": "queued", "bytes": 0, "total_bytes": None, "started_ms": now_ms()}
        await self.catalog.save(record)
        task = asyncio.get_running_loop().create_task(self._run(record), name=f"pull-{record.id}")
        self.running[record.id] = task

    async def _run(self, record: CatalogRecord) -> None:
        source = record.entry.source_url
        assert source is not None
        try:
            if urlsplit(source).scheme == "file":
                path = await self._check_local(record, source)
            else:
                path = await self._download(record, download_url(source))
        except (PullFailed, CatalogError) as exc:
            record.pull = {**(record.pull or {}), "state": "failed", "error": str(exc)}
            log.warning("pull of model %s failed: %s", record.id, exc)
        else:
            record.local_path = str(path)
            record.pull = {**(record.pull or {}), "state": "done", "finished_ms": now_ms()}
            log.info("pulled model %s into %s", record.id, path)
        await self.catalog.save(record)

    async def _check_local(self, record: CatalogRecord, source: str) -> Path:
        path = self.catalog.allowed_path(Path(unquote(urlsplit(source).path)))
        if not path.is_file():
            raise PullFailed(f"{path} does not exist")
        digest = await asyncio.to_thread(_sha256_of, path)
        self._check_digest(record, digest)
        record.pull = {**(record.pull or {}), "bytes": path.stat().st_size}
        return path

    def _check_digest(self, record: CatalogRecord, digest: str) -> None:
        if digest != record.entry.digest:
            raise PullFailed(f"digest mismatch: got {digest}, the entry says {record.entry.digest}")

    async def _download(self, record: CatalogRecord, url: str) -> Path:
        self.target_dir.mkdir(parents=True, exist_ok=True)
        final = self.target_dir / f"{record.id}.gguf"
        part = final.with_suffix(".gguf.part")
        hasher = hashlib.sha256()
        have = part.stat().st_size if part.exists() else 0
        if have:
            await asyncio.to_thread(_feed, hasher, part)
        headers = {"Range": f"bytes={have}-"} if have else {}
        pull: dict[str, Any] = record.pull or {}
        try:
            async with (
                aiohttp.ClientSession(timeout=_TIMEOUT) as session,
                session.get(url, headers=headers) as response,
            ):
                if response.status == 200 and have:  # the range was ignored: start over
                    hasher, have = hashlib.sha256(), 0
                elif response.status not in (200, 206):
                    raise PullFailed(f"{url} answered HTTP {response.status}")
                total = (response.content_length or 0) + have if response.content_length else None
                if total is not None and total > self.max_bytes:
                    raise PullFailed(
                        f"{total} bytes exceed catalog.max_model_bytes ({self.max_bytes})"
                    )
                pull.update(state="downloading", bytes=have, total_bytes=total, resumed_from=have)
                record.pull = pull
                await self._receive(record, response, part, hasher, have)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise PullFailed(f"download interrupted: {exc!r} (the next pull resumes)") from exc
        digest = "sha256:" + hasher.hexdigest()
        if digest != record.entry.digest:
            part.unlink(missing_ok=True)
            self._check_digest(record, digest)
        os.replace(part, final)
        return final

    async def _receive(
        self,
        record: CatalogRecord,
        response: aiohttp.ClientResponse,
        part: Path,
        hasher: Any,
        have: int,
    ) -> None:
        mode = "ab" if have else "wb"
        saved_at = time.monotonic()
        with part.open(mode) as fh:
            async for chunk in response.content.iter_chunked(_CHUNK):
                have += len(chunk)
                if have > self.max_bytes:
                    raise PullFailed(f"more than catalog.max_model_bytes ({self.max_bytes})")
                fh.write(chunk)
                hasher.update(chunk)
                assert record.pull is not None
                record.pull["bytes"] = have
                if time.monotonic() - saved_at > _SAVE_EVERY_S:
                    saved_at = time.monotonic()
                    await self.catalog.save(record)
            fh.flush()
            os.fsync(fh.fileno())
        expected = record.pull.get("total_bytes") if record.pull else None
        if expected is not None and have != expected:
            raise PullFailed(
                f"download ended at {have} of {expected} bytes (the next pull resumes)"
            )


def _feed(hasher: Any, path: Path) -> None:
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(_CHUNK), b""):
            hasher.update(block)


def _sha256_of(path: Path) -> str:
    hasher = hashlib.sha256()
    _feed(hasher, path)
    return "sha256:" + hasher.hexdigest()
