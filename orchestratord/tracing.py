"""OpenTelemetry tracing (FR-OB-002): a span per task, off by default.

With ``tracing.enabled`` each task becomes a ``task`` span with four children — admission
(the POST's checks), queue (admitted to dispatched), decode (dispatched to its terminal
frame) and stream (a client's stream, attached to terminal frame sent) — carrying the task,
pool, replica and correlation IDs. Spans are made when a phase is over, from the times the
task recorded, so the hot path does no tracing work. ``tracing.otlp_endpoint`` exports them
over OTLP/HTTP; tests hand in their own exporter. The SDK is imported only when enabled.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from orchestratord.config import TracingConfig

if TYPE_CHECKING:
    from orchestratord.core.task import Task


# time.monotonic() stamps to the Unix-epoch nanoseconds OpenTelemetry wants: one offset,
# taken once, so the phases of a task keep their order exactly.
_OFFSET_NS = time.time_ns() - time.monotonic_ns()


def _epoch_ns(monotonic_s: float) -> int:
    return _OFFSET_NS + int(monotonic_s * 1e9)


class Tracing:
    def __init__(self, config: TracingConfig, exporter: Any = None) -> None:
        self.enabled = config.enabled or exporter is not None
        self._tracer: Any = None
        if not self.enabled:
            return
        from opentelemetry.sdk.resources import Resource  # noqa: PLC0415 - optional dependency
        from opentelemetry.sdk.trace import TracerProvider  # noqa: PLC0415
        from opentelemetry.sdk.trace.export import (  # noqa: PLC0415
            BatchSpanProcessor,
            SimpleSpanProcessor,
        )

        provider = TracerProvider(resource=Resource.create({"service.name": config.service_name}))
        if exporter is not None:
            provider.add_span_processor(SimpleSpanProcessor(exporter))
        if config.otlp_endpoint:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import (  # noqa: PLC0415
                OTLPSpanExporter,
            )

            provider.add_span_processor(
                BatchSpanProcessor(OTLPSpanExporter(endpoint=config.otlp_endpoint))
            )
        self.provider = provider
        self._tracer = provider.get_tracer("orchestratord")

    def task_finished(self, task: Task, pool_id: str) -> None:
        """The task span and its admission, queue and decode children."""
        if self._tracer is None or task.finished_at is None:
            return
        from opentelemetry import trace  # noqa: PLC0415

        attributes = {
            "llorch.task_id": task.id,
            "llorch.session_id": task.session_id,
            "llorch.pool_id": pool_id,
            "llorch.replica_id": task.replica_id or "",
            "llorch.correlation_id": task.correlation_id,
            "llorch.priority": task.priority.value,
            "llorch.outcome": task.outcome or "",
            "llorch.tokens_out": task.tokens_out,
        }
        root = self._tracer.start_span(
            "task", start_time=_epoch_ns(task.received_at), attributes=attributes
        )
        context = trace.set_span_in_context(root)
        phases = [("admission", task.received_at, task.admitted_at)]
        if task.started_at is not None:
            phases += [("queue", task.admitted_at, task.started_at)]
            phases += [("decode", task.started_at, task.finished_at)]
        else:
            phases += [("queue", task.admitted_at, task.finished_at)]
        for name, start, end in phases:
            span = self._tracer.start_span(name, context=context, start_time=_epoch_ns(start))
            span.end(end_time=_epoch_ns(end))
        root.end(end_time=_epoch_ns(task.finished_at))
        task.trace_context = context

    def stream_finished(self, task: Task, opened_at: float) -> None:
        if self._tracer is None or task.trace_context is None:
            return
        span = self._tracer.start_span(
            "stream", context=task.trace_context, start_time=_epoch_ns(opened_at)
        )
        span.end()

    def shutdown(self) -> None:
        if self._tracer is not None:
            self.provider.shutdown()
