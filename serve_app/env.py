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


def api_keys() -> list[dict]:
    """API keys as JSON, ``[{"name", "key_sha256", "models": [...]}]``; unset: none (open)."""
    import json

    raw = get("API_KEYS")
    return json.loads(raw) if raw else []


def demo_dir() -> str:
    """Where ``python -m serve_app.demo`` writes the demo assets."""
    return get("DEMO_DIR", ".demo")


def state_dir() -> str:
    """Where the registry keeps the adapter catalogue (``state_dir`` in the config)."""
    return get("STATE_DIR", "~/.local/state/loraserve")


def cache_dir() -> str:
    """Downloads kept across demo rebuilds (e.g. the SmolLM2 wheel); default ~/.cache/loraserve."""
    return get("CACHE_DIR", os.path.join(os.path.expanduser("~"), ".cache", "loraserve"))
