"""Transformers + PEFT as a second text engine: for models vLLM lacks, and the reference that checks
vLLM's outputs. Adapters use the Transformers PEFT integration (``load_adapter``, ``set_adapter``,
``disable_adapters``, ``delete_adapter``). The active adapter is model-global state, so requests
run one at a time under a lock, in a worker thread; there is no cross-adapter batching here.
A request that goes away (client disconnect, cancelled call) stops its generation at the next
token and releases the lock.
"""

import asyncio
import json
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from adapters.errors import AdapterLoadError, unknown_model
from serve_app.request_errors import RequestTooLargeError, invalid_field

if TYPE_CHECKING:
    from adapters.validate import BaseModelInfo


class _Sampling(BaseModel):
    model_config = ConfigDict(extra="ignore")  # OpenAI clients send fields we don't use

    model: str
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=1.0, ge=0, le=2)
    top_p: float = Field(default=1.0, gt=0, le=1)
    seed: int | None = None
    stream: bool = False
    stop: str | list[str] | None = None
    n: Literal[1] = 1
    ignore_eos: bool = False
    return_token_ids: bool = False


class _Completion(_Sampling):
    prompt: str | list[int]


class _Message(BaseModel):
    role: str
    content: str


class _Chat(_Sampling):
    messages: list[_Message] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)


class PeftEngine:
    def __init__(
        self,
        *,
        name: str,
        model: str,
        tokenizer: str | None = None,
        max_model_len: int | None = None,
        dtype: str = "auto",
        base_aliases: tuple[str, ...] = (),
    ) -> None:
        self.name, self.model_ref = name, model
        self.base_aliases = tuple(base_aliases)
        self._tokenizer_ref = tokenizer or model
        self._max_len = max_model_len
        self._dtype = dtype
        self._adapters: set[str] = set()
        self._lock = threading.Lock()
        self._info: BaseModelInfo | None = None
        self.generating = 0  # generations holding the model now
        self.cancelled = 0  # generations stopped because their request went away

    async def start(self) -> None:
        await asyncio.to_thread(self._start)

    def _start(self) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        dtype = "auto" if self._dtype == "auto" else getattr(torch, self._dtype)
        self.tokenizer = AutoTokenizer.from_pretrained(self._tokenizer_ref)
        self.model = AutoModelForCausalLM.from_pretrained(self.model_ref, dtype=dtype).eval()
        limit = getattr(self.model.config, "max_position_embeddings", None) or 2048
        self.max_model_len = min(self._max_len or limit, limit)

    def base_info(self) -> "BaseModelInfo":
        from serve_app.engines.text_base_info import text_base_info

        if self._info is None:
            self._info = text_base_info(self.name, self.model_ref, self.base_aliases)
        return self._info

    async def load_adapter(self, name: str, path: str, weight_name: str | None = None) -> None:
        def load() -> None:
            with self._lock:
                try:
                    self.model.load_adapter(path, adapter_name=name)
                except Exception as e:  # PEFT raises many kinds; the pool wants one domain error
                    raise AdapterLoadError(f"adapter '{name}': PEFT could not load it: {e}") from e
                self._adapters.add(name)

        await asyncio.to_thread(load)

    async def unload_adapter(self, name: str) -> None:
        def unload() -> None:
            with self._lock:
                if name in self._adapters:
                    self.model.delete_adapter(name)
                    self._adapters.discard(name)

        await asyncio.to_thread(unload)

    async def engine_adapters(self) -> list[str]:
        peft_config = getattr(self.model, "peft_config", None) or {}
        return sorted(peft_config)

    async def completions(self, body: dict[str, Any]) -> dict[str, Any] | AsyncIterator[str]:
        req = _parse(_Completion, body)
        ids = (
            req.prompt if isinstance(req.prompt, list) else self.tokenizer(req.prompt)["input_ids"]
        )
        return await self._respond(req, list(ids), "text_completion", req.max_tokens or 16)

    async def chat(self, body: dict[str, Any]) -> dict[str, Any] | AsyncIterator[str]:
        req = _parse(_Chat, body)
        messages = [m.model_dump() for m in req.messages]
        ids = self.tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, tokenize=True
        )
        if hasattr(ids, "keys"):  # newer tokenizers return a BatchEncoding
            ids = ids["input_ids"]
        limit = req.max_completion_tokens or req.max_tokens or self.max_model_len - len(ids)
        return await self._respond(req, list(ids), "chat.completion", limit)

    def stats(self) -> dict[str, Any]:
        return {
            "adapters": sorted(self._adapters),
            "generating": self.generating,
            "cancelled": self.cancelled,
        }

    async def shutdown(self) -> None:
        return None

    # ---- generation ------------------------------------------------------------------------

    async def _respond(
        self, req: _Sampling, prompt: list[int], obj: str, max_tokens: int
    ) -> dict[str, Any] | AsyncIterator[str]:
        if req.model != self.name and req.model not in self._adapters:
            raise unknown_model(req.model)
        if len(prompt) + max_tokens > self.max_model_len:
            raise RequestTooLargeError(
                f"This model's maximum context length is {self.max_model_len} tokens; the prompt "
                f"has {len(prompt)} and max_tokens is {max_tokens}.",
                param="prompt",
            )
        meta = {
            "id": f"{'cmpl' if obj == 'text_completion' else 'chatcmpl'}-{uuid.uuid4().hex}",
            "created": int(time.time()),
            "model": req.model,
        }
        if req.stream:
            return self._stream(req, prompt, obj, max_tokens, meta)
        return await self._whole(req, prompt, obj, max_tokens, meta)

    async def _whole(self, req, prompt, obj, max_tokens, meta) -> dict[str, Any]:
        stop = threading.Event()
        gen = self._generate(req, prompt, max_tokens, stop)
        try:
            tokens, finish = await asyncio.to_thread(_drain, gen)
        except asyncio.CancelledError:
            stop.set()  # NOTE: the thread runs on until its next token, then frees the lock
            raise
        text = self.tokenizer.decode(tokens, skip_special_tokens=True)
        choice: dict[str, Any] = {"index": 0, "finish_reason": finish}
        if obj == "text_completion":
            choice |= {"text": text, "logprobs": None}
        else:
            choice |= {"message": {"role": "assistant", "content": text}}
        if req.return_token_ids:
            choice |= {"token_ids": tokens, "prompt_token_ids": prompt}
        usage = {
            "prompt_tokens": len(prompt),
            "completion_tokens": len(tokens),
            "total_tokens": len(prompt) + len(tokens),
        }
        return {**meta, "object": obj, "choices": [choice], "usage": usage}

    async def _stream(self, req, prompt, obj, max_tokens, meta) -> AsyncIterator[str]:
        chunk_obj = "text_completion" if obj == "text_completion" else "chat.completion.chunk"
        queue: asyncio.Queue = asyncio.Queue()
        loop = asyncio.get_running_loop()
        stop = threading.Event()

        def produce() -> None:
            try:
                for item in self._generate(req, prompt, max_tokens, stop):
                    loop.call_soon_threadsafe(queue.put_nowait, item)
            finally:
                loop.call_soon_threadsafe(queue.put_nowait, None)

        worker = loop.run_in_executor(None, produce)
        tokens: list[int] = []
        sent = ""
        try:
            if obj != "text_completion":
                yield _sse(meta, chunk_obj, {"index": 0, "delta": {"role": "assistant"}})
            while (item := await queue.get()) is not None:
                token, finish = item
                if token is not None:
                    tokens.append(token)
                text = self.tokenizer.decode(tokens, skip_special_tokens=True)
                delta, sent = text[len(sent) :], text
                body = (
                    {"text": delta} if obj == "text_completion" else {"delta": {"content": delta}}
                )
                yield _sse(meta, chunk_obj, {"index": 0, **body, "finish_reason": finish})
        finally:
            stop.set()  # NOTE: a consumer that went away (cancel, aclose) stops the generation
        await worker
        yield "data: [DONE]\n\n"

    def _generate(
        self, req: _Sampling, prompt: list[int], max_tokens: int, stop: threading.Event
    ) -> Iterator[tuple]:
        """Yield (token, finish_reason or None) one token at a time, holding the model lock;
        ends early (releasing the lock) once ``stop`` is set."""
        with self._lock:
            self.generating += 1
            try:
                yield from self._tokens(req, prompt, max_tokens, stop)
            finally:
                self.generating -= 1

    def _tokens(
        self, req: _Sampling, prompt: list[int], max_tokens: int, stop: threading.Event
    ) -> Iterator[tuple]:
        import torch

        stops = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
        gen = torch.Generator().manual_seed(req.seed) if req.seed is not None else None
        with torch.inference_mode():
            if req.model == self.name:
                if self._adapters:
                    self.model.disable_adapters()
            else:
                self.model.enable_adapters()
                self.model.set_adapter(req.model)
            ids = torch.tensor([prompt])
            past, out = None, []
            for step in range(max_tokens):
                if stop.is_set():
                    self.cancelled += 1
                    return
                res = self.model(input_ids=ids, past_key_values=past, use_cache=True)
                past, logits = res.past_key_values, res.logits[0, -1].float()
                token = _sample(logits, req.temperature, req.top_p, gen)
                out.append(token)
                ids = torch.tensor([[token]])
                if token == self.tokenizer.eos_token_id and not req.ignore_eos:
                    yield None, "stop"
                    return
                text = self.tokenizer.decode(out, skip_special_tokens=True)
                if any(s in text for s in stops):
                    yield token, "stop"
                    return
                yield token, ("length" if step == max_tokens - 1 else None)


def _sample(logits: Any, temperature: float, top_p: float, gen: Any) -> int:
    import torch

    if temperature == 0:
        return int(torch.argmax(logits))
    probs = torch.softmax(logits / temperature, dim=-1)
    if top_p < 1:
        sorted_p, idx = torch.sort(probs, descending=True)
        keep = torch.cumsum(sorted_p, 0) - sorted_p < top_p
        probs = torch.zeros_like(probs).scatter(0, idx[keep], sorted_p[keep])
    return int(torch.multinomial(probs / probs.sum(), 1, generator=gen))


def _drain(items: Iterator[tuple]) -> tuple[list[int], str]:
    tokens, finish = [], "length"
    for token, reason in items:
        if token is not None:
            tokens.append(token)
        finish = reason or finish
    return tokens, finish


def _sse(meta: dict[str, Any], obj: str, choice: dict[str, Any]) -> str:
    return f"data: {json.dumps({**meta, 'object': obj, 'choices': [choice]})}\n\n"


def _parse(model: type[BaseModel], body: dict[str, Any]) -> Any:
    try:
        return model.model_validate(body)
    except ValidationError as e:
        raise invalid_field(e) from None
