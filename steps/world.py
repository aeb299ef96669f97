"""What the BDD steps do, against a live orchestratord fronting a real llama-server.

One :class:`World` per scenario; the server is shared by the whole run (started by the
runner's hooks through :mod:`xtask.fakes.live_server`). Every check reads an observable: an HTTP
response, SSE frames on the wire, the engine's own ``/slots``, a metrics scrape.
"""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import psutil
from prometheus_client.parser import text_string_to_metric_families

from steps.on_demand import OnDemandBox
from steps.placement import MixedBox
from tests.contract_schemas import assert_frames_match, assert_matches, load_openapi
from tests.sse import SSEParser
from xtask.fakes.live_server import LiveServer, task_body, wait_until

_ENVELOPE_DOC = "data"


# Field variants for the validation outline: field -> {value label: JSON value or removal}.
_VARIANTS: dict[str, dict[str, Any]] = {
    "task_id": {"not a UUID": "task-1"},
    "ctx": {"a string": "big", "above the pool limit": 100_000},
    "engine": {"unknown": "gpt"},
    "max_tokens": {"zero": 0},
    "inputs": {"given together with prompt": ["also"]},
    "prompt": {"missing": None},
    "priority": {"unknown": "urgent"},
    "surprise": {"an unknown field": 1},
}


class World:
    def __init__(self, server: LiveServer) -> None:
        self.server = server
        self.client = httpx.Client(base_url=server.url, timeout=30.0)
        self.response: httpx.Response | None = None
        self.body: dict[str, Any] | None = None
        self.frames: list[tuple[str, Any]] = []
        self.tokens_before_cancel: int | None = None
        self.texts: dict[str, str] = {}
        self.accepted: list[str] = []
        self.metrics_text = ""
        self.filled = 0
        self._box: MixedBox | None = None
        self._demand: OnDemandBox | None = None
        self.drained: list[str] = []  # pools a scenario drained: resumed when it ends
        self.remembered: dict[str, str] = {}

    @property
    def box(self) -> MixedBox:
        """A second orchestratord (an example config) for this scenario only."""
        if self._box is None:
            self._box = MixedBox()
        return self._box

    @property
    def demand(self) -> OnDemandBox:
        """A second orchestratord (the models-on-demand example) for this scenario only."""
        if self._demand is None:
            self._demand = OnDemandBox()
        return self._demand

    def close(self) -> None:
        if self._box is not None:
            self._box.close()
        if self._demand is not None:
            self._demand.close()
        for pool in self.drained:  # leave the shared server admitting for the next scenario
            self.client.post(f"{pool}/resume", headers=self.server.auth)
        for task_id in self.accepted:  # leave no long task running for the next scenario
            self.client.post(f"/v1/tasks/{task_id}/cancel", headers=self.server.auth)
        self.client.close()

    # --- requests -----------------------------------------------------------------------------

    def _headers(
        self, auth: bool | str = True, correlation_id: str | None = None
    ) -> dict[str, str]:
        headers: dict[str, str] = {}
        if auth is True:
            headers.update(self.server.auth)
        elif isinstance(auth, str):
            headers["Authorization"] = f"Bearer {auth}"
        if correlation_id is not None:
            headers["X-Correlation-Id"] = correlation_id
        return headers

    def require_ready_pool(self) -> None:
        caps = self.client.get("/v1/capabilities", headers=self.server.auth).json()
        pools = [p for e in caps["engines"] for p in e["pools"]]
        assert any(p["ready"] for p in pools), f"no Ready pool: {pools}"

    def submit(
        self, *, auth: bool | str = True, correlation_id: str | None = None, **fields: Any
    ) -> None:
        self.body = task_body(**fields)
        self.response = self.client.post(
            "/v1/tasks", json=self.body, headers=self._headers(auth, correlation_id)
        )
        if self.response.status_code == 202:
            self.accepted.append(self.body["task_id"])

    def submit_variant(self, field: str, label: str) -> None:
        value = _VARIANTS[field][label]
        body = task_body()
        if value is None:
            body.pop(field)
        else:
            body[field] = value
        self.body = body
        self.response = self.client.post("/v1/tasks", json=body, headers=self.server.auth)

    def submit_raw_padded(self, size: int) -> None:
        body = task_body(prompt="x" * size)
        self.response = self.client.post("/v1/tasks", json=body, headers=self.server.auth)

    def resubmit_last(self) -> None:
        assert self.body is not None
        self.response = self.client.post("/v1/tasks", json=self.body, headers=self.server.auth)

    def fill_queue(self) -> None:
        """Long tasks until one is refused, with the engine stopped meanwhile: the tasks on
        it hold their slots, so none ends and makes room however fast the engine is."""
        self.filled = 0
        server = psutil.Process(self.server.pid)
        engines = [p for p in server.children() if "llama-server" in p.name()]
        for engine in engines:
            engine.suspend()
        try:
            for _ in range(40):
                self.submit(max_tokens=1900, sampler_profile_version="fixed-length", prompt="a")
                if self.response is not None and self.response.status_code != 202:
                    return
                self.filled += 1
        finally:
            for engine in engines:
                engine.resume()
        raise AssertionError("the queue never filled")

    def expect_accepted_capacity(self) -> None:
        """As many admitted as the engine has slots plus the queue has places, no more."""
        caps = self.client.get("/v1/capabilities", headers=self.server.auth).json()
        (pool,) = [p for e in caps["engines"] for p in e["pools"]]
        assert self.filled == pool["slots_total"] + pool["queue_capacity"], (self.filled, pool)

    def get(self, path: str) -> None:
        self.response = self.client.get(path, headers=self.server.auth)

    def post(self, path: str, body: Any = None) -> None:
        self.response = self.client.post(path, json=body, headers=self.server.auth)
        if path.endswith("/drain") and self.response.status_code == 202:
            self.drained.append(path.removesuffix("/drain"))

    # --- streams ------------------------------------------------------------------------------

    @property
    def task_id(self) -> str:
        assert self.body is not None
        return str(self.body["task_id"])

    def read_stream(self) -> None:
        parser = SSEParser()
        with self.client.stream(
            "GET", f"/v1/tasks/{self.task_id}/stream", headers=self.server.auth
        ) as response:
            assert response.status_code == 200, response.read()
            self.response = response
            for chunk in response.iter_raw():
                if any(e in ("end", "error") for e, _ in parser.feed(chunk)):
                    break
        self.frames = parser.frames

    def open_unknown_stream(self) -> None:
        self.response = self.client.get(
            f"/v1/tasks/{uuid.uuid4()}/stream", headers=self.server.auth
        )

    def read_then_cancel(self, count: int) -> None:
        parser = SSEParser()
        with self.client.stream(
            "GET", f"/v1/tasks/{self.task_id}/stream", headers=self.server.auth
        ) as response:
            chunks = response.iter_raw()
            for chunk in chunks:
                parser.feed(chunk)
                if sum(1 for e, _ in parser.frames if e == "token") >= count:
                    break
            self.response = self.client.post(
                f"/v1/tasks/{self.task_id}/cancel", headers=self.server.auth
            )
            self.engine_busy_at_cancel = self.engine_busy_slots()
            for chunk in chunks:
                if any(e in ("end", "error") for e, _ in parser.feed(chunk)):
                    break
        self.frames = parser.frames

    def read_then_disconnect(self, count: int) -> None:
        parser = SSEParser()
        with self.client.stream(
            "GET", f"/v1/tasks/{self.task_id}/stream", headers=self.server.auth
        ) as response:
            for chunk in response.iter_raw():
                parser.feed(chunk)
                if sum(1 for e, _ in parser.frames if e == "token") >= count:
                    break
        # Until the server notices (its next write) the old stream holds the task: 409.
        probes: list[httpx.Response] = []

        def noticed() -> bool:
            url = f"/v1/tasks/{self.task_id}/stream"
            probes.append(self.client.get(url, headers=self.server.auth))
            return probes[-1].status_code != 409

        wait_until(noticed, "the server to notice the disconnect")
        probe = probes[-1]
        self.frames = SSEParser().feed(probe.content) if probe.status_code == 200 else []

    def remember_text(self, name: str) -> None:
        self.read_stream()
        self.texts[name] = "".join(p["t"] for e, p in self.frames if e == "token")

    def start_background_task(self) -> None:
        """A long best-effort task, not streamed, so the engine is busy meanwhile."""
        body = task_body(max_tokens=1900, sampler_profile_version="fixed-length", prompt="load")
        response = self.client.post("/v1/tasks", json=body, headers=self.server.auth)
        assert response.status_code == 202, response.text
        self.accepted.append(body["task_id"])
        wait_until(self.engine_busy_slots, "the long task to decode on the engine")

    def engine_busy_slots(self) -> list[int]:
        return self.server.engine_busy_slots()

    def scrape_metrics(self) -> None:
        self.metrics_text = httpx.get(self.server.url + "/metrics", timeout=5.0).text

    # --- expectations ---------------------------------------------------------------------------

    def _response(self) -> httpx.Response:
        assert self.response is not None, "no request was made"
        return self.response

    def expect_status(self, status: int) -> None:
        response = self._response()
        assert response.status_code == status, f"{response.status_code}: {response.text[:300]}"

    def expect_error(self, code: str) -> None:
        body = self._response().json()
        assert_matches(_ENVELOPE_DOC, "ErrorEnvelope", body)
        assert body["code"] == code, body
        assert body["correlation_id"] == self._response().headers["X-Correlation-Id"]

    def expect_error_message(self, text: str) -> None:
        assert text in self._response().json()["message"]

    def expect_body_schema(self, schema: str) -> None:
        doc = "control" if schema in load_openapi("control")["components"]["schemas"] else "data"
        assert_matches(doc, schema, self._response().json())

    def expect_admission_metadata(self) -> None:
        body = self._response().json()
        assert_matches("data", "AdmissionResponse", body)
        assert body["task_id"] == self.task_id

    def expect_header(self, name: str, value: str | None = None) -> None:
        headers = self._response().headers
        assert name in headers, f"missing {name}: {dict(headers)}"
        if value is not None:
            assert headers[name] == value, headers[name]

    def expect_generated_correlation_id(self) -> None:
        uuid.UUID(self._response().headers["X-Correlation-Id"])

    def expect_policy_label(self, label: str) -> None:
        body = self._response().json()
        assert body["policy_label"] == label
        assert body["retriable"] is True
        assert int(self._response().headers["X-Backoff-Ms"]) == body["retry_after_ms"] > 0

    def expect_first_frame(self, event: str) -> None:
        assert self.frames and self.frames[0][0] == event, self.frames[:1]

    def expect_at_least(self, event: str, count: int) -> None:
        assert sum(1 for e, _ in self.frames if e == event) >= count

    def expect_single_end(self) -> None:
        terminal = [e for e, _ in self.frames if e in ("end", "error")]
        assert terminal == ["end"], terminal
        assert self.frames[-1][0] == "end"

    def expect_end_counts_tokens(self) -> None:
        tokens = [p for e, p in self.frames if e == "token"]
        assert [t["i"] for t in tokens] == list(range(len(tokens)))
        assert self.frames[-1][1]["tokens_out"] == len(tokens)

    def expect_finish_reason(self, reason: str) -> None:
        assert self.frames[-1][1]["finish_reason"] == reason, self.frames[-1]

    def expect_frames_match_contract(self) -> None:
        assert self.frames
        assert_frames_match(self.frames)

    def expect_no_token_after_cancel(self) -> None:
        # The end frame counts the tokens emitted before the cancel's cut; a token frame sent
        # after it would make the client's count exceed that number.
        tokens = sum(1 for e, _ in self.frames if e == "token")
        assert self.frames[-1][0] == "end"
        assert tokens == self.frames[-1][1]["tokens_out"]

    def expect_engine_idle(self) -> None:
        busy = getattr(self, "engine_busy_at_cancel", None)
        assert (busy if busy is not None else self.engine_busy_slots()) == []

    def expect_canceled_after_disconnect(self) -> None:
        assert self.frames, "the replayed stream was empty"
        event, end = self.frames[-1]
        assert (event, end["finish_reason"]) == ("end", "canceled"), self.frames[-1]
        assert self.engine_busy_slots() == []

    def expect_texts(self, first: str, second: str, *, equal: bool) -> None:
        a, b = self.texts[first], self.texts[second]
        assert a and b
        assert (a == b) is equal, (a, b)

    def expect_api_version(self) -> None:
        caps = self._response().json()
        versions = {load_openapi(name)["info"]["version"] for name in ("data", "control")}
        assert versions == {caps["api_version"]}

    def expect_pool_capability(self) -> None:
        caps = self._response().json()
        assert_matches("control", "Capabilities", caps)
        pools = [p for e in caps["engines"] for p in e["pools"]]
        assert any(p["ready"] and p["slots_total"] >= 1 for p in pools), pools

    def expect_pool_ready(self) -> None:
        health = self._response().json()
        assert (health["live"], health["ready"], health["last_error"]) == (True, True, None)
        assert health["metrics"]["slots_total"] >= 1

    def expect_metric(self, name: str, labels: list[str]) -> None:
        for family in text_string_to_metric_families(self.metrics_text):
            for sample in family.samples:
                if sample.name == name:
                    assert sorted(sample.labels) == sorted(labels), sample.labels
                    return
        raise AssertionError(f"{name} has no sample in:\n{self.metrics_text[:2000]}")
