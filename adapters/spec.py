"""What we know about one adapter: where it comes from and, once fetched, its rank and size.

``AdapterSpec`` is also the shape of an adapter entry in config files and in ``POST /v1/adapters``.
"""

from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field, field_validator

from adapters.ids import check_adapter_name


class AdapterKind(StrEnum):
    TEXT = "text"  # a PEFT LoRA for a causal LM (vLLM / Transformers)
    IMAGE = "image"  # a Diffusers / Kohya LoRA for a diffusion pipeline


class AdapterSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(description="Adapter name; requests use '<base>:<name>' or '<name>'.")
    source: str = Field(
        description="Where the files live: a path or file:// URI under an allowed root, "
        "hf://org/repo[/subfolder], or s3://bucket/prefix."
    )
    base: str | None = Field(
        default=None, description="Base model id this adapter is served on (set by the deployment)."
    )
    kind: AdapterKind = Field(default=AdapterKind.TEXT, description="text or image LoRA.")
    revision: str | None = Field(default=None, description="Hub revision (branch, tag or commit).")
    weight_name: str | None = Field(
        default=None, description="Weight file inside the source, as Diffusers' weight_name."
    )
    sha256: str | None = Field(
        default=None, pattern=r"^[0-9a-f]{64}$", description="Expected sha256 of the weight file."
    )
    pinned: bool = Field(default=False, description="Keep resident once loaded; never evicted.")
    rank: int | None = Field(default=None, description="LoRA rank, known after validation.")
    size_bytes: int | None = Field(default=None, description="Weight bytes, known after fetch.")
    version: int | None = Field(
        default=None,
        description="Set by the registry, not by users: grows each time this name is registered "
        "(a replaced adapter gets a higher version, so replicas never serve the old weights).",
    )

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return check_adapter_name(v)

    @field_validator("weight_name")
    @classmethod
    def _weight_name(cls, v: str | None) -> str | None:
        if v is not None and ("/" in v or "\\" in v or v.startswith(".") or not v):
            raise ValueError(f"weight_name {v!r} must be a plain file name")
        return v
