"""A local S3 API endpoint for tests: moto's server mode, in its own process group."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

MOTO = str(Path(sys.executable).with_name("moto_server"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def moto_server():
    """Yields the endpoint URL (http://127.0.0.1:PORT); the server is stopped afterwards."""
    port = free_port()
    proc = subprocess.Popen([MOTO, "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("moto server did not start") from None
                time.sleep(0.2)
        yield f"http://127.0.0.1:{port}"
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


def create_bucket(endpoint: str, bucket: str, key: str, secret: str, region: str = "eu-west-2"):
    import boto3

    client = boto3.client("s3", endpoint_url=endpoint, region_name=region, aws_access_key_id=key,
                          aws_secret_access_key=secret)
    client.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": region})
    return client
