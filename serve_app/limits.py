"""Server-side limits on what one request may ask for, and the checks that enforce them before a
request reaches an engine: JSON shape (depth, unpaired surrogates), text-generation fields
(prompt size, ``max_tokens``, ``n``/``best_of``, logprobs, stop lists, chat messages), and
requests in flight per caller. Pure Python: no FastAPI, no Ray. Every refusal is an
InvalidRequestError naming the field, or a RateLimitError (429).
"""

from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, PositiveInt

from serve_app.request_errors import InvalidRequestError, RateLimitError

CHAT_ROLES = ("system", "developer", "user", "assistant", "tool", "function")


class Limits(BaseModel):
    """Per-request limits (safe defaults; raise them for real workloads). The body size cap is
    ``max_request_bytes`` on the app config."""

    model_config = ConfigDict(extra="forbid")

    body_timeout_s: PositiveFloat = Field(
        default=30.0, description="The whole request body must arrive within this (else 408)."
    )
    max_json_depth: PositiveInt = Field(default=32, description="Deepest JSON nesting accepted.")
    max_prompt_chars: PositiveInt = Field(
        default=200_000, description="Characters of prompt text (all prompts / messages)."
    )
    max_prompt_tokens: PositiveInt = Field(
        default=32_768, description="Token ids in a pre-tokenized prompt."
    )
    max_prompts: PositiveInt = Field(default=32, description="Prompts in one completions request.")
    max_messages: PositiveInt = Field(default=512, description="Messages in one chat request.")
    max_tokens: PositiveInt = Field(
        default=4096, description="Largest max_tokens / max_completion_tokens."
    )
    max_n: PositiveInt = Field(default=8, description="Largest n and best_of.")
    max_logprobs: int = Field(
        default=20, ge=0, description="Largest logprobs / top_logprobs / prompt_logprobs."
    )
    max_stop: PositiveInt = Field(
        default=16, description="Entries in stop, stop_token_ids, bad_words and similar lists."
    )
    max_stop_chars: PositiveInt = Field(default=256, description="Characters of one stop string.")
    max_logit_bias: PositiveInt = Field(
        default=300, description="Entries in logit_bias / allowed_token_ids."
    )
    max_concurrent_per_key: PositiveInt = Field(
        default=64,
        description="Requests in flight per API key and ingress replica (else 429); an open "
        "server (no api_keys) has no per-caller limit.",
    )
    retry_after_s: PositiveInt = Field(default=1, description="Retry-After of a 429.")


def check_json(value: Any, max_depth: int) -> None:
    """Refuse JSON nested deeper than ``max_depth`` or holding unpaired UTF-16 surrogates
    (``"\\ud800"`` parses in Python but cannot be encoded for a tokenizer). Iterative."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        v, depth = stack.pop()
        if isinstance(v, str):
            _check_text(v)
            continue
        if not isinstance(v, dict | list):
            continue
        if depth > max_depth:
            raise InvalidRequestError(f"request JSON is nested deeper than {max_depth} levels")
        if isinstance(v, dict):
            for k, item in v.items():
                _check_text(k)
                stack.append((item, depth + 1))
        else:
            stack.extend((item, depth + 1) for item in v)


def _check_text(s: str) -> None:
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidRequestError(
            "request JSON holds an unpaired UTF-16 surrogate (e.g. '\\ud800'), "
            "which is not valid Unicode text"
        ) from None


def _int(body: dict[str, Any], name: str) -> int | None:
    """An integer field's value; None when absent or not a number (the engine's own validation
    then answers with its 400)."""
    v = body.get(name)
    if isinstance(v, bool) or not isinstance(v, int | float):
        return None
    return int(v) if v == v and abs(v) != float("inf") else None


def _at_most(body: dict[str, Any], name: str, limit: int, low: int = 0) -> None:
    v = _int(body, name)
    if v is not None and not low <= v <= limit:
        raise InvalidRequestError(
            f"'{name}' is {body[name]!r}; this server accepts {low} to {limit}", param=name
        )


def _list_at_most(body: dict[str, Any], name: str, limit: int) -> None:
    v = body.get(name)
    if isinstance(v, list | dict) and len(v) > limit:
        raise InvalidRequestError(
            f"'{name}' has {len(v)} entries; this server accepts at most {limit}", param=name
        )


MAX_PRIORITY = 2**31 - 1


def check_text_request(kind: str, body: dict[str, Any], limits: Limits) -> None:
    """Server caps on a completions (``kind="completions"``) or chat request body."""
    _at_most(body, "max_tokens", limits.max_tokens)
    _at_most(body, "max_completion_tokens", limits.max_tokens)
    _at_most(body, "n", limits.max_n, low=1)
    _at_most(body, "best_of", limits.max_n, low=1)
    # vLLM runs lower priorities first: below 0 would jump every other caller's requests.
    _at_most(body, "priority", MAX_PRIORITY)
    for name in ("logprobs", "top_logprobs", "prompt_logprobs"):
        if not isinstance(body.get(name), bool):  # chat's logprobs is a boolean switch
            _at_most(body, name, limits.max_logprobs)
    for name in ("stop_token_ids", "bad_words", "logprob_token_ids"):
        _list_at_most(body, name, limits.max_stop)
    for name in ("logit_bias", "allowed_token_ids"):
        _list_at_most(body, name, limits.max_logit_bias)
    _check_stop(body.get("stop"), limits)
    if kind == "chat":
        _check_messages(body.get("messages"), limits)
    else:
        _check_prompt(body.get("prompt"), limits)


def _check_stop(stop: Any, limits: Limits) -> None:
    stops = [stop] if isinstance(stop, str) else stop if isinstance(stop, list) else []
    if len(stops) > limits.max_stop:
        raise InvalidRequestError(
            f"'stop' has {len(stops)} entries; this server accepts at most {limits.max_stop}",
            param="stop",
        )
    for s in stops:
        if isinstance(s, str) and len(s) > limits.max_stop_chars:
            raise InvalidRequestError(
                f"a 'stop' string has {len(s)} characters; at most {limits.max_stop_chars}",
                param="stop",
            )


def _check_prompt(prompt: Any, limits: Limits) -> None:
    if prompt == [] or (isinstance(prompt, list) and any(p == [] for p in prompt)):
        # NOTE: vLLM finds this only once a stream has started (a 200 with an in-band error)
        raise InvalidRequestError("'prompt' must not be empty", param="prompt")
    if isinstance(prompt, str) or not isinstance(prompt, list):
        prompts = [prompt]
    elif prompt and all(isinstance(p, int) and not isinstance(p, bool) for p in prompt):
        prompts = [prompt]  # one pre-tokenized prompt
    else:
        prompts = prompt
    if len(prompts) > limits.max_prompts:
        raise InvalidRequestError(
            f"'prompt' holds {len(prompts)} prompts; this server accepts at most "
            f"{limits.max_prompts} per request",
            param="prompt",
        )
    chars = 0
    for p in prompts:
        if isinstance(p, str):
            chars += len(p)
        elif isinstance(p, list) and len(p) > limits.max_prompt_tokens:
            raise InvalidRequestError(
                f"a pre-tokenized prompt has {len(p)} token ids; at most "
                f"{limits.max_prompt_tokens}",
                param="prompt",
            )
    if chars > limits.max_prompt_chars:
        raise InvalidRequestError(
            f"the prompt has {chars} characters; this server accepts at most "
            f"{limits.max_prompt_chars}",
            param="prompt",
        )


def _check_messages(messages: Any, limits: Limits) -> None:
    """OpenAI's rules for chat messages: a list of objects with a known role; content present
    (a string or a list of parts) except on assistant messages that call tools."""
    if not isinstance(messages, list) or not messages:
        raise InvalidRequestError("'messages' must be a non-empty list", param="messages")
    if len(messages) > limits.max_messages:
        raise InvalidRequestError(
            f"'messages' has {len(messages)} entries; at most {limits.max_messages}",
            param="messages",
        )
    chars = 0
    for i, m in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            raise InvalidRequestError(f"'{where}' must be an object", param=where)
        role = m.get("role")
        if role not in CHAT_ROLES:
            raise InvalidRequestError(
                f"'{where}.role' is {role!r}; expected one of {', '.join(CHAT_ROLES)}",
                param=f"{where}.role",
            )
        content = m.get("content")
        calls = m.get("tool_calls") or m.get("function_call")
        if content is None and not (role == "assistant" and calls):
            raise InvalidRequestError(
                f"'{where}.content' is required for role '{role}'", param=f"{where}.content"
            )
        if content is not None and not isinstance(content, str | list):
            raise InvalidRequestError(
                f"'{where}.content' must be a string or a list of content parts",
                param=f"{where}.content",
            )
        if isinstance(content, str):
            chars += len(content)
        elif isinstance(content, list):
            for part in content:
                if not isinstance(part, dict):
                    raise InvalidRequestError(
                        f"'{where}.content' parts must be objects", param=f"{where}.content"
                    )
                if isinstance(part.get("text"), str):
                    chars += len(part["text"])
    if chars > limits.max_prompt_chars:
        raise InvalidRequestError(
            f"the messages have {chars} characters; this server accepts at most "
            f"{limits.max_prompt_chars}",
            param="messages",
        )


class InFlight:
    """Requests in flight per caller key, capped; one instance per ingress replica."""

    def __init__(self, limit: int, retry_after_s: int) -> None:
        self.limit, self.retry_after_s = limit, retry_after_s
        self.counts: Counter[str] = Counter()

    def acquire(self, key: str | None) -> None:
        """Count one request for ``key``; RateLimitError when its limit is reached. ``None``
        (an open server: callers have no identity) is not counted."""
        if key is None:
            return
        if self.counts[key] >= self.limit:
            raise RateLimitError(
                f"too many requests in flight for this API key (limit {self.limit}); retry later",
                retry_after_s=self.retry_after_s,
            )
        self.counts[key] += 1

    def release(self, key: str | None) -> None:
        if key is None:
            return
        self.counts[key] -= 1
        if self.counts[key] <= 0:
            del self.counts[key]

    @contextmanager
    def hold(self, key: str | None) -> Iterator[None]:
        self.acquire(key)
        try:
            yield
        finally:
            self.release(key)
