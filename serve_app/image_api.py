"""The ``POST /v1/images/generations`` request: OpenAI's fields plus LoRA extensions, and the rules
that turn ``model`` + ``adapters`` into one weighted adapter mix. Light imports only (no torch).

OpenAI fields: ``prompt`` (required), ``model``, ``n``, ``size`` ("WxH" or "auto"),
``response_format`` (only "b64_json": images are returned inline as PNG), ``user``, ``quality``
and ``style`` (accepted for client compatibility and ignored: a LoRA is how you pick a style here),
``output_format`` (only "png"). Unknown fields are refused, so a typo does not silently do nothing.
Extensions: ``adapters: [{"name", "weight"}]``, ``negative_prompt``, ``num_inference_steps``,
``guidance_scale`` (omitted: the pipeline's own default), ``seed`` (image i uses seed + i; same
seed, same image).
"""

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from adapters.ids import check_adapter_name
from serve_app.config import ImageConfig
from serve_app.engines.base import ImageJob
from serve_app.request_errors import InvalidRequestError

WEIGHT_RANGE = (-2.0, 2.0)  # a LoRA scale outside this is almost surely a mistake
MAX_SEED = 2**31 - 1
_SIZE_RE = re.compile(r"^(\d{1,5})x(\d{1,5})$")


class AdapterWeight(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="Adapter name on the requested base.")
    weight: float = Field(default=1.0, description="LoRA scale in the mix.")

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return check_adapter_name(v)


class ImageGenerationRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(min_length=1, max_length=4000)
    model: str | None = Field(default=None, description="'<base>', '<base>:<adapter>' or adapter.")
    n: int = Field(default=1, ge=1, description="Images to generate.")
    size: str | None = Field(default=None, description="'WxH'; omitted or 'auto': configured.")
    response_format: Literal["b64_json"] = Field(
        default="b64_json", description="Only inline base64 PNG; 'url' is not offered."
    )
    output_format: Literal["png"] = "png"
    user: str | None = Field(default=None, description="Accepted, ignored.")
    quality: str | None = Field(default=None, description="Accepted, ignored.")
    style: str | None = Field(default=None, description="Accepted, ignored.")
    adapters: list[AdapterWeight] | None = Field(default=None, description="Weighted LoRA mix.")
    negative_prompt: str | None = Field(default=None, max_length=4000)
    num_inference_steps: int | None = Field(default=None, ge=1)
    guidance_scale: float | None = Field(default=None, ge=0.0, le=50.0)
    seed: int | None = Field(default=None, ge=0, le=MAX_SEED)

    def job(self) -> ImageJob:
        """What the engine runs, from a request ``parse_image_request`` filled (size, steps)."""
        w, h = _SIZE_RE.match(self.size or "").groups()  # type: ignore[union-attr]
        assert self.num_inference_steps is not None
        return ImageJob(
            prompt=self.prompt,
            n=self.n,
            width=int(w),
            height=int(h),
            steps=self.num_inference_steps,
            guidance_scale=self.guidance_scale,
            negative_prompt=self.negative_prompt,
            seed=self.seed,
        )


def parse_image_request(body: dict, cfg: ImageConfig) -> ImageGenerationRequest:
    """Validate ``body`` against the model's limits and fill defaults (size, steps).

    Type errors raise pydantic's ValidationError; limit violations raise InvalidRequestError
    naming the field.
    """
    req = ImageGenerationRequest.model_validate(body)
    if req.n > cfg.max_n:
        raise InvalidRequestError(f"'n' is {req.n}; at most {cfg.max_n} images per request", "n")
    size = req.size if req.size not in (None, "auto") else f"{cfg.default_size}x{cfg.default_size}"
    m = _SIZE_RE.match(size)
    if m is None:
        raise InvalidRequestError(f"'size' must look like '512x512', not {size!r}", "size")
    for side in map(int, m.groups()):
        if side < 8 or side % 8 or side > cfg.max_size:
            raise InvalidRequestError(
                f"'size' {size}: width and height must be multiples of 8 between 8 and "
                f"{cfg.max_size}",
                "size",
            )
    steps = req.num_inference_steps or cfg.default_steps
    if steps > cfg.max_steps:
        raise InvalidRequestError(
            f"'num_inference_steps' is {steps}; at most {cfg.max_steps}", "num_inference_steps"
        )
    if req.seed is not None and req.seed + req.n - 1 > MAX_SEED:
        raise InvalidRequestError(f"'seed' + n - 1 must be <= {MAX_SEED}", "seed")
    mix = req.adapters or []
    if len(mix) > cfg.max_mix:
        raise InvalidRequestError(
            f"{len(mix)} adapters in one mix; at most {cfg.max_mix}", "adapters"
        )
    names = [a.name for a in mix]
    if len(set(names)) != len(names):
        raise InvalidRequestError("an adapter is listed twice in 'adapters'", "adapters")
    lo, hi = WEIGHT_RANGE
    for a in mix:
        if not lo <= a.weight <= hi:
            raise InvalidRequestError(
                f"adapter '{a.name}' weight {a.weight} is outside [{lo:g}, {hi:g}]", "adapters"
            )
    return req.model_copy(update={"size": size, "num_inference_steps": steps})


def adapter_mix(req: ImageGenerationRequest, model_adapter: str | None) -> list[tuple[str, float]]:
    """The one rule for what a request activates: the ``adapters`` list in its order, and the
    adapter named by ``model`` (if any) with weight 1.0 in front unless ``adapters`` lists it
    too, in which case the listed weight wins. Empty list: the base model.
    """
    mix = [(a.name, a.weight) for a in req.adapters or []]
    if model_adapter is not None and model_adapter not in {n for n, _ in mix}:
        mix.insert(0, (model_adapter, 1.0))
    return mix
