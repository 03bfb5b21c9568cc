"""The pieces a tool or a simulator imports stay light: no Ray, no torch (checked in a fresh
interpreter, since this test process has imported Ray already)."""

import subprocess
import sys

import pytest


@pytest.mark.parametrize(
    "modules",
    [
        "serve_app.routing.policy, serve_app.routing.ledger, serve_app.routing.stats",
        "adapters, adapters.pool, adapters.sources, adapters.validate, adapters.disk_cache",
        "serve_app, serve_app.config, serve_app.errors, serve_app.image_api",
        "serve_app.jobs.batch, serve_app.jobs.batch_file, serve_app.jobs.progress",
    ],
)
def test_light_pieces_import_neither_ray_nor_torch(modules):
    code = f"import sys, {modules}; print(sorted({{'ray', 'torch'}} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
