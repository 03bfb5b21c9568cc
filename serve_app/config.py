"""The one config tree. Serve config files carry it as an application's ``args``; Python callers
pass it to ``build_app``. Unknown keys are rejected everywhere; limits live in the types.
"""

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeInt,
    PositiveInt,
    field_validator,
    model_validator,
)

from adapters.ids import check_base_name
from adapters.spec import AdapterSpec
from serve_app import env
from serve_app.auth import ApiKey, sha256_hex
from serve_app.limits import Limits

LoraRank = Literal[1, 8, 16, 32, 64, 128, 256, 320, 512]  # what vLLM's max_lora_rank accepts


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DeploymentOptions(_Strict):
    """Ray Serve options for one deployment (see ``serve.deployment``)."""

    num_replicas: PositiveInt | None = Field(default=1, description="Fixed replica count.")
    autoscaling_config: dict[str, Any] | None = Field(
        default=None,
        description="Serve autoscaling (min_replicas, max_replicas, ...); replaces num_replicas.",
    )
    autoscaling_policy: Literal["default", "adapter_aware"] = Field(
        default="default",
        description="With autoscaling_config: Serve's policy (ongoing requests only) or "
        "serve_app.autoscaling's, which also scales out for adapter-load pressure.",
    )
    max_ongoing_requests: PositiveInt = Field(
        default=64,
        description="Per replica. vLLM replicas default to twice the engine's max_num_seqs "
        "(256 with vLLM's 128), so a queue waits inside the engine, not between hops.",
    )
    max_queued_requests: Literal[-1] | PositiveInt = Field(
        default=256,
        description="Requests each caller (an ingress replica, a batch job) holds for this "
        "deployment while every replica is at max_ongoing_requests; more are refused at once "
        "with 503 + Retry-After (Serve's back-pressure) instead of waiting without bound. "
        "-1: no limit.",
    )
    ray_actor_options: dict[str, Any] = Field(
        default_factory=lambda: {"num_cpus": 0.5},
        description="Resources and runtime_env of each replica actor.",
    )
    warm_timeout_s: float = Field(
        default=30.0,
        ge=0,
        description="A replica that starts while others serve first loads the adapters routers "
        "will send it (the hottest not yet on enough replicas, up to its free slots), for at most "
        "this long, before it takes traffic. 0: start cold.",
    )
    router: Literal["adapter_aware", "builtin"] = Field(
        default="adapter_aware",
        description="adapter_aware: our RequestRouter; builtin: Ray Serve's multiplex routing.",
    )
    router_knobs: dict[str, int | float] = Field(
        default_factory=dict,
        description="adapter_aware only: policy knobs (serve_app/routing/policy.py, Knobs).",
    )

    @field_validator("router_knobs")
    @classmethod
    def _known_knobs(cls, v: dict[str, int | float]) -> dict[str, int | float]:
        from dataclasses import fields

        from serve_app.routing.policy import Knobs  # pure: no Ray import

        known = {f.name for f in fields(Knobs)}
        unknown = sorted(set(v) - known)
        if unknown:
            raise ValueError(f"unknown router knobs {unknown}; known: {sorted(known)}")
        return v

    @model_validator(mode="after")
    def _replicas(self) -> "DeploymentOptions":
        if self.autoscaling_config is not None:
            self.num_replicas = None
        return self


class SourceOptions(_Strict):
    """Where adapters may come from and how they are fetched and checked."""

    allowed_roots: list[str] = Field(
        default_factory=list,
        description="Local directories adapters may be read from (paths and file:// URIs).",
    )
    cache_dir: str = Field(
        default="~/.cache/loraserve",
        description="Local disk cache (a node's LORASERVE_ADAPTER_CACHE_DIR overrides it).",
    )
    cache_max_bytes: PositiveInt = Field(default=20 * 2**30, description="Disk cache budget.")
    s3_endpoint_url: str | None = Field(default=None, description="S3-compatible endpoint.")
    fetch_timeout_s: float = Field(default=600.0, gt=0, description="Per-adapter fetch limit.")
    fetch_retries: NonNegativeInt = Field(default=3, description="Retries with backoff.")
    max_adapter_bytes: PositiveInt = Field(default=2 * 2**30, description="Per-adapter file cap.")
    allow_pickle: bool = Field(
        default=False, description="Accept pickled .bin weights (unsafe: runs code on load)."
    )
    check_base_model: bool = Field(
        default=True, description="Refuse adapters whose base_model_name_or_path differs."
    )


# NOTE: lfu by default: on a full fleet (benchmarks/simulate) it loads about 0.85x what lru does,
# and a one-off adapter no longer pushes a popular one out; lru stays for those who want it.
DEFAULT_EVICTION: Literal["lru", "lfu"] = "lfu"
EVICTION_HELP = "Working-set eviction: lfu (frequency with aging, recency breaks ties) or lru."

VLLM_MAX_NUM_SEQS = 128  # vLLM's default batch on CPU (its OpenAI server's max_num_seqs)


class LLMConfig(_Strict):
    """One base language model and its adapters."""

    name: str = Field(description="Served base id; requests use it as 'model'.")
    model: str = Field(description="Local path or Hugging Face id of the base weights.")
    tokenizer: str | None = Field(default=None, description="Defaults to model.")
    base_aliases: list[str] = Field(
        default_factory=list,
        description="Other names adapters may give as base_model_name_or_path for this base "
        "(e.g. the hub id when 'model' is a local copy).",
    )
    engine: Literal["vllm", "peft"] = Field(default="vllm", description="Text engine.")
    max_loras: PositiveInt = Field(default=4, description="Adapters usable in one batch.")
    max_cpu_loras: PositiveInt | None = Field(
        default=None, description="Adapters resident per replica (working set); >= max_loras."
    )
    max_lora_rank: LoraRank = Field(default=16, description="Largest adapter rank accepted.")
    max_model_len: PositiveInt | None = Field(default=None, description="Context length cap.")
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    max_resident_bytes: PositiveInt | None = Field(
        default=None, description="Byte budget for resident adapter weights per replica."
    )
    eviction: Literal["lru", "lfu"] = Field(default=DEFAULT_EVICTION, description=EVICTION_HELP)
    engine_kwargs: dict[str, Any] = Field(
        default_factory=dict, description="Extra engine arguments (vLLM AsyncEngineArgs)."
    )
    adapters: list[AdapterSpec] = Field(default_factory=list)
    deployment: DeploymentOptions = Field(default_factory=DeploymentOptions)

    @property
    def schedules_by_priority(self) -> bool:
        """Whether the engine runs waiting requests by their ``priority`` (vLLM's priority
        scheduling, this app's default for vLLM; ``engine_kwargs.scheduling_policy: fcfs`` opts
        out): batch jobs' requests then wait behind online ones."""
        return self.engine == "vllm" and self.engine_kwargs["scheduling_policy"] == "priority"

    @model_validator(mode="after")
    def _check(self) -> "LLMConfig":
        check_base_name(self.name)
        if self.max_cpu_loras is None:
            self.max_cpu_loras = self.max_loras
        if self.max_cpu_loras < self.max_loras:
            raise ValueError(
                f"max_cpu_loras ({self.max_cpu_loras}) must be >= max_loras ({self.max_loras})"
            )
        _unique([a.name for a in self.adapters], f"adapter names of '{self.name}'")
        if self.engine != "vllm":
            return self
        # Requests waiting in vLLM run by priority (lower first), arrival within one: batch jobs
        # send theirs at serve_app/ingress.py BATCH_PRIORITY, so online ones go ahead of them.
        self.engine_kwargs.setdefault("scheduling_policy", "priority")
        if "max_ongoing_requests" not in self.deployment.model_fields_set:
            # NOTE: more in flight than vLLM batches (max_num_seqs) keeps requests waiting in
            # its scheduler: when a batch finishes the next starts at once, instead of the
            # engine idling while answers and new requests cross the Serve hops
            # (benchmarks/batch: about 1.5x a job's own throughput against 48 in flight).
            seqs = int(self.engine_kwargs.get("max_num_seqs") or VLLM_MAX_NUM_SEQS)
            self.deployment.max_ongoing_requests = 2 * seqs
        return self


class ImageConfig(_Strict):
    """One diffusion base model and its LoRAs."""

    name: str = Field(description="Served base id; requests use it as 'model'.")
    model: str = Field(description="Local path or Hugging Face id of the pipeline.")
    dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    max_adapters: PositiveInt = Field(default=8, description="LoRAs resident per replica.")
    max_resident_bytes: PositiveInt | None = Field(default=None, description="Byte budget.")
    eviction: Literal["lru", "lfu"] = Field(default=DEFAULT_EVICTION, description=EVICTION_HELP)
    max_mix: PositiveInt = Field(default=4, description="Most LoRAs in one weighted mix.")
    max_batch: PositiveInt = Field(
        default=8,
        description="Most same-adapter-set requests run as one pipeline call; 1 makes images "
        "byte-identical to solo runs under load.",
    )
    max_size: PositiveInt = Field(default=1024, description="Largest width/height in pixels.")
    default_size: PositiveInt = Field(default=512, description="Size when a request omits it.")
    max_n: PositiveInt = Field(default=4, description="Most images per request.")
    max_steps: PositiveInt = Field(default=50, description="Most inference steps per request.")
    default_steps: PositiveInt = Field(default=30)
    adapters: list[AdapterSpec] = Field(default_factory=list)
    deployment: DeploymentOptions = Field(default_factory=DeploymentOptions)

    @model_validator(mode="after")
    def _check(self) -> "ImageConfig":
        check_base_name(self.name)
        _unique([a.name for a in self.adapters], f"adapter names of '{self.name}'")
        if self.default_size > self.max_size or self.default_size % 8:
            raise ValueError("default_size must be a multiple of 8 and <= max_size")
        if self.default_steps > self.max_steps:
            raise ValueError("default_steps must be <= max_steps")
        if self.max_mix > self.max_adapters:
            raise ValueError(
                f"max_mix ({self.max_mix}) must be <= max_adapters ({self.max_adapters}): "
                "a full mix must fit in the working set"
            )
        return self


class AppConfig(_Strict):
    """The whole application: text and image bases, adapter sources, and the admin token."""

    llm: list[LLMConfig] = Field(default_factory=list)
    image: list[ImageConfig] = Field(default_factory=list)
    sources: SourceOptions = Field(default_factory=SourceOptions)
    admin_token: str | None = Field(
        default_factory=env.admin_token,
        description="Bearer token for the admin API; default from LORASERVE_ADMIN_TOKEN. "
        "Replaced by its sha256 when the config is validated, so the token itself never travels "
        "(don't write it into a Serve config file: its args are shown in the dashboard).",
    )
    admin_token_sha256: str | None = Field(
        default=None,
        pattern=r"^[0-9a-f]{64}$",
        description="sha256 hex digest of the admin token (the form safe to put in a file).",
    )
    api_keys: list[ApiKey] = Field(
        default_factory=lambda: [ApiKey.model_validate(k) for k in env.api_keys()],
        description="Caller keys and the models each may use; default from LORASERVE_API_KEYS "
        "(JSON). Empty: the server is open to every caller (a warning is logged at start).",
    )
    limits: Limits = Field(default_factory=Limits, description="Per-request limits.")
    max_request_bytes: PositiveInt = Field(default=1_000_000, description="Request body cap.")
    allowed_hosts: list[str] | None = Field(
        default=None,
        description="Host header values (without port) the server answers; '*' allows any. "
        "Default: on a loopback address only localhost, 127.0.0.1 and ::1 (against DNS "
        "rebinding); elsewhere any host.",
    )
    docs: bool = Field(default=True, description="Serve /docs, /redoc and /openapi.json.")
    state_dir: str = Field(
        default_factory=env.state_dir,
        description="Directory of the durable adapter catalogue (a SQLite file); on a cluster, a "
        "path on shared storage the registry's node can reach. Default from LORASERVE_STATE_DIR.",
    )

    @model_validator(mode="after")
    def _check(self) -> "AppConfig":
        _unique([m.name for m in [*self.llm, *self.image]], "base model names")
        _unique([k.name for k in self.api_keys], "API key names")
        if self.admin_token:  # NOTE: keep only the hash, so dumps of this config hold no secret
            digest = sha256_hex(self.admin_token)
            if self.admin_token_sha256 not in (None, digest):
                raise ValueError("admin_token and admin_token_sha256 disagree")
            self.admin_token_sha256, self.admin_token = digest, None
        return self

    @classmethod
    def from_yaml(cls, path: str | Path) -> "AppConfig":
        """Load a bare config tree, or the ``args`` of the first application of a Serve config."""
        data = yaml.safe_load(Path(path).read_text())
        if isinstance(data, dict) and "applications" in data:
            data = data["applications"][0].get("args", {})
        return cls.model_validate(data)


def _unique(names: list[str], what: str) -> None:
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"duplicate {what}: {', '.join(dupes)}")
