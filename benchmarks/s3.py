"""A local S3 server holding adapters, for the peers that load LoRAs only from cloud storage (Ray
Data's vLLM stage, Ray Serve LLM) and for production-like adapter fetches (routing_real --s3)."""

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from benchmarks.ports import free_port


@contextlib.contextmanager
def s3_adapters(adapters: dict[str, str]) -> Iterator[str]:
    """A local S3 server (moto, as the tests use) holding each adapter under s3://loras/<name>/;
    yields the root URI. Its endpoint and dummy keys go into the environment, which Ray's
    workers inherit (Ray's own boto3 download reads ``AWS_ENDPOINT_URL``).

    The server runs in its own process: in this one it would share the GIL with the benchmark's
    clients, and every large download it served would stall their event loop (latency the
    servers under test did not cause)."""
    import boto3

    port = free_port()
    os.environ.update({"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
                       "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_DEFAULT_REGION": "us-east-1"})  # fmt: skip
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,  # one access-log line per S3 request
        stderr=subprocess.DEVNULL,
    )
    try:
        client = boto3.client("s3")
        deadline = time.monotonic() + 60
        while True:
            try:
                client.create_bucket(Bucket="loras")
                break
            except Exception:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        for name, path in adapters.items():
            for f in Path(path).iterdir():
                client.upload_file(str(f), "loras", f"{name}/{f.name}")
        yield "s3://loras"
    finally:
        server.terminate()
        server.wait(timeout=30)
