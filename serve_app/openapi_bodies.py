"""What ``/openapi.json`` says about each route: request bodies and responses, so the docs page
and schema-driven fuzzers (schemathesis) see real shapes. The routes read raw JSON (the engines
validate with their own models), so these models describe; they do not parse requests.
Light imports only.
"""

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from serve_app.image_api import ImageGenerationRequest


class _Documented(BaseModel):
    # NOTE: closed here so generated examples stay meaningful; the routes accept every field
    # vLLM's own request models accept.
    model_config = ConfigDict(extra="forbid")


_Stop = str | list[Annotated[str, Field(min_length=1, max_length=256)]] | None


class CompletionBody(_Documented):
    """OpenAI ``POST /v1/completions``: the commonly used fields (vLLM accepts more), with this
    server's default limits."""

    model: str = Field(description="'<base>', '<base>:<adapter>' or a unique adapter name.")
    prompt: str | list[str] | list[int] = Field(min_length=1, description="Text(s) or token ids.")
    max_tokens: int | None = Field(default=16, ge=1, le=4096, description="Tokens to generate.")
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    n: int | None = Field(default=1, ge=1, le=8)
    stream: bool | None = False
    stop: _Stop = Field(default=None, max_length=16)
    seed: int | None = Field(default=None, ge=0, le=2**31 - 1)
    logprobs: int | None = Field(default=None, ge=0, le=20)


class Message(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str = Field(min_length=1)


class ChatBody(_Documented):
    """OpenAI ``POST /v1/chat/completions``: the commonly used fields (vLLM accepts more), with
    this server's default limits."""

    model: str = Field(description="'<base>', '<base>:<adapter>' or a unique adapter name.")
    messages: list[Message] = Field(min_length=1, max_length=512)
    max_tokens: int | None = Field(default=None, ge=1, le=4096)
    max_completion_tokens: int | None = Field(default=None, ge=1, le=4096)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    n: int | None = Field(default=1, ge=1, le=8)
    stream: bool | None = False
    stop: _Stop = Field(default=None, max_length=16)
    seed: int | None = Field(default=None, ge=0, le=2**31 - 1)


class RegisterBody(BaseModel):
    """``POST /v1/adapters`` (admin): an adapter spec plus the base it is served on."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="Adapter name.")
    base: str = Field(description="Served base model id.")
    source: str = Field(description="Path under an allowed root, hf://org/repo, s3://bucket/p.")
    revision: str | None = None
    weight_name: str | None = None
    sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")
    pinned: bool = False


class ModelCard(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str
    object: Literal["model"]
    created: int
    owned_by: str
    parent: str | None


class ModelList(BaseModel):
    model_config = ConfigDict(extra="forbid")

    object: Literal["list"]
    data: list[ModelCard]


class _ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: int


class ErrorBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    error: _ErrorDetail


def _inline(schema: dict[str, Any]) -> dict[str, Any]:
    """A pydantic JSON schema with its ``$defs`` inlined (OpenAPI resolves refs from the
    document root, where these local ``$defs`` do not live)."""
    defs = schema.pop("$defs", {})

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                return walk(dict(defs[ref.removeprefix("#/$defs/")]))
            return {k: walk(v) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v) for v in node]
        return node

    return walk(schema)


def _json(model: type[BaseModel]) -> dict[str, Any]:
    return {"application/json": {"schema": _inline(model.model_json_schema())}}


_ERRORS = {
    "400": "Malformed request or a field outside a limit",
    "401": "Missing or wrong API key / admin token",
    "404": "No such model or adapter (or not in the key's scope)",
    "408": "The request body did not arrive in time",
    "413": "Request body too large",
    "415": "Content-Type is not JSON",
    "421": "Host header not allowed",
    "422": "The adapter's files break a validation rule",
    "429": "Too many requests in flight for this key",
}


_STREAMED = {  # what a text route answers: JSON, or server-sent events when "stream": true
    "application/json": {"schema": {"type": "object"}},
    "text/event-stream": {"schema": {}},  # events: "data: <chunk JSON>", then "data: [DONE]"
}


def _op(
    body: type[BaseModel] | None, ok: type[BaseModel] | None = None, streams: bool = False
) -> dict[str, Any]:
    responses: dict[str, Any] = {
        code: {"description": d, "content": _json(ErrorBody)} for code, d in _ERRORS.items()
    }
    if ok is not None:
        responses["200"] = {"description": "OK", "content": _json(ok)}
    if streams:
        responses["200"] = {"description": "OK", "content": _STREAMED}
    out: dict[str, Any] = {"responses": responses}
    if body is not None:
        out["requestBody"] = {"required": True, "content": _json(body)}
    return out


BODIES: dict[str, dict[str, Any]] = {
    "completions": _op(CompletionBody, streams=True),
    "chat": _op(ChatBody, streams=True),
    "images": _op(ImageGenerationRequest),
    "register": _op(RegisterBody),
    "models": _op(None, ModelList),
    "admin": _op(None),
}
