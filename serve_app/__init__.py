"""loraserve: one base model, many LoRA adapters, served on Ray Serve.

The front door: ``build_app(cfg)`` returns a Serve application; the config classes describe it.
"""

from serve_app.app import build_app
from serve_app.config import AppConfig, ImageConfig, LLMConfig, SourceOptions

__all__ = ["AppConfig", "ImageConfig", "LLMConfig", "SourceOptions", "build_app"]
