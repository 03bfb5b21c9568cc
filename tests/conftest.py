"""Markers come from the folder: tests/unit, tests/integration, tests/e2e, tests/cluster."""

import os
import tempfile

import pytest

from serve_app import env

# The suite runs under the same Ray Serve settings as `make run` (serve_app.env.RAY_DEFAULTS).
env.apply_ray_defaults(driver=True)

# Apps built by tests keep their adapter catalogue in a fresh directory per test session (the
# default, ~/.local/state/loraserve, would carry registrations from one run into the next).
os.environ.setdefault("LORASERVE_STATE_DIR", tempfile.mkdtemp(prefix="loraserve-test-state-"))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        for layer in ("unit", "integration", "e2e", "cluster"):
            if f"/tests/{layer}/" in str(item.fspath):
                item.add_marker(getattr(pytest.mark, layer))
