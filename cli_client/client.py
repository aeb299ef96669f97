"""A minimal OrchQueue v1 client, written from the consumer's side of the contract.

It knows only what a client may rely on: the admission response, the error envelope, the
429 backoff headers, the SSE framing and capabilities. The Pact consumer tests exercise it
against a Pact mock server; the provider then has to honour exactly what it used.

Proxies: to a loopback address in any spelling (``localhost``, ``127.0.0.0/8``, ``::1``:
:func:`is_loopback_url`) the client talks
directly and ignores ``HTTP_PROXY``/``ALL_PROXY`` — the bearer token never takes a detour
through a proxy to reach this machine; any other address honours the proxy variables.
"""

from __future__ import annotations

import ipaddress
import json
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx

DEFAULT_BACKOFF_MS = 1000


_LOOPBACK_NAMES = frozenset({"localhost", "ip6-localhost", "ip6-loopback"})


def is_loopback_url(url: str) -> bool:
    """Whether the URL's host is this machine in any spelling: ``localhost`` and names under
    it (RFC 6761), with or without the final dot; ``127.0.0.0/8`` also in the shortened and
    numeric forms the resolver accepts (``127.1``, ``2130706433``, ``0x7f000001``); ``::1``
    and IPv6 forms that carry a loopback IPv4 address (``::ffff:127.0.0.1``)."""
    host = httpx.URL(url).host.lower().rstrip(".")
    if host in _LOOPBACK_NAMES or host.endswith(".localhost"):
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        try:  # the classic inet_aton spellings, which connect() accepts too
            return socket.inet_aton(host)[0] == 127
        except OSError:
            return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback


@dataclass(frozen=True)
class Admission:
    task_id: str
    queue_position: int
    predicted_start_ms: int | None
    backoff_ms: int


def _frames(response: httpx.Response) -> Iterator[tuple[str, dict[str, Any]]]:
    event = "message"
    for line in response.iter_lines():
        if line.startswith("event:"):
            event = line[6:].strip()
        elif line.startswith("data:"):
            payload = json.loads(line[5:])
            yield event, payload
            if event in ("end", "error"):
                return


class TaskStream:
    """An admitted task's open stream: iterate for (event, payload) frames; closing it
    before the terminal frame cancels the task on the server."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response

    def __iter__(self) -> Iterator[tuple[str, dict[str, Any]]]:
        return _frames(self.response)

    def close(self) -> None:
        self.response.close()

    def __enter__(self) -> TaskStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class OrchError(Exception):
    def __init__(self, status: int, envelope: dict[str, Any], correlation_id: str | None) -> None:
        super().__init__(f"{status} {envelope.get('code')}: {envelope.get('message')}")
        self.status = status
        self.code = str(envelope.get("code"))
        self.envelope = envelope
        self.correlation_id = correlation_id


class Unavailable(OrchError):
    """503: no Ready pool right now (or a shutdown, a drain); retriable if it says so."""

    def __init__(self, status: int, envelope: dict[str, Any], headers: httpx.Headers) -> None:
        super().__init__(status, envelope, headers.get("X-Correlation-Id"))
        self.retriable = bool(envelope.get("retriable"))
        self.retry_after_ms = int(envelope.get("retry_after_ms") or DEFAULT_BACKOFF_MS)
        self.message = str(envelope.get("message") or "unavailable")


class Backoff(OrchError):
    """429: the queue is full; wait ``backoff_ms`` before retrying."""

    def __init__(self, status: int, envelope: dict[str, Any], headers: httpx.Headers) -> None:
        super().__init__(status, envelope, headers.get("X-Correlation-Id"))
        # A 429 from something other than orchestratord (a proxy) may carry no hint at all.
        hint = headers.get("X-Backoff-Ms") or envelope.get("retry_after_ms")
        if hint is None and headers.get("Retry-After", "").isdigit():
            hint = int(headers["Retry-After"]) * 1000
        self.backoff_ms = int(hint) if hint is not None else DEFAULT_BACKOFF_MS
        self.retry_after_s = max(1, -(-self.backoff_ms // 1000))
        self.policy_label = str(envelope.get("policy_label") or "unknown")


class OrchClient:
    def __init__(
        self, base_url: str, token: str, *, timeout: float = 30.0, correlation_id: str | None = None
    ) -> None:
        headers = {"Authorization": f"Bearer {token}"}
        if correlation_id is not None:  # ties every request of this client to one trace
            headers["X-Correlation-Id"] = correlation_id
        self._http = httpx.Client(
            base_url=base_url,
            headers=headers,
            timeout=timeout,
            trust_env=not is_loopback_url(base_url),
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> OrchClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _raise_for(self, response: httpx.Response) -> None:
        if response.status_code < 400:
            return
        try:
            envelope = response.json()
        except ValueError:
            envelope = {"code": "HTTP", "message": response.text[:200] or response.reason_phrase}
        if response.status_code == 429:
            raise Backoff(response.status_code, envelope, response.headers)
        if response.status_code == 503:
            raise Unavailable(response.status_code, envelope, response.headers)
        raise OrchError(response.status_code, envelope, response.headers.get("X-Correlation-Id"))

    def _get(self, path: str, **params: Any) -> Any:
        query = {k: v for k, v in params.items() if v is not None}
        response = self._http.get(path, params=query)
        self._raise_for(response)
        return response.json()

    def _post(self, path: str, body: Any = None) -> Any:
        response = self._http.post(path, json=body) if body is not None else self._http.post(path)
        self._raise_for(response)
        return response.json() if response.content else None

    def enqueue(self, task: dict[str, Any], correlation_id: str | None = None) -> Admission:
        headers = {"X-Correlation-Id": correlation_id} if correlation_id else {}
        response = self._http.post("/v1/tasks", json=task, headers=headers)
        self._raise_for(response)
        body = response.json()
        return Admission(
            body["task_id"], body["queue_position"], body["predicted_start_ms"], body["backoff_ms"]
        )

    def stream(self, task_id: str) -> Iterator[tuple[str, dict[str, Any]]]:
        """(event, payload) frames until the terminal one."""
        with self._http.stream("GET", f"/v1/tasks/{task_id}/stream") as response:
            if response.status_code >= 400:
                response.read()
                self._raise_for(response)
            yield from _frames(response)

    def submit_stream(self, task: dict[str, Any]) -> TaskStream:
        """Submit and stream in one request (PERF-101). A refusal raises here, like
        :meth:`enqueue`; an admitted task's frames follow ``accepted`` (the 202's body)."""
        request = self._http.build_request(
            "POST", "/v1/tasks", json=task, headers={"Accept": "text/event-stream"}
        )
        response = self._http.send(request, stream=True)
        if response.status_code >= 400:
            try:
                response.read()
            finally:
                response.close()
            self._raise_for(response)
        return TaskStream(response)

    def cancel(self, task_id: str) -> None:
        self._raise_for(self._http.post(f"/v1/tasks/{task_id}/cancel"))

    def capabilities(self) -> dict[str, Any]:
        response = self._http.get("/v1/capabilities")
        self._raise_for(response)
        return dict(response.json())

    def replica_sets(self) -> list[dict[str, Any]]:
        """Each pool's replicas: where they run, their slots and load (``GET /v1/replicasets``)."""
        response = self._http.get("/v1/replicasets")
        self._raise_for(response)
        return list(response.json())

    # --- the control plane ------------------------------------------------------------------

    def pool_health(self, pool_id: str) -> dict[str, Any]:
        return dict(self._get(f"/v1/pools/{pool_id}/health"))

    def drain(self, pool_id: str, deadline_ms: int) -> dict[str, Any]:
        return dict(self._post(f"/v1/pools/{pool_id}/drain", {"deadline_ms": deadline_ms}))

    def unload(self, pool_id: str) -> dict[str, Any]:
        return dict(self._post(f"/v1/pools/{pool_id}/unload"))

    def resume(self, pool_id: str) -> dict[str, Any]:
        return dict(self._post(f"/v1/pools/{pool_id}/resume"))

    def reload(self, pool_id: str, model_ref: str) -> dict[str, Any]:
        return dict(self._post(f"/v1/pools/{pool_id}/reload", {"new_model_ref": model_ref}))

    def add_model(self, entry: dict[str, Any]) -> dict[str, Any]:
        return dict(self._post("/v1/catalog/models", entry))

    def model(self, model_id: str) -> dict[str, Any]:
        return dict(self._get(f"/v1/catalog/models/{model_id}"))

    def models(self, tag: str | None = None, state: str | None = None) -> list[dict[str, Any]]:
        return list(self._get("/v1/catalog/models", tag=tag, state=state))

    def pull_model(self, model_id: str) -> dict[str, Any]:
        return dict(self._post(f"/v1/catalog/models/{model_id}/pull"))

    def verify_model(self, model_id: str) -> dict[str, Any]:
        return dict(self._post(f"/v1/catalog/models/{model_id}/verify"))

    def set_model_state(self, model_id: str, state: str, deadline_ms: int = 0) -> dict[str, Any]:
        body = {"state": state, "deadline_ms": deadline_ms}
        return dict(self._post(f"/v1/catalog/models/{model_id}/state", body))

    def put_artifact(self, artifact: dict[str, Any]) -> dict[str, Any]:
        return dict(self._post("/v1/artifacts", artifact))

    def artifact(self, artifact_id: str) -> dict[str, Any]:
        return dict(self._get(f"/v1/artifacts/{artifact_id}"))

    def artifacts(self, tag: str | None = None) -> list[dict[str, Any]]:
        return list(self._get("/v1/artifacts", tag=tag))

    def session(self, session_id: str) -> dict[str, Any]:
        return dict(self._get(f"/v1/sessions/{session_id}"))

    def end_session(self, session_id: str) -> None:
        self._raise_for(self._http.delete(f"/v1/sessions/{session_id}"))
