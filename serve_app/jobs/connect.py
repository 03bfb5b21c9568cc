"""Reach the running app from a job (or a shell): connect to the Ray cluster, find the Serve
application, and yield its ingress handle. With ``config`` and no app running, start the app
(and, with no cluster, a local Ray) for the caller's lifetime, and remove what was started after.
"""

import contextlib
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

logger = logging.getLogger("serve_app.jobs.connect")
READY_TIMEOUT_S = 600.0


def _serve_entry(config: Path, app_name: str) -> dict[str, Any]:
    """The application's entry in a Serve config file, or a bare config tree as ``args``."""
    data = yaml.safe_load(config.read_text())
    if isinstance(data, dict) and "applications" in data:
        for entry in data["applications"]:
            if entry.get("name", app_name) == app_name:
                return entry
        return data["applications"][0]
    return {"args": data}


def _app_status(app_name: str) -> str | None:
    from ray import serve

    try:
        app = serve.status().applications.get(app_name)
    except Exception:  # Serve not started on this cluster
        return None
    return (
        None
        if app is None
        else str(app.status.value if hasattr(app.status, "value") else app.status)
    )


def _wait_running(app_name: str) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while (status := _app_status(app_name)) != "RUNNING":
        if status in (None, "DEPLOY_FAILED", "UNHEALTHY", "DELETING"):
            raise RuntimeError(f"Serve application '{app_name}' is {status or 'not deployed'}")
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"Serve application '{app_name}' not running after {READY_TIMEOUT_S}s"
            )
        time.sleep(1)


@contextlib.contextmanager
def connected_app(app_name: str, config: Path | None = None) -> Iterator[Any]:
    """Yield the ingress ``DeploymentHandle`` of Serve application ``app_name``."""
    import ray
    from ray import serve

    entry = _serve_entry(config, app_name) if config is not None else None
    env_vars = ((entry or {}).get("runtime_env") or {}).get("env_vars") or {}
    runtime_env = {"env_vars": env_vars} if env_vars else None
    own_ray = False
    try:
        ray.init(address="auto", runtime_env=runtime_env, log_to_driver=False)
    except ConnectionError:
        if entry is None:
            raise SystemExit(
                "no Ray cluster found: start the app (`make run`) or pass --config"
            ) from None
        ray.init(runtime_env=runtime_env, log_to_driver=False)
        own_ray = True
    own_serve = own_app = False
    try:
        status = _app_status(app_name)
        if status is None:
            if entry is None:
                raise SystemExit(
                    f"Serve application '{app_name}' is not running: start it (`make run`) or "
                    "pass --config"
                )
            from serve_app.app import build_app

            own_serve = _start_serve_if_absent()
            logger.info("starting application '%s' from %s for this job", app_name, config)
            serve.run(build_app(entry.get("args") or {}), name=app_name, route_prefix=None)
            own_app = True
        _wait_running(app_name)
        yield serve.get_app_handle(app_name)
    finally:
        if own_app:
            logger.info("removing application '%s' (started for this job)", app_name)
            serve.delete(app_name)
        if own_serve:
            serve.shutdown()
        if own_ray:
            ray.shutdown()


def _start_serve_if_absent() -> bool:
    """Start Serve without HTTP proxies (the job needs none) unless it runs; True if started."""
    from ray import serve
    from ray.serve.config import ProxyLocation

    try:
        serve.status()
        if _controller_running():
            return False
    except Exception:
        pass
    serve.start(proxy_location=ProxyLocation.Disabled)
    return True


def _controller_running() -> bool:
    import ray
    from ray.serve._private.constants import SERVE_CONTROLLER_NAME, SERVE_NAMESPACE

    try:
        ray.get_actor(SERVE_CONTROLLER_NAME, namespace=SERVE_NAMESPACE)
        return True
    except ValueError:
        return False
