"""The HTTP front door (FastAPI on Ray Serve): parse, validate, resolve ``model`` to a deployment
and adapter, call its handle, stream back. The ONLY module that imports FastAPI; every
error becomes an HTTP response here, through ``serve_app.errors.to_http``.
"""

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import ValidationError
from ray import serve
from starlette.background import BackgroundTask
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from adapters import ids
from adapters.catalog import Catalog
from adapters.errors import AdapterExistsError, UnknownModelError, unknown_model
from adapters.spec import AdapterSpec
from serve_app import auth, errors, limits
from serve_app.config import AppConfig
from serve_app.deployments.logs import to_replica_log
from serve_app.openapi_bodies import BODIES
from serve_app.request_errors import (
    BodyTimeoutError,
    BodyTooLargeError,
    InvalidRequestError,
    MisdirectedRequestError,
    ReplicaUnavailableError,
    UnsupportedMediaTypeError,
    invalid_field,
)

logger = logging.getLogger("serve_app.ingress")
CATALOG_REFRESH_S = 0.5
app = FastAPI(title="loraserve", description="OpenAI-compatible multi-LoRA serving on Ray Serve")


@app.exception_handler(Exception)
async def _any_error(request: Request, exc: Exception) -> JSONResponse:
    admin = request.url.path.removeprefix(request.scope.get("root_path", "")).startswith(
        "/v1/adapters"
    )
    return _error(exc, admin)


@app.exception_handler(StarletteHTTPException)
async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
    """Starlette's own 404 (no such route) / 405 (wrong method) in the OpenAI error shape."""
    kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
    body = errors.error_body(str(exc.detail), kind, exc.status_code)
    return JSONResponse(body, status_code=exc.status_code, headers=exc.headers)


def _error(exc: BaseException, admin: bool = False) -> JSONResponse:
    status, body = _status_body(exc, admin)
    return JSONResponse(body, status_code=status, headers=errors.headers(status, _unwrap(exc)))


def _status_body(exc: BaseException, admin: bool = False) -> tuple[int, dict]:
    exc = _unwrap(exc)
    shown = exc if admin else errors.for_caller(exc)
    if shown is not exc:
        logger.warning("adapter failed: %s", exc)  # the detail stays with the operator
    status, body = errors.to_http(shown)
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


_LOOPBACK = {"localhost", "127.0.0.1", "::1", "[::1]"}
_DOCS = {"/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json"}
# NOTE: set through _configure_guard by Ingress.__init__ (one Ingress per replica process); read
# by _Guard, which runs before routing, as FastAPI's own /docs routes have no access to the
# deployment instance. The class is pickled by value, so its methods see a copy of this module's
# globals: only a module-level function (pickled by reference) reaches the real dict.
_guard_cfg: dict[str, Any] = {"allowed_hosts": None, "docs": True}


def _configure_guard(allowed_hosts: list[str] | None, docs: bool) -> None:
    _guard_cfg.update(allowed_hosts=allowed_hosts, docs=docs)


class _Guard:
    """ASGI middleware: the Host allow-list (against DNS rebinding; 421) and the /docs switch."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            refusal = _refusal(scope)
            if refusal is not None:
                status, body = errors.to_http(refusal)
                await JSONResponse(body, status_code=status)(scope, receive, send)
                return
        await self.app(scope, receive, send)


def _refusal(scope: dict) -> Exception | None:
    path = scope.get("path", "").removeprefix(scope.get("root_path", "")) or "/"
    if not _guard_cfg["docs"] and path in _DOCS:
        return UnknownModelError(f"no route {path}: the API docs are switched off")
    headers = dict(scope.get("headers") or [])
    host = _host_name(headers.get(b"host", b"").decode("latin-1"))
    allowed = _guard_cfg["allowed_hosts"]
    if allowed is None:  # default: strict only when the server listens on loopback
        server = (scope.get("server") or ("", 0))[0]
        allowed = _LOOPBACK if server in _LOOPBACK or server.startswith("127.") else {"*"}
    if "*" not in allowed and host not in allowed:
        return MisdirectedRequestError(
            f"this server does not answer for host {host!r} (see allowed_hosts)"
        )
    return None


def _host_name(host: str) -> str:
    """The Host header without its port, lower-cased ('[::1]:8000' -> '::1')."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


app.add_middleware(_Guard)

# Where the engine schedules by priority (vLLM, lower first), batch jobs' text requests run at
# least at this one, online (HTTP) ones at the caller's own (default 0): a batch's queue in the
# engine never delays an online request beyond the batch already running.
BATCH_PRIORITY = 1
# What ``Ingress.call`` serves: the non-streamed OpenAI routes, by URL.
_CALL_URLS = ("/v1/completions", "/v1/chat/completions", "/v1/images/generations")


# NOTE: helpers are defined before the class: @serve.ingress serialises the app (and what its
# routes reference) when the class is decorated.


def _card(model_id: str, parent: str | None) -> dict[str, Any]:
    """What any caller may learn about a model: no server paths or sources (admin API only)."""
    return {
        "id": model_id,
        "object": "model",
        "created": int(time.time()),
        "owned_by": "loraserve",
        "parent": parent,
    }


def _validated(build: Any) -> Any:
    try:
        return build()
    except ValidationError as e:
        raise invalid_field(e) from None


async def _sse(gen: AsyncIterator[str], release: Any = None) -> AsyncIterator[str]:
    try:
        async for chunk in gen:
            yield chunk
    except Exception as exc:  # after the status line: report in-band, as OpenAI streams do
        status, body = errors.to_http(errors.for_caller(_unwrap(exc)))
        logger.error("stream failed: %r", exc)
        yield f"data: {json.dumps(body)}\n\n"
    finally:
        if release is not None:
            release()


async def _read_body(request: Request, max_bytes: int, timeout_s: float) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.strip().isdigit():
            raise InvalidRequestError(f"Content-Length {declared!r} is not a number")
        if int(declared) > max_bytes:
            raise BodyTooLargeError(
                f"request body is {int(declared)} bytes; the limit is {max_bytes}"
            )
    chunks: list[bytes] = []
    size = 0

    async def read() -> None:
        nonlocal size
        async for chunk in request.stream():
            size += len(chunk)
            if size > max_bytes:
                raise BodyTooLargeError(f"request body is over {max_bytes} bytes, the limit")
            chunks.append(chunk)

    try:
        await asyncio.wait_for(read(), timeout_s)
    except ClientDisconnect:  # nobody is left to answer; not a server error either
        raise InvalidRequestError("the client left before sending the whole body") from None
    except TimeoutError:
        raise BodyTimeoutError(f"the request body did not arrive within {timeout_s:g} s") from None
    return b"".join(chunks)


def _resolve_for(caller: auth.Caller, model: str, catalog: Catalog) -> ids.ModelId:
    """``ids.resolve`` over what ``caller`` may see; a visible base the caller may not use
    itself (it holds only some of its adapters) is answered as unknown, like a missing one."""
    mid = ids.resolve(model, caller.visible(catalog.names()))
    if mid.adapter is None and not caller.may_use(mid.base):
        raise unknown_model(model)
    return mid


class _Release:
    """Releases a caller's in-flight slot once, when a stream ends (or is abandoned)."""

    def __init__(self, in_flight: limits.InFlight, key: str | None) -> None:
        self.in_flight, self.key, self.done = in_flight, key, False

    def __call__(self) -> None:
        if not self.done:
            self.done = True
            self.in_flight.release(self.key)


# NOTE: generous max_ongoing_requests: a request waiting for its body costs the ingress almost
# nothing, and 1,000 slow clients must not take every slot (body_timeout_s and the per-key
# limit bound what callers hold).
@serve.deployment(ray_actor_options={"num_cpus": 0.1}, max_ongoing_requests=5000)
@serve.ingress(app)
class Ingress:
    def __init__(self, cfg: dict, llms: dict, images: dict, registry: Any) -> None:
        to_replica_log()
        self.cfg = AppConfig.model_validate(cfg)
        self.llms, self.images, self.registry = llms, images, registry
        self.image_cfgs = {c.name: c for c in self.cfg.image}
        self._by_priority = {m.name for m in self.cfg.llm if m.schedules_by_priority}
        self.in_flight = limits.InFlight(
            self.cfg.limits.max_concurrent_per_key, self.cfg.limits.retry_after_s
        )
        _configure_guard(self.cfg.allowed_hosts, self.cfg.docs)
        if not self.cfg.api_keys:
            logger.warning(
                "no api_keys configured: the server is OPEN, every caller may use every model"
            )
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

    async def _lookup(self, model: str, caller: auth.Caller = auth.OPEN) -> ids.ModelId:
        """Resolve ``model`` among what ``caller`` may use. NOTE: a model outside the caller's
        scope takes the same path as one that does not exist (refresh once, then 404)."""
        try:
            return _resolve_for(caller, model, await self._bases())
        except UnknownModelError:
            return _resolve_for(caller, model, await self._refresh())

    async def _resolve(
        self, model: Any, kind: str, caller: auth.Caller = auth.OPEN
    ) -> tuple[str, AdapterSpec | None]:
        if not isinstance(model, str):
            raise InvalidRequestError("'model' must be a string", param="model")
        mid = await self._lookup(model, caller)
        if self.catalog.base(mid.base).kind != kind:
            route = "/v1/images/generations" if kind == "text" else "/v1/completions"
            raise InvalidRequestError(
                f"model '{mid.base}' is not a {kind} model; use {route}", param="model"
            )
        return mid.base, self.catalog.adapter(mid.base, mid.adapter) if mid.adapter else None

    # ---- OpenAI API ------------------------------------------------------------------------

    @app.get("/playground", include_in_schema=False)
    async def playground(self) -> Response:
        """The playground page (serve_app/static/playground.html): chat, compare, images."""
        from importlib.resources import files

        page = (files("serve_app") / "static" / "playground.html").read_text(encoding="utf-8")
        return Response(page, media_type="text/html")

    @app.get("/v1/models", openapi_extra=BODIES["models"])
    async def models(self, request: Request) -> dict[str, Any]:
        caller = self._caller(request)
        catalog = await self._bases()
        data = []
        for base, names in caller.visible(catalog.names()).items():
            if caller.may_use(base):
                data.append(_card(base, None))
            data += [_card(f"{base}:{n}", base) for n in names]
        return {"object": "list", "data": data}

    @app.post("/v1/completions", openapi_extra=BODIES["completions"])
    async def completions(self, request: Request) -> Response:
        return await self._text("completions", request)

    @app.post("/v1/chat/completions", openapi_extra=BODIES["chat"])
    async def chat(self, request: Request) -> Response:
        return await self._text("chat", request)

    async def _text(self, kind: str, request: Request) -> Response:
        caller = self._caller(request)
        self.in_flight.acquire(caller.name)
        streaming = False
        try:
            body = await self._json(request)
            handle, spec_dict = await self._text_target(kind, body, caller)
            for attempt in (1, 2):  # NOTE: once more on another replica if ours died first
                try:
                    if body.get("stream") is not True:
                        return JSONResponse(await handle.complete.remote(kind, body, spec_dict))
                    gen = handle.options(stream=True).generate.remote(kind, body, spec_dict)
                    first = await gen.__anext__()  # the deployment's error, before any byte
                    break
                except Exception as e:
                    if attempt == 2 or not _replica_died(e):
                        raise
                    logger.warning("replica died before answering (%r): retrying once", e)
            if first is not None:
                return JSONResponse(first)
            streaming = True
            release = _Release(self.in_flight, caller.name)
            return StreamingResponse(
                _sse(gen, release),
                media_type="text/event-stream",
                background=BackgroundTask(release),
            )
        finally:
            if not streaming:
                self.in_flight.release(caller.name)

    async def _text_target(
        self, kind: str, body: dict[str, Any], caller: auth.Caller, priority: int = 0
    ) -> tuple[Any, dict | None]:
        """The LLM handle (pinned to the adapter) and the adapter spec for a text body, after
        the caller's scope and the server's limits. ``priority``: the least the request runs
        at (lower first) where the base's engine schedules by priority (batch jobs: 1)."""
        base, spec = await self._resolve(body.get("model"), "text", caller)
        limits.check_text_request(kind, body, self.cfg.limits)
        given = body.get("priority", 0)
        if priority and base in self._by_priority and type(given) is int:
            body["priority"] = max(given, priority)
        handle = self.llms[base].options(multiplexed_model_id=spec.name if spec else "")
        return handle, spec.model_dump(mode="json") if spec else None

    @app.post("/v1/images/generations", openapi_extra=BODIES["images"])
    async def images(self, request: Request) -> Response:
        caller = self._caller(request)
        with self.in_flight.hold(caller.name):
            return JSONResponse(await self._image(await self._json(request), caller))

    async def _image(self, body: dict[str, Any], caller: auth.Caller) -> dict[str, Any]:
        from serve_app.image_api import adapter_mix, parse_image_request

        base, spec = await self._resolve(
            body.get("model") or self._default_image(), "image", caller
        )
        req = _validated(lambda: parse_image_request(body, self.image_cfgs[base]))
        mix = []
        for name, weight in adapter_mix(req, spec.name if spec else None):
            if not caller.may_use(base, name):  # answered as for an adapter that does not exist
                raise unknown_model(f"{base}:{name}")
            spec_json = self.catalog.adapter(base, name).model_dump(mode="json")
            mix.append({"spec": spec_json, "weight": weight})
        mid = ",".join(sorted(m["spec"]["name"] for m in mix))
        handle = self.images[base].options(multiplexed_model_id=mid)
        return await handle.generate.remote(req.job(), mix)

    def _caller(self, request: Request) -> auth.Caller:
        return self.authorize(auth.bearer(request.headers.get("authorization")))

    def authorize(self, api_key: str | None) -> auth.Caller:
        """The caller holding ``api_key`` (UnauthorizedError if keys are configured and it is
        none of them); every way in (HTTP, batch jobs) checks keys here. Pass the caller to
        ``_resolve`` so out-of-scope models look like missing ones."""
        return auth.authorize(self.cfg.api_keys, api_key)

    def _default_image(self) -> str:
        if len(self.image_cfgs) == 1:
            return next(iter(self.image_cfgs))
        raise InvalidRequestError("'model' is required", param="model")

    # ---- without HTTP: batch jobs (serve_app/jobs) ---------------------------------------------

    async def call(self, url: str, body: Any, api_key: str | None = None) -> tuple[int, dict]:
        """Answer one non-streamed OpenAI request as its HTTP route would: same body checks,
        model resolution, handles and error table; returns (status, response or error body)
        and never raises for a bad request. ``stream: true`` is refused (400). ``api_key`` is
        the caller's key, as HTTP's bearer token: checked and scoped the same way.
        """
        try:
            caller = self.authorize(api_key)
            if url not in _CALL_URLS:
                raise InvalidRequestError(
                    f"url {url!r} is not served here; use one of {', '.join(_CALL_URLS)}", "url"
                )
            body = self._body(json.dumps(body).encode())
            if body.get("stream") is True:
                raise InvalidRequestError("'stream' is not supported here", "stream")
            if url == "/v1/images/generations":
                return 200, await self._image(body, caller)
            kind = "chat" if url == "/v1/chat/completions" else "completions"
            handle, spec = await self._text_target(kind, body, caller, BATCH_PRIORITY)
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

    @app.get("/v1/adapters", openapi_extra=BODIES["admin"])
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

    @app.post("/v1/adapters", status_code=201, openapi_extra=BODIES["register"])
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

    @app.delete("/v1/adapters/{name}", openapi_extra=BODIES["admin"])
    async def delete_adapter(self, name: str, request: Request) -> dict[str, Any]:
        self._admin(request)
        base, spec = await self._admin_target(name)
        await self.registry.remove.remote(base, spec.name)
        await self._refresh(force=True)
        return {"id": f"{base}:{spec.name}", "object": "adapter", "deleted": True}

    @app.post("/v1/adapters/{name}/pin", openapi_extra=BODIES["admin"])
    async def pin_adapter(self, name: str, request: Request) -> dict[str, Any]:
        return await self._set_pin(name, request, True)

    @app.post("/v1/adapters/{name}/unpin", openapi_extra=BODIES["admin"])
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
        presented = auth.bearer(request.headers.get("authorization"))
        auth.check_admin(self.cfg.admin_token_sha256, presented)

    async def _json(self, request: Request) -> dict[str, Any]:
        """The request's JSON object: JSON content type (415), size checked from Content-Length
        and again while the body streams in (413), within the body timeout (408), parsed, and
        no deeper than the depth limit (400)."""
        media = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
        if media != "application/json" and not (
            media.startswith("application/") and media.endswith("+json")
        ):
            raise UnsupportedMediaTypeError(
                f"Content-Type must be application/json, not {media or 'missing'!r}"
            )
        raw = await _read_body(request, self.cfg.max_request_bytes, self.cfg.limits.body_timeout_s)
        return self._body(raw)

    def _body(self, raw: bytes) -> dict[str, Any]:
        """A body's JSON object: size (413), JSON (400), an object, within the depth limit."""
        if len(raw) > self.cfg.max_request_bytes:
            raise BodyTooLargeError(
                f"request body is {len(raw)} bytes; the limit is {self.cfg.max_request_bytes}"
            )
        try:
            body = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise InvalidRequestError(f"request body is not valid JSON: {e}") from None
        except RecursionError:
            raise InvalidRequestError(
                f"request JSON is nested deeper than {self.cfg.limits.max_json_depth} levels"
            ) from None
        if not isinstance(body, dict):
            raise InvalidRequestError("request body must be a JSON object")
        limits.check_json(body, self.cfg.limits.max_json_depth)
        return body
