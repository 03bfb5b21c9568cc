"""loraserve: one base model, many LoRA adapters, served on Ray Serve.

The front door: ``build_app(cfg)`` returns a Serve application; the config classes describe it.
NOTE: the names load on first use, so importing one piece (``serve_app.routing.policy``, the
config) pulls in neither Ray nor torch.
"""

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from serve_app.app import build_app
    from serve_app.config import AppConfig, ImageConfig, LLMConfig, SourceOptions

__all__ = ["AppConfig", "ImageConfig", "LLMConfig", "SourceOptions", "build_app"]


def __getattr__(name: str) -> Any:
    if name == "build_app":
        from serve_app.app import build_app

        return build_app
    if name in __all__:
        from serve_app import config

        return getattr(config, name)
    raise AttributeError(f"module 'serve_app' has no attribute {name!r}")
