"""vLLM's multi-LoRA engine with vLLM's own OpenAI serving layer, built the way ``vllm serve``
builds it (same argument parser, same ``init_app_state``), so behaviour matches the plain server.

Adapters are added and removed only by our pool: ``load_adapter`` registers a LoRARequest with the
serving layer (which calls ``add_lora``), ``unload_adapter`` calls ``remove_lora`` as well, because
vLLM's own unload only forgets the name and leaves the weights resident.
"""

import logging
import os
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from adapters.errors import AdapterLoadError, AdapterUnavailableError, UnknownModelError
from serve_app.request_errors import (
    EngineError,
    EngineUnavailableError,
    InvalidRequestError,
    RequestTooLargeError,
    invalid_field,
)

if TYPE_CHECKING:
    from adapters.validate import BaseModelInfo

logger = logging.getLogger(__name__)


class VLLMEngine:
    def __init__(
        self,
        *,
        name: str,
        model: str,
        tokenizer: str | None = None,
        max_loras: int = 4,
        max_cpu_loras: int | None = None,
        max_lora_rank: int = 16,
        max_model_len: int | None = None,
        dtype: str = "auto",
        engine_kwargs: dict[str, Any] | None = None,
        base_aliases: tuple[str, ...] = (),
    ) -> None:
        self.name = name
        self.model = model
        self.base_aliases = tuple(base_aliases)
        # vLLM CPU's torch LoRA ops pick each token's adapter weights by slot index, and a base
        # token's index is -1: Python indexing makes that the LAST slot, so in a batch that mixes
        # base and adapter requests the base requests got the adapter in the last slot (seen on
        # SmolLM2, tests/real). One slot more than adapters can be resident (our pool bounds them
        # by max_cpu_loras) keeps the last slot empty, i.e. zeros. (vLLM's CUDA kernels skip
        # index -1: GPU builds keep max_loras as configured.)
        from vllm.platforms import current_platform

        cpu_loras = max_cpu_loras or max_loras
        slots = max(max_loras, cpu_loras) + 1 if current_platform.is_cpu() else max_loras
        cpu_loras = max(cpu_loras, slots)
        argv = [
            "--model",
            model,
            "--served-model-name",
            name,
            "--enable-lora",
            "--max-loras",
            str(slots),
            "--max-cpu-loras",
            str(cpu_loras),
            "--max-lora-rank",
            str(max_lora_rank),
            "--dtype",
            dtype,
        ]
        if tokenizer:
            argv += ["--tokenizer", tokenizer]
        if max_model_len:
            argv += ["--max-model-len", str(max_model_len)]
        self._argv = argv
        self._engine_kwargs = dict(engine_kwargs or {})
        self._stack = AsyncExitStack()
        self._info: BaseModelInfo | None = None

    async def start(self) -> None:
        from vllm.entrypoints.launchers.api_server.app_state import init_app_state
        from vllm.entrypoints.launchers.api_server.entry import build_async_engine_client
        from vllm.entrypoints.launchers.cli_args import make_arg_parser
        from vllm.platforms import current_platform
        from vllm.utils.argparse_utils import FlexibleArgumentParser

        if current_platform.is_cpu():
            # vLLM CPU otherwise runs the model in a worker process beside the engine-core
            # process, and the core busy-polls the worker's shared-memory queue: on a small CPU
            # host that polling takes most of a core from the model (benchmarks/batch: +11% to
            # +21% batch throughput without it, by machine). With this the model runs inside the
            # engine-core process (vLLM's "uni" executor); AsyncLLM still keeps that process
            # apart from the replica. A deployment's runtime_env may set it to "1" to opt out.
            os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        args = make_arg_parser(FlexibleArgumentParser()).parse_args(self._argv)
        for key, value in self._engine_kwargs.items():
            if not hasattr(args, key):
                raise ValueError(f"unknown vLLM engine argument {key!r} in engine_kwargs")
            setattr(args, key, value)
        self.client = await self._stack.enter_async_context(build_async_engine_client(args))
        state = SimpleNamespace()
        await init_app_state(self.client, state, args, await self.client.get_supported_tasks())
        self._models = state.openai_serving_models
        self._completion = state.openai_serving_completion
        self._chat = state.openai_serving_chat
        self.max_model_len = self.client.model_config.max_model_len
        logger.info("vLLM engine for %s started (max_model_len=%d)", self.name, self.max_model_len)

    def base_info(self) -> "BaseModelInfo":
        from serve_app.engines.text_base_info import text_base_info

        if self._info is None:
            self._info = text_base_info(self.name, self.model, self.base_aliases)
        return self._info

    async def load_adapter(self, name: str, path: str, weight_name: str | None = None) -> None:
        """Load ``name`` from ``path`` under a fresh LoRA int id.

        NOTE: vLLM keys LoRAs by int id (its CPU cache, its prefix cache): a name loaded again
        (a replaced adapter's new version) must not reuse the old id, so the old one goes first.
        """
        from vllm.entrypoints.serve.lora.protocol import LoadLoRAAdapterRequest

        await self.unload_adapter(name)
        result = await self._models.load_lora_adapter(
            LoadLoRAAdapterRequest(lora_name=name, lora_path=path), base_model_name=self.name
        )
        if not isinstance(result, str):
            if result.error.code >= 500:  # the engine failed (dead, out of memory), not the file
                raise AdapterUnavailableError(f"adapter '{name}': vLLM: {result.error.message}")
            raise AdapterLoadError(f"adapter '{name}': vLLM refused it: {result.error.message}")

    async def unload_adapter(self, name: str) -> None:
        from vllm.entrypoints.serve.lora.protocol import UnloadLoRAAdapterRequest

        lora = self._models.lora_requests.get(name)
        if lora is None:
            return
        await self.client.remove_lora(lora.lora_int_id)
        await self._models.unload_lora_adapter(UnloadLoRAAdapterRequest(lora_name=name))

    async def engine_adapters(self) -> list[str]:
        ids = await self.client.list_loras()
        return sorted(
            r.lora_name for r in self._models.lora_requests.values() if r.lora_int_id in ids
        )

    async def completions(self, body: dict[str, Any]) -> dict[str, Any] | AsyncIterator[str]:
        from vllm.entrypoints.openai.completion.protocol import CompletionRequest

        request = _parse(CompletionRequest, body)
        return await _call(self._completion, self._completion.create_completion, request)

    async def chat(self, body: dict[str, Any]) -> dict[str, Any] | AsyncIterator[str]:
        from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest

        request = _parse(ChatCompletionRequest, body)
        return await _call(self._chat, self._chat.create_chat_completion, request)

    def stats(self) -> dict[str, Any]:
        """Adapter sets that vLLM's scheduler ran together (its lora_requests_info gauge), tokens
        generated so far, and requests not finished (a disconnected client's are aborted)."""
        from prometheus_client import REGISTRY

        together: set[str] = set()
        generated = 0.0
        for metric in REGISTRY.collect():
            if metric.name == "vllm:lora_requests_info":
                together |= {s.labels.get("running_lora_adapters", "") for s in metric.samples}
            if metric.name == "vllm:generation_tokens":
                generated += sum(s.value for s in metric.samples if s.name.endswith("_total"))
        return {
            "running_lora_adapter_sets": sorted(t for t in together if t),
            "generation_tokens": int(generated),
            "unfinished_requests": self.client.get_num_unfinished_requests(),
        }

    async def shutdown(self) -> None:
        await self._stack.aclose()


def _parse(model: type, body: dict[str, Any]) -> Any:
    from vllm.exceptions import VLLMValidationError

    try:
        return model.model_validate(body)
    except VLLMValidationError as e:  # vLLM's own validators, e.g. a missing prompt
        raise InvalidRequestError(str(e), param=e.parameter) from None
    except ValidationError as e:
        raise invalid_field(e) from None
    except ValueError as e:  # vLLM's own validators raise plain ValueErrors
        raise InvalidRequestError(str(e)) from None


async def _call(serving: Any, create: Any, request: Any) -> dict[str, Any] | AsyncIterator[str]:
    """Run one serving-layer call; vLLM's own mapping turns its client errors into responses."""
    from vllm.exceptions import VLLMClientError
    from vllm.v1.engine.exceptions import EngineDeadError

    try:
        result = await create(request, raw_request=None)
    except EngineDeadError as e:  # the health check fails too: Serve replaces this replica
        raise EngineUnavailableError(f"the engine stopped ({e}); retry") from None
    except (VLLMClientError, ValueError) as e:
        result = serving.create_error_response(e)
    return _result(result)


def _result(result: Any) -> dict[str, Any] | AsyncIterator[str]:
    from vllm.entrypoints.serve.engine.protocol import ErrorResponse

    if isinstance(result, ErrorResponse):
        err = result.error
        if err.code == 404:
            raise UnknownModelError(err.message)
        if err.code == 400 and "maximum context length" in err.message:
            raise RequestTooLargeError(err.message, param=err.param or "prompt")
        if 400 <= err.code < 500:
            raise InvalidRequestError(err.message, param=err.param)
        if err.code == 503:  # vLLM's own "retry later" stays a 503
            raise EngineUnavailableError(err.message)
        raise EngineError(err.message)
    if hasattr(result, "model_dump"):
        return result.model_dump(mode="json", exclude_none=True)
    return result
