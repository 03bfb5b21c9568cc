"""Build the Serve application from the config tree: the adapter registry, one deployment per base
model (text or image), and the HTTP ingress. ``serve run configs/x.yaml`` (import path
``serve_app.app:build_app`` with the tree as ``args``) and ``build_app(cfg)`` are the same thing.
"""

from pathlib import Path
from typing import Any

from ray.serve import Application

from adapters.spec import AdapterKind
from serve_app.config import AppConfig, DeploymentOptions


def build_app(args: AppConfig | dict[str, Any]) -> Application:
    from serve_app.deployments.llm import LLMDeployment
    from serve_app.deployments.registry import AdapterRegistry
    from serve_app.ingress import Ingress

    cfg = _absolute(args if isinstance(args, AppConfig) else AppConfig.model_validate(args))
    bases = {
        m.name: {
            "kind": kind.value,
            "root": m.model,
            "adapters": [
                a.model_copy(update={"base": m.name, "kind": kind}).model_dump(mode="json")
                for a in m.adapters
            ],
        }
        for kind, models in ((AdapterKind.TEXT, cfg.llm), (AdapterKind.IMAGE, cfg.image))
        for m in models
    }
    registry = AdapterRegistry.bind(bases, cfg.state_dir)
    sources = cfg.sources.model_dump(mode="json")
    llms = {
        m.name: LLMDeployment.options(
            name=f"llm:{m.name}", **_options(m.deployment, m.max_cpu_loras)
        ).bind(m.model_dump(mode="json"), sources, registry)
        for m in cfg.llm
    }
    if cfg.image:
        from serve_app.deployments.image import ImageDeployment
    images = {
        m.name: ImageDeployment.options(
            name=f"image:{m.name}", **_options(m.deployment, m.max_adapters)
        ).bind(m.model_dump(mode="json"), sources, registry)
        for m in cfg.image
    }
    return Ingress.bind(cfg.model_dump(mode="json"), llms, images, registry)


def _options(d: DeploymentOptions, slots: int = 0) -> dict[str, Any]:
    """Serve options for a deployment whose replicas hold ``slots`` adapters each (0: unknown)."""
    opts: dict[str, Any] = {
        "max_ongoing_requests": d.max_ongoing_requests,
        "max_queued_requests": d.max_queued_requests,
        "ray_actor_options": d.ray_actor_options,
    }
    if d.autoscaling_config is not None:
        opts["autoscaling_config"] = d.autoscaling_config
        if d.autoscaling_policy == "adapter_aware":
            from serve_app.autoscaling import POLICY_PATH

            opts["autoscaling_config"] = {
                **d.autoscaling_config,
                "policy": {"policy_function": POLICY_PATH},
            }
    else:
        opts["num_replicas"] = d.num_replicas
    if d.router == "adapter_aware":
        from serve_app.routing.router import request_router_config

        opts["request_router_config"] = request_router_config(d.router_knobs, slots=slots)
    return opts


def _absolute(cfg: AppConfig) -> AppConfig:
    """Resolve relative local paths against the current directory, where the user ran the command
    (replica processes may start elsewhere)."""

    def fix(p: str) -> str:
        return str(Path(p).resolve()) if p.startswith(".") else p

    def fix_source(s: str) -> str:
        return fix(s) if s.split("://", 1)[0] not in ("hf", "s3", "file") else s

    data = cfg.model_dump(mode="json")
    for m in [*data["llm"], *data["image"]]:
        m["model"] = fix(m["model"])
        if m.get("tokenizer"):
            m["tokenizer"] = fix(m["tokenizer"])
        for a in m["adapters"]:
            a["source"] = fix_source(a["source"])
    data["sources"]["allowed_roots"] = [fix(r) for r in data["sources"]["allowed_roots"]]
    data["state_dir"] = fix(data["state_dir"])
    return AppConfig.model_validate(data)
