"""A real S3-compatible server (moto, in server mode on 127.0.0.1) for tests of S3 sources."""

import contextlib
from collections.abc import Iterator

import pytest

from tests.ports import free_port


@contextlib.contextmanager
def s3_server() -> Iterator[str]:
    """Its endpoint URL while it runs, with test credentials in this process's environment (set
    before a Ray cluster starts, so that its replicas inherit them)."""
    from moto.server import ThreadedMotoServer

    creds = {
        "AWS_ACCESS_KEY_ID": "t",
        "AWS_SECRET_ACCESS_KEY": "t",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    with pytest.MonkeyPatch.context() as mp:
        for k, v in creds.items():
            mp.setenv(k, v)
        port = free_port()
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
        server.start()
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            server.stop()
