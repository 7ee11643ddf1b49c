"""A local S3-compatible server for tests: moto's server mode on 127.0.0.1, a bucket, and the environment
pyarrow's S3FileSystem (and boto3) read: endpoint, dummy keys, region."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass


@dataclass
class S3Server:
    endpoint: str
    bucket: str
    env: dict

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, region_name=self.env["AWS_DEFAULT_REGION"])

    def keys(self, prefix: str = "") -> list[str]:
        """Every object key in the bucket under `prefix` (pyarrow's folder markers end with '/')."""
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix)
        return sorted(o["Key"] for page in pages for o in page.get("Contents", []))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for(port: int, server: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"moto's server exited with {server.returncode}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    server.kill()
    raise TimeoutError(f"moto's server did not listen on 127.0.0.1:{port} within {timeout}s")


@contextlib.contextmanager
def moto_s3(bucket: str = "r1v-test") -> Iterator[S3Server]:
    """A moto S3 server on a free port of 127.0.0.1 with `bucket` created; the AWS_* variables set for the
    duration (child processes started meanwhile, such as a local Ray's workers, inherit them)."""
    # moto's server in its own process: imported here, it brings Flask's context proxies into sys.modules,
    # and vLLM's kernel registration (which walks sys.modules) trips over them in this process.
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    _wait_for(port, server)
    env = {
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",  # no metadata-service probe for credentials
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        s3 = S3Server(env["AWS_ENDPOINT_URL"], bucket, env)
        s3.client().create_bucket(Bucket=bucket)
        yield s3
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        server.terminate()
        server.wait(timeout=30)
