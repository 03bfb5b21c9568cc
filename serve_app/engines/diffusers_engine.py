"""The image engine: one Diffusers pipeline holding several named LoRAs.

A pipeline's active adapters are pipeline-global state, so every "activate this adapter set, run"
and every load/unload happens under ONE asyncio lock, on ONE worker thread (the event loop stays
free). Requests that share an adapter set and call parameters and arrive while the pipeline is
busy are run together as one batched pipeline call, each image with its own seeded generator, so
an image does not depend on what it was batched with (checked by the tests on CPU).
A request that goes away (client disconnect, cancelled call) leaves the queue; a pipeline call
whose requests have all gone stops after its current denoising step and frees the pipeline.
No Ray Serve, no FastAPI.
"""

import asyncio
import inspect
import io
import logging
import random
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from diffusers import DiffusionPipeline

from adapters.errors import AdapterLoadError, InvalidAdapterError
from serve_app.engines.base import ImageJob
from serve_app.request_errors import EngineError

log = logging.getLogger("serve_app.diffusers_engine")

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
_MAX_SEED = 2**31 - 1


@dataclass(frozen=True)
class CallKey:
    """What must be equal for two requests to share one pipeline call."""

    adapters: tuple[tuple[str, float], ...]
    width: int
    height: int
    steps: int
    guidance_scale: float | None  # None: the pipeline's default
    negative: bool  # NOTE: None and "" differ for SDXL (zeroed vs encoded empty prompt)


@dataclass
class _Job:
    prompt: str
    negative_prompt: str | None
    seeds: list[int]
    future: asyncio.Future = field(repr=False)


class DiffusersEngine:
    """An ``engines.base.ImageEngine``: ``start()``, then ``load_adapter`` / ``unload_adapter`` /
    ``generate`` (see the module doc)."""

    def __init__(
        self, model: str, dtype: str = "float32", device: str | None = None, max_batch: int = 8
    ) -> None:
        self.model, self.dtype, self.max_batch = model, _DTYPES[dtype], max_batch
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.pipe: Any = None
        self._lock = asyncio.Lock()  # NOTE: guards the pipeline's adapter state and every call
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="diffusers")
        self._pending: dict[CallKey, list[_Job]] = defaultdict(list)
        self._turns: set[asyncio.Task] = set()  # NOTE: strong refs; the loop holds tasks weakly
        self._stoppable = False  # the pipeline takes callback_on_step_end
        self.counters = {
            "calls": 0,
            "images": 0,
            "batched_requests": 0,
            "max_batch": 0,
            "steps": 0,  # denoising steps run, all calls together
            "cancelled": 0,  # calls stopped early because every request in them went away
            "running": 0,  # calls on the pipeline now
        }

    async def start(self) -> None:
        self.pipe = await self._run(self._load_pipeline)
        self._stoppable = "callback_on_step_end" in inspect.signature(self.pipe.__call__).parameters
        if not self._stoppable:
            log.warning("%s has no callback_on_step_end: calls run to the end", self.model)

    def _load_pipeline(self) -> Any:
        started = time.monotonic()
        pipe = DiffusionPipeline.from_pretrained(self.model, dtype=self.dtype)
        pipe.to(self.device)
        pipe.set_progress_bar_config(disable=True)
        log.info(
            "pipeline %s (%s) on %s in %.1fs",
            self.model,
            type(pipe).__name__,
            self.device,
            time.monotonic() - started,
        )
        return pipe

    # -- adapters ---------------------------------------------------------------------------------

    async def load_adapter(
        self, name: str, path: str | Path, weight_name: str | None = None
    ) -> None:
        """Load a Diffusers/PEFT or Kohya/A1111 LoRA file as adapter ``name``. A LoRA that does
        not fit this pipeline raises InvalidAdapterError and leaves nothing of itself behind."""
        async with self._lock:
            await self._run(self._load_lora, name, _key(name), str(path), weight_name)

    async def unload_adapter(self, name: str) -> None:
        """Delete adapter ``name`` from every component (its memory comes back)."""
        async with self._lock:
            await self._run(self._unload_lora, _key(name))

    async def check_adapter(self, name: str, path: str | Path, weight_name: str | None) -> dict:
        """Load into the pipeline under a scratch name and delete again: does this LoRA fit?"""
        scratch = f"-check-{_key(name)}"  # adapter names start with a letter or digit
        async with self._lock:
            try:
                return await self._run(self._load_lora, name, scratch, str(path), weight_name)
            finally:
                await self._run(self._unload_lora, scratch)

    async def engine_adapters(self) -> list[str]:
        """Adapter names the pipeline itself holds (its own view)."""
        # NOTE: read from the event loop (not behind a generation on the worker thread) while
        # that thread may be adding or deleting one: a dict changing under iteration raises;
        # read again.
        for _ in range(10):
            try:
                keys = {k for ks in self.pipe.get_list_adapters().values() for k in ks}
                return sorted(_unkey(k) for k in keys)
            except RuntimeError:
                await asyncio.sleep(0.001)
        return sorted({_unkey(k) for ks in self.pipe.get_list_adapters().values() for k in ks})

    def _bytes(self, key: str) -> int:
        total = 0
        for model in self._models():
            for pname, p in model.named_parameters():
                if f".{key}." in pname and ".lora_" in pname:
                    total += p.numel() * p.element_size()
        return total

    def _load_lora(self, name: str, key: str, path: str, weight_name: str | None) -> dict:
        catcher = _UnhandledKeys()
        logging.getLogger("diffusers.utils.peft_utils").addHandler(catcher)
        try:
            self.pipe.load_lora_weights(path, weight_name=weight_name, adapter_name=key)
        except Exception as e:
            self._purge(key)
            raise _load_error(name, e) from e
        finally:
            logging.getLogger("diffusers.utils.peft_utils").removeHandler(catcher)
        if catcher.messages or key not in _keys(self.pipe):
            self._purge(key)
            detail = catcher.messages[0][:300] if catcher.messages else "no tensor matches a layer"
            raise InvalidAdapterError(
                f"adapter '{name}' does not fit this pipeline (made for another base model?): "
                f"{detail}"
            )
        ranks = [
            cfg.r
            for m in self._models()
            for n, cfg in getattr(m, "peft_config", {}).items()
            if n == key
        ]
        info = {"rank": max(ranks, default=0), "bytes": self._bytes(key)}
        log.info("adapter %s: loaded into pipeline (%s)", name, info)
        return info

    def _unload_lora(self, key: str) -> int:
        freed = self._bytes(key)
        if key in _keys(self.pipe):
            self.pipe.delete_adapters([key])
        self._purge(key)
        log.info("adapter %s: deleted from pipeline, %d bytes freed", _unkey(key), freed)
        return freed

    def _purge(self, key: str) -> None:
        """Remove every trace of ``key`` (a failed load can leave layers in some components)."""
        from peft.tuners.tuners_utils import BaseTunerLayer

        for model in self._models():
            for module in model.modules():
                if isinstance(module, BaseTunerLayer) and key in getattr(module, "lora_A", {}):
                    module.delete_adapter(key)
            getattr(model, "peft_config", {}).pop(key, None)

    def _models(self) -> list[torch.nn.Module]:
        return [
            m
            for c in self.pipe._lora_loadable_modules
            if isinstance(m := getattr(self.pipe, c, None), torch.nn.Module)
        ]

    # -- generation -------------------------------------------------------------------------------

    async def generate(self, job: ImageJob, adapters: list[tuple[str, float]]) -> list[bytes]:
        """PNG images for ``job`` with the weighted adapter mix (empty = base model).

        Image ``i`` uses seed ``seed + i`` (random when ``seed`` is None): same seed, same bytes.
        The adapters must stay loaded until this returns (the caller holds them in its pool).
        """
        n, seed, negative_prompt = job.n, job.seed, job.negative_prompt
        if seed is None:
            seed = random.SystemRandom().randrange(_MAX_SEED - n)
        gs = None if job.guidance_scale is None else float(job.guidance_scale)
        key = CallKey(
            tuple(adapters), job.width, job.height, job.steps, gs, negative_prompt is not None
        )
        queued = _Job(job.prompt, negative_prompt, [seed + i for i in range(n)], asyncio.Future())
        self._pending[key].append(queued)
        # NOTE: the pipeline runs in "turns", tasks of their own that outlive this request: the
        # turn that gets the lock first runs every job queued under its key (up to max_batch
        # images), so requests that arrive while the pipeline is busy are batched; later turns
        # find theirs done. If this request is cancelled, awaiting its future cancels the
        # future: it leaves the queue, or its running call stops once no job in it is waiting.
        turn = asyncio.ensure_future(self._turn(key))
        self._turns.add(turn)
        turn.add_done_callback(self._turns.discard)
        try:
            return await queued.future
        finally:
            queue = self._pending.get(key, [])
            if queued in queue:  # cancelled while queued: never run it
                queue.remove(queued)

    async def _turn(self, key: CallKey) -> None:
        async with self._lock:
            batch = self._take(key)
            if batch:
                await self._run_batch(key, batch)

    def _take(self, key: CallKey) -> list[_Job]:
        queue = self._pending[key]
        batch, images = [], 0
        while queue and (not batch or images + len(queue[0].seeds) <= self.max_batch):
            job = queue.pop(0)
            if not job.future.done():
                batch.append(job)
                images += len(job.seeds)
        if not queue:
            self._pending.pop(key, None)
        return batch

    async def _run_batch(self, key: CallKey, batch: list[_Job]) -> None:
        try:
            results = await self._run(self._call, key, batch)
        except _Abandoned as e:
            self.counters["cancelled"] += 1
            log.info("pipeline call stopped: %s", e)
            return
        except Exception as e:
            log.exception("pipeline call failed")
            err = e if isinstance(e, EngineError) else EngineError(f"{type(e).__name__}: {e}")
            for job in batch:
                if not job.future.done():
                    job.future.set_exception(err)
            return
        for job, pngs in zip(batch, results, strict=True):
            if not job.future.done():
                job.future.set_result(pngs)

    def _call(self, key: CallKey, batch: list[_Job]) -> list[list[bytes]]:
        self._activate(key.adapters)
        prompts = [j.prompt for j in batch for _ in j.seeds]
        negatives = [j.negative_prompt or "" for j in batch for _ in j.seeds]
        generators = [torch.Generator("cpu").manual_seed(s) for j in batch for s in j.seeds]
        kwargs: dict[str, Any] = {}
        if key.guidance_scale is not None:
            kwargs["guidance_scale"] = key.guidance_scale
        if self._stoppable:
            kwargs["callback_on_step_end"] = self._step_check(batch)
        self.counters["running"] += 1
        try:
            out = self.pipe(
                prompt=prompts,
                negative_prompt=negatives if key.negative else None,
                width=key.width,
                height=key.height,
                num_inference_steps=key.steps,
                generator=generators,
                output_type="pil",
                **kwargs,
            )
        finally:
            self.counters["running"] -= 1
        pngs = iter(_png(img) for img in out.images)
        self.counters["calls"] += 1
        self.counters["images"] += len(prompts)
        self.counters["batched_requests"] += len(batch) if len(batch) > 1 else 0
        self.counters["max_batch"] = max(self.counters["max_batch"], len(batch))
        return [[next(pngs) for _ in j.seeds] for j in batch]

    def _step_check(self, batch: list[_Job]) -> Any:
        """A ``callback_on_step_end`` that counts steps and stops the call once every job in
        ``batch`` is cancelled. NOTE: raising, not ``pipe._interrupt = True``: the interrupt flag
        still decodes and post-processes images nobody will receive, and not every pipeline reads
        it; an exception from the callback stops every pipeline that takes one, at once. Reading
        ``Future.cancelled()`` from this worker thread is a plain state read."""

        def check(pipe: Any, step: int, timestep: Any, tensors: dict) -> dict:
            self.counters["steps"] += 1
            if all(j.future.cancelled() for j in batch):
                raise _Abandoned(f"every request in it went away after step {step + 1}")
            return tensors

        return check

    def _activate(self, adapters: tuple[tuple[str, float], ...]) -> None:
        if not adapters:
            if _keys(self.pipe):
                self.pipe.disable_lora()
            return
        names, weights = zip(*adapters, strict=True)
        self.pipe.set_adapters([_key(n) for n in names], adapter_weights=list(weights))
        # NOTE: set_adapters does not undo an earlier disable_lora(); without this the request
        # would silently get the base model.
        self.pipe.enable_lora()

    def stats(self) -> dict[str, Any]:
        return {
            **self.counters,
            "device": self.device,
            "pipeline": type(self.pipe).__name__,
            "torch_threads": torch.get_num_threads(),  # CPU results depend on it (summation order)
        }

    async def _run(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._thread, fn, *args)

    async def shutdown(self) -> None:
        self._thread.shutdown(wait=False, cancel_futures=True)


class _Abandoned(Exception):
    """Raised inside a pipeline call whose requests have all gone away, to stop it."""


class _UnhandledKeys(logging.Handler):
    """Collects Diffusers' "unexpected/missing keys" warnings: tensors that did not load."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        msg = record.getMessage()
        if "unexpected keys" in msg or "missing keys" in msg:
            self.messages.append(msg)


def _key(name: str) -> str:
    """Adapter name -> PEFT adapter key: PEFT keeps adapters in ModuleDicts, whose keys cannot
    contain '.', which our names may. Injective: '_' -> '__', '.' -> '_o'."""
    return name.replace("_", "__").replace(".", "_o")


def _unkey(key: str) -> str:
    out, i = [], 0
    while i < len(key):
        if key[i] == "_" and i + 1 < len(key):
            out.append("_" if key[i + 1] == "_" else ".")
            i += 2
        else:
            out.append(key[i])
            i += 1
    return "".join(out)


def _keys(pipe: Any) -> set[str]:
    return {k for ks in pipe.get_list_adapters().values() for k in ks}


def _load_error(name: str, e: Exception) -> Exception:
    text = str(e).strip().splitlines()
    first = " ".join(text[:3])[:400] if text else type(e).__name__
    if isinstance(e, (RuntimeError, ValueError, KeyError)) and (
        "size mismatch" in first or "shape" in first or "not found" in first or "keys" in first
    ):
        return InvalidAdapterError(
            f"adapter '{name}' does not fit this pipeline (made for another base model?): {first}"
        )
    if isinstance(e, (OSError, EnvironmentError)):
        return InvalidAdapterError(f"adapter '{name}': cannot read LoRA weights: {first}")
    return AdapterLoadError(f"adapter '{name}' failed to load: {type(e).__name__}: {first}")


def _png(image: Any) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()
