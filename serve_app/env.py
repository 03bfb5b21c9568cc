"""Every environment variable the project reads, in one place, all with the ``LORASERVE_`` prefix.

(Libraries read their own: HF_TOKEN / HF_HUB_OFFLINE for huggingface_hub, AWS_* for S3.)
"""

import os

PREFIX = "LORASERVE_"


def get(name: str, default: str | None = None) -> str | None:
    return os.environ.get(PREFIX + name, default)


def admin_token() -> str | None:
    """Token for the admin API (``/v1/adapters`` writes); unset means the admin API is closed."""
    return get("ADMIN_TOKEN")


def demo_dir() -> str:
    """Where ``python -m serve_app.demo`` writes the demo assets."""
    return get("DEMO_DIR", ".demo")


def state_dir() -> str:
    """Where the registry keeps the adapter catalogue (``state_dir`` in the config)."""
    return get("STATE_DIR", "~/.local/state/loraserve")
