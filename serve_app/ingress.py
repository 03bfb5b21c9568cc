"""The HTTP front door (FastAPI on Ray Serve): parse, validate, resolve ``model`` to a deployment
and adapter, call its handle, stream back. The ONLY module that imports FastAPI; every
error becomes an HTTP response here, through ``serve_app.errors.to_http``.
"""

import asyncio
import hmac
import json
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import ValidationError
from ray import serve

from adapters import ids
from adapters.catalog import Catalog
from adapters.errors import AdapterExistsError, UnknownModelError, unknown_model
from adapters.spec import AdapterSpec
from serve_app import errors
from serve_app.config import AppConfig
from serve_app.deployments.logs import to_replica_log
from serve_app.request_errors import (
    BodyTooLargeError,
    InvalidRequestError,
    ReplicaUnavailableError,
    UnauthorizedError,
    invalid_field,
)

logger = logging.getLogger("serve_app.ingress")
CATALOG_REFRESH_S = 0.5
app = FastAPI(title="loraserve", description="OpenAI-compatible multi-LoRA serving on Ray Serve")


@app.exception_handler(Exception)
async def _any_error(_: Request, exc: Exception) -> JSONResponse:
    return _error(exc)


def _error(exc: BaseException) -> JSONResponse:
    status, body = _status_body(exc)
    return JSONResponse(body, status_code=status, headers=errors.headers(status))


def _status_body(exc: BaseException) -> tuple[int, dict]:
    exc = _unwrap(exc)
    status, body = errors.to_http(exc)
    if status >= 500:
        logger.error("request failed: %r", exc)
    return status, body


def _unwrap(exc: BaseException) -> BaseException:
    """The deployment's own error out of Ray's wrapper; Ray's replica faults as domain errors."""
    from ray.exceptions import ActorUnavailableError, RayActorError
    from ray.serve.exceptions import BackPressureError

    if isinstance(exc, RayActorError | ActorUnavailableError):
        return ReplicaUnavailableError(
            "the replica serving this request stopped (Serve is replacing it); retry"
        )
    if isinstance(exc, BackPressureError):
        return ReplicaUnavailableError(f"overloaded: {exc}")
    return getattr(exc, "cause", None) or exc  # unwrap RayTaskError from a deployment


def _replica_died(exc: BaseException) -> bool:
    from ray.exceptions import ActorUnavailableError, RayActorError

    return isinstance(exc, RayActorError | ActorUnavailableError)


# What ``Ingress.call`` serves: the non-streamed OpenAI routes, by URL.
_CALL_URLS = ("/v1/completions", "/v1/chat/completions", "/v1/images/generations")


# NOTE: helpers are defined before the class: @serve.ingress serialises the app (and what its
# routes reference) when the class is decorated.


def _card(model_id: str, parent: str | None, root: str) -> dict[str, Any]:
    return {
        "id": model_id,
        "object": "model",
        "created": int(time.time()),
        "owned_by": "loraserve",
        "parent": parent,
        "root": root,
    }


def _validated(build: Any) -> Any:
    try:
        return build()
    except ValidationError as e:
        raise invalid_field(e) from None


async def _sse(gen: AsyncIterator[str]) -> AsyncIterator[str]:
    try:
        async for chunk in gen:
            yield chunk
    except Exception as exc:  # after the status line: report in-band, as OpenAI streams do
        status, body = errors.to_http(_unwrap(exc))
        logger.error("stream failed: %r", exc)
        yield f"data: {json.dumps(body)}\n\n"


@serve.deployment(ray_actor_options={"num_cpus": 0.1}, max_ongoing_requests=1000)
@serve.ingress(app)
class Ingress:
    def __init__(self, cfg: dict, llms: dict, images: dict, registry: Any) -> None:
        to_replica_log()
        self.cfg = AppConfig.model_validate(cfg)
        self.llms, self.images, self.registry = llms, images, registry
        self.image_cfgs = {c.name: c for c in self.cfg.image}
        self.catalog = Catalog()
        self._refresh_lock = asyncio.Lock()
        self._poller: asyncio.Task | None = None

    # ---- catalogue -------------------------------------------------------------------------

    # NOTE: requests read a cached catalogue that a background task refreshes every
    # CATALOG_REFRESH_S; admin writes refresh at once, and an unknown name refreshes once before
    # answering 404, so an adapter registered through another ingress replica is found too.

    async def _bases(self) -> Catalog:
        if self._poller is None:
            self._poller = asyncio.get_running_loop().create_task(self._poll())
            await self._refresh(force=True)
        return self.catalog

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(CATALOG_REFRESH_S)
            try:
                await self._refresh()
            except Exception as e:  # the registry restarting must not stop the ingress
                logger.warning("catalogue refresh failed: %r", e)

    async def _refresh(self, force: bool = False) -> Catalog:
        """Re-read the registry if it changed (one tiny versioned call)."""
        async with self._refresh_lock:
            snap = await self.registry.snapshot.remote(0 if force else self.catalog.version)
            if snap is not None:
                self.catalog = snap
        return self.catalog

    async def _lookup(self, model: str) -> ids.ModelId:
        catalog = await self._bases()
        try:
            return ids.resolve(model, catalog.names())
        except UnknownModelError:
            return ids.resolve(model, (await self._refresh()).names())

    async def _resolve(self, model: Any, kind: str) -> tuple[str, AdapterSpec | None]:
        if not isinstance(model, str):
            raise InvalidRequestError("'model' must be a string", param="model")
        mid = await self._lookup(model)
        if self.catalog.base(mid.base).kind != kind:
            route = "/v1/images/generations" if kind == "text" else "/v1/completions"
            raise InvalidRequestError(
                f"model '{mid.base}' is not a {kind} model; use {route}", param="model"
            )
        return mid.base, self.catalog.adapter(mid.base, mid.adapter) if mid.adapter else None

    # ---- OpenAI API ------------------------------------------------------------------------

    @app.get("/v1/models")
    async def models(self) -> dict[str, Any]:
        catalog = await self._bases()
        data = []
        for base, b in catalog.bases.items():
            data.append(_card(base, None, b.root))
            data += [_card(f"{base}:{n}", base, s.source) for n, s in b.adapters.items()]
        return {"object": "list", "data": data}

    @app.post("/v1/completions")
    async def completions(self, request: Request) -> Response:
        return await self._text("completions", request)

    @app.post("/v1/chat/completions")
    async def chat(self, request: Request) -> Response:
        return await self._text("chat", request)

    async def _text(self, kind: str, request: Request) -> Response:
        body = await self._json(request)
        handle, spec_dict = await self._text_target(body)
        for attempt in (1, 2):  # NOTE: once more on another replica if ours died before answering
            try:
                if body.get("stream") is not True:
                    return JSONResponse(await handle.complete.remote(kind, body, spec_dict))
                gen = handle.options(stream=True).generate.remote(kind, body, spec_dict)
                first = await gen.__anext__()  # the deployment's error, before any byte is sent
                break
            except Exception as e:
                if attempt == 2 or not _replica_died(e):
                    raise
                logger.warning("replica died before answering (%r): retrying once", e)
        if first is not None:
            return JSONResponse(first)
        return StreamingResponse(_sse(gen), media_type="text/event-stream")

    async def _text_target(self, body: dict[str, Any]) -> tuple[Any, dict | None]:
        """The LLM handle (pinned to the adapter) and the adapter spec for a text body."""
        base, spec = await self._resolve(body.get("model"), "text")
        handle = self.llms[base].options(multiplexed_model_id=spec.name if spec else "")
        return handle, spec.model_dump(mode="json") if spec else None

    @app.post("/v1/images/generations")
    async def images(self, request: Request) -> Response:
        return JSONResponse(await self._image(await self._json(request)))

    async def _image(self, body: dict[str, Any]) -> dict[str, Any]:
        from serve_app.image_api import adapter_mix, parse_image_request

        base, spec = await self._resolve(body.get("model") or self._default_image(), "image")
        req = _validated(lambda: parse_image_request(body, self.image_cfgs[base]))
        mix = [
            {"spec": self.catalog.adapter(base, name).model_dump(mode="json"), "weight": weight}
            for name, weight in adapter_mix(req, spec.name if spec else None)
        ]
        mid = ",".join(sorted(m["spec"]["name"] for m in mix))
        handle = self.images[base].options(multiplexed_model_id=mid)
        return await handle.generate.remote(req.job(), mix)

    def _default_image(self) -> str:
        if len(self.image_cfgs) == 1:
            return next(iter(self.image_cfgs))
        raise InvalidRequestError("'model' is required", param="model")

    # ---- without HTTP: batch jobs (serve_app/jobs) ---------------------------------------------

    async def call(self, url: str, body: Any, api_key: str | None = None) -> tuple[int, dict]:
        """Answer one non-streamed OpenAI request as its HTTP route would: same body checks,
        model resolution, handles and error table; returns (status, response or error body)
        and never raises for a bad request. ``stream: true`` is refused (400). ``api_key`` is
        the caller's key, as HTTP's bearer token (not checked yet: the API has no keys).
        """
        try:
            if url not in _CALL_URLS:
                raise InvalidRequestError(
                    f"url {url!r} is not served here; use one of {', '.join(_CALL_URLS)}", "url"
                )
            body = self._body(json.dumps(body).encode())
            if body.get("stream") is True:
                raise InvalidRequestError("'stream' is not supported here", "stream")
            if url == "/v1/images/generations":
                return 200, await self._image(body)
            handle, spec = await self._text_target(body)
            kind = "chat" if url == "/v1/chat/completions" else "completions"
            return 200, await handle.complete.remote(kind, body, spec)
        except Exception as exc:
            return _status_body(exc)

    async def capacity(self) -> dict[str, dict[str, Any]]:
        """Per base: kind, adapter names, and the requests its replicas accept at once
        (``max_ongoing_requests`` x replicas; autoscaling: x max(min_replicas, 1))."""
        catalog = await self._bases()
        out = {}
        for m in [*self.cfg.llm, *self.cfg.image]:
            d = m.deployment
            n = d.num_replicas or max(int((d.autoscaling_config or {}).get("min_replicas", 1)), 1)
            out[m.name] = {
                "kind": catalog.base(m.name).kind.value,
                "adapters": sorted(catalog.adapters(m.name)),
                "slots": d.max_ongoing_requests * n,
            }
        return out

    # ---- admin API -------------------------------------------------------------------------

    @app.get("/v1/adapters")
    async def list_adapters(self, request: Request) -> dict[str, Any]:
        self._admin(request)
        catalog = await self._refresh()
        replicas = await self._replica_states()
        data = []
        for base, b in catalog.bases.items():
            for name, s in b.adapters.items():
                states = {r: st.get(name, "not_loaded") for r, st in replicas.get(base, {}).items()}
                data.append(
                    {**s.model_dump(mode="json"), "id": f"{base}:{name}", "replicas": states}
                )
        return {"object": "list", "data": data}

    @app.post("/v1/adapters", status_code=201)
    async def register_adapter(self, request: Request) -> JSONResponse:
        self._admin(request)
        body = await self._json(request)
        catalog = await self._refresh()
        base = body.get("base")
        if base not in catalog.bases:
            raise unknown_model(str(base), "field 'base'")
        kind = catalog.bases[base].kind
        spec = _validated(
            lambda: AdapterSpec.model_validate({"kind": kind, **body, "version": None})
        )
        if spec.name in catalog.bases[base].adapters:
            raise AdapterExistsError(f"adapter '{base}:{spec.name}' is already registered")
        deployment = self.llms.get(base) or self.images[base]
        checked = await deployment.validate_adapter.remote(spec.model_dump(mode="json"))
        stored: AdapterSpec = await self.registry.add.remote(checked)  # atomic: one 201 per name
        await self._refresh(force=True)
        body = {**stored.model_dump(mode="json"), "id": f"{base}:{spec.name}"}
        return JSONResponse(body, status_code=201)

    @app.delete("/v1/adapters/{name}")
    async def delete_adapter(self, name: str, request: Request) -> dict[str, Any]:
        self._admin(request)
        base, spec = await self._admin_target(name)
        await self.registry.remove.remote(base, spec.name)
        await self._refresh(force=True)
        return {"id": f"{base}:{spec.name}", "object": "adapter", "deleted": True}

    @app.post("/v1/adapters/{name}/pin")
    async def pin_adapter(self, name: str, request: Request) -> dict[str, Any]:
        return await self._set_pin(name, request, True)

    @app.post("/v1/adapters/{name}/unpin")
    async def unpin_adapter(self, name: str, request: Request) -> dict[str, Any]:
        return await self._set_pin(name, request, False)

    async def _set_pin(self, name: str, request: Request, pinned: bool) -> dict[str, Any]:
        self._admin(request)
        base, spec = await self._admin_target(name)
        await self.registry.set_pinned.remote(base, spec.name, pinned)
        await self._refresh(force=True)
        return {"id": f"{base}:{spec.name}", "object": "adapter", "pinned": pinned}

    async def _admin_target(self, name: str) -> tuple[str, AdapterSpec]:
        mid = await self._lookup(name)
        if mid.adapter is None:
            raise InvalidRequestError(f"'{name}' is a base model, not an adapter")
        return mid.base, self.catalog.adapter(mid.base, mid.adapter)

    async def _replica_states(self) -> dict[str, dict[str, dict[str, str]]]:
        """Per base, per replica: adapter states, from one replica each (best effort)."""
        out: dict[str, dict[str, dict[str, str]]] = {}
        for base, handle in {**self.llms, **self.images}.items():
            try:
                snap = await asyncio.wait_for(handle.adapter_snapshot.remote(), 5)
            except Exception:  # a busy or restarting replica must not break the listing
                continue
            out[base] = {snap.get("replica", "?"): snap.get("states", {})}
        return out

    def _admin(self, request: Request) -> None:
        token = self.cfg.admin_token
        given = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
        if not token or not hmac.compare_digest(given.encode(), token.encode()):
            raise UnauthorizedError(
                "admin API: missing or wrong bearer token"
                if token
                else "admin API is disabled: set admin_token (or LORASERVE_ADMIN_TOKEN)"
            )

    async def _json(self, request: Request) -> dict[str, Any]:
        return self._body(await request.body())

    def _body(self, raw: bytes) -> dict[str, Any]:
        if len(raw) > self.cfg.max_request_bytes:
            raise BodyTooLargeError(
                f"request body is {len(raw)} bytes; the limit is {self.cfg.max_request_bytes}"
            )
        try:
            body = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise InvalidRequestError(f"request body is not valid JSON: {e}") from None
        if not isinstance(body, dict):
            raise InvalidRequestError("request body must be a JSON object")
        return body
