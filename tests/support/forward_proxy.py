"""A real forward proxy (Debian's tinyproxy, started by scripts/forward-proxy) for the S3 tests that go through
HTTP_PROXY and HTTPS_PROXY: one per test session, stopped by PID."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.s3server import free_port

SCRIPT = Path(__file__).parents[2] / "scripts" / "forward-proxy"


@dataclass
class ForwardProxy:
    url: str
    log: Path
    process: subprocess.Popen

    def lines(self, word: str) -> int:
        """How many requests the proxy logged whose line holds ``word`` (``GET http://``, ``CONNECT``)."""
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return sum(1 for line in text.splitlines() if "]: Request (file descriptor" in line and word in line)


@pytest.fixture(scope="session")
def forward_proxy(tmp_path_factory) -> Iterator[ForwardProxy]:
    if shutil.which("tinyproxy") is None and os.geteuid() != 0:
        pytest.skip("tinyproxy is missing and installing it needs root: apt-get install tinyproxy")
    folder = tmp_path_factory.mktemp("forward-proxy")
    port = free_port()
    with open(folder / "script.out", "wb") as out:
        process = subprocess.Popen(
            [str(SCRIPT), str(folder), str(port)], stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    deadline = time.monotonic() + 300  # the first run may install the package
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                raise RuntimeError(f"the forward proxy did not start:\n{(folder / 'script.out').read_text()}") from None
            time.sleep(0.1)
    yield ForwardProxy(f"http://127.0.0.1:{port}", folder / "proxy.log", process)
    os.killpg(process.pid, signal.SIGTERM)
    process.wait(timeout=30)
