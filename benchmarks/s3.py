"""A local S3 server holding the demo adapters, for the peers that load LoRAs only from cloud
storage (Ray Data's vLLM stage, Ray Serve LLM)."""

import contextlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path

from benchmarks.ports import free_port


@contextlib.contextmanager
def s3_adapters(adapters: dict[str, str]) -> Iterator[str]:
    """A local S3 server (moto, as the tests use) holding each adapter under s3://loras/<name>/;
    yields the root URI. Its endpoint and dummy keys go into the environment, which Ray's
    workers inherit (Ray's own boto3 download reads ``AWS_ENDPOINT_URL``)."""
    import boto3
    from moto.server import ThreadedMotoServer

    port = free_port()
    os.environ.update({"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
                       "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_DEFAULT_REGION": "us-east-1"})  # fmt: skip
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one access-log line per S3 part
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        client = boto3.client("s3")
        client.create_bucket(Bucket="loras")
        for name, path in adapters.items():
            for f in Path(path).iterdir():
                client.upload_file(str(f), "loras", f"{name}/{f.name}")
        yield "s3://loras"
    finally:
        server.stop()
