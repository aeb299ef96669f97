"""Prometheus metrics (HOME-801) on a per-app registry.

Names and label sets are the contract in requirements.md and ci/metrics.lint.json; a second
app in the same process (tests) gets its own registry and never collides.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics

# `*_created` series would double every counter in the exposition for a timestamp nobody
# here reads; the metrics contract (ci/metrics.lint.json) does not list them.
disable_created_metrics()  # type: ignore[no-untyped-call]

POOL = ("engine", "engine_version", "pool_id")
REPLICA = (*POOL, "replica_id")
_LATENCY_BUCKETS_MS = (1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000)


class PoolSeries:
    """One pool's series, resolved from their families once per engine version: ``labels()``
    validates and looks up its arguments on every call, and the task path would call it a
    dozen times per task. Events before placement (enqueue, cancel of a queued task) carry
    the pool's queue as their ``replica_id`` (``<pool>-queue``)."""

    def __init__(self, metrics: Metrics, pool: dict[str, str]) -> None:
        from orchestratord.core.queue import Priority  # noqa: PLC0415 - avoids a cycle

        self.queue_replica = {**pool, "replica_id": f"{pool['pool_id']}-queue"}
        self.engine_version = pool["engine_version"]
        self.queue_depth = {
            p: metrics.queue_depth.labels(**pool, priority=p.value) for p in Priority
        }
        self.slots_free = metrics.slots_free.labels(**pool)
        self.enqueued = {
            p: metrics.tasks_enqueued.labels(**self.queue_replica, priority=p.value)
            for p in Priority
        }
        self.first_token_ms = metrics.latency_first_token_ms.labels(**pool)
        self.decode_ms = metrics.latency_decode_ms.labels(**pool)
        self.queue_wait_ms = metrics.latency_queue_wait_ms.labels(**pool)


class ReplicaSeries:
    """One replica's series (per engine version, like :class:`PoolSeries`)."""

    def __init__(self, metrics: Metrics, replica: dict[str, str]) -> None:
        from orchestratord.core.queue import Priority  # noqa: PLC0415 - avoids a cycle

        self.labels = replica
        self.engine_version = replica["engine_version"]
        self.started = {
            p: metrics.tasks_started.labels(**replica, priority=p.value) for p in Priority
        }
        self.tokens_in = metrics.tokens_in.labels(**replica)
        self.tokens_out = metrics.tokens_out.labels(**replica)
        self.kv_cache_usage = metrics.kv_cache_usage_ratio.labels(**replica)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.queue_depth = Gauge(
            "queue_depth", "Tasks waiting in a pool queue.", (*POOL, "priority"), registry=r
        )
        self.tasks_enqueued = Counter(
            "tasks_enqueued", "Tasks admitted to a queue.", (*REPLICA, "priority"), registry=r
        )
        self.tasks_started = Counter(
            "tasks_started", "Tasks handed to an engine slot.", (*REPLICA, "priority"), registry=r
        )
        self.tasks_canceled = Counter(
            "tasks_canceled",
            "Tasks ended by cancel, disconnect or displacement.",
            (*REPLICA, "reason"),
            registry=r,
        )
        self.tasks_rejected = Counter(
            "tasks_rejected", "Tasks refused at admission.", ("engine", "reason"), registry=r
        )
        self.tokens_in = Counter("tokens_in", "Prompt tokens processed.", REPLICA, registry=r)
        self.tokens_out = Counter("tokens_out", "Tokens generated.", REPLICA, registry=r)
        self.gpu_utilization = Gauge(
            "gpu_utilization", "GPU utilization, 0..1.", (*REPLICA, "device"), registry=r
        )
        self.vram_used_bytes = Gauge(
            "vram_used_bytes", "GPU memory in use.", (*REPLICA, "device"), registry=r
        )
        self.backpressure = Counter(
            "admission_backpressure_events",
            "429s sent because a queue was full.",
            ("engine", "policy"),
            registry=r,
        )
        self.kv_cache_usage_ratio = Gauge(
            "kv_cache_usage_ratio", "Engine KV cache in use, 0..1.", REPLICA, registry=r
        )
        self.slots_free = Gauge("slots_free", "Engine slots not running a task.", POOL, registry=r)
        self.model_state = Gauge(
            "model_state",
            "1 for each catalog model's current lifecycle state.",
            ("model_id", "state"),
            registry=r,
        )
        self.catalog_verifications = Counter(
            "catalog_verifications",
            "Catalog verifications by outcome.",
            ("result", "reason", "engine"),
            registry=r,
        )
        self.sessions_active = Gauge(
            "sessions_active", "Sessions that may still take tasks.", registry=r
        )
        self.trust_gaps = Counter(
            "trust_gaps",
            "Accepted without a signature or SBOM (permissive trust policy).",
            ("subject",),
            registry=r,
        )
        self.latency_first_token_ms = Histogram(
            "latency_first_token_ms",
            "Admission to first token.",
            POOL,
            buckets=_LATENCY_BUCKETS_MS,
            registry=r,
        )
        self.latency_queue_wait_ms = Histogram(
            "latency_queue_wait_ms",
            "Admission to the start of decoding (time spent queued).",
            POOL,
            buckets=_LATENCY_BUCKETS_MS,
            registry=r,
        )
        self.latency_decode_ms = Histogram(
            "latency_decode_ms",
            "First token to last token.",
            POOL,
            buckets=_LATENCY_BUCKETS_MS,
            registry=r,
        )
        # Models on demand (RES-205).
        self.model_loads = Counter(
            "model_loads", "On-demand loads, by result (ok, failed).", ("pool_id", "result"),
            registry=r,
        )  # fmt: skip
        self.model_unloads = Counter(
            "model_unloads", "On-demand unloads, by reason (idle, evicted, swap, stopped).",
            ("pool_id", "reason"), registry=r,
        )  # fmt: skip
        self.model_load_seconds = Histogram(
            "model_load_seconds", "How long a load took, engine start and self-test included.",
            ("pool_id",), buckets=(0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 40, 80, 160), registry=r,
        )  # fmt: skip
        self.model_swaps = Counter(
            "model_swaps", "Pools unloaded to make way for another model (evicted or swapped).",
            ("pool_id",), registry=r,
        )  # fmt: skip
        self.models_loaded = Gauge(
            "models_loaded", "Pools whose engines are loaded (pinned ones included).", registry=r
        )
