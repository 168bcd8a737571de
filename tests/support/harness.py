"""Test helpers that act like a user: write configs, build job folders, drop them, run syncd."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path

import yaml

SYNCD = [sys.executable, "-m", "syncd"]
TRACEBACK = "Traceback (most recent call last)"


def make_config(
    root: Path, *, settle: str = "0.3s", max_parallel: int = 2, extra: dict | None = None, **inbox_overrides
) -> Path:
    """Write ``root/syncd.yaml`` on the embedded default and create its folders."""
    root.mkdir(parents=True, exist_ok=True)
    inbox = {
        "name": "default",
        "path": "inbox",
        "outbox": "outbox",
        "failed": "failed",
        "backend": "local",
        "storage": "local",
        "bucket": "results",
        "settle": settle,
        "observer": "auto",
        "rescan": "2s",
    }
    inbox.update(inbox_overrides)
    config = {
        "state_dir": ".state",
        "storages": {"local": {"type": "file", "root": "buckets"}},
        "backends": {"local": {"type": "local", "max_parallel": max_parallel}},
        "inboxes": [inbox],
        "poll": {"first": "0.2s", "max": "1s"},
        "retry": {"initial": "0.2s", "max": "2s"},
        "http": {"listen": "127.0.0.1:0"},
    }
    config.update(extra or {})
    for folder in ("inbox", "outbox", "failed", "buckets"):
        (root / folder).mkdir(exist_ok=True)
    path = root / "syncd.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def make_job(parent: Path, name: str, manifest: dict | str | None, files: dict[str, bytes | str] | None = None) -> Path:
    """Build a job folder under ``parent`` (not yet in an inbox)."""
    job = parent / name
    job.mkdir(parents=True)
    if manifest is not None:
        text = manifest if isinstance(manifest, str) else yaml.safe_dump(manifest, allow_unicode=True)
        (job / "job.yaml").write_text(text, encoding="utf-8")
    for rel, content in (files or {}).items():
        path = job / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content.encode() if isinstance(content, str) else content)
    return job


def drop_job(inbox: Path, name: str, manifest: dict | str | None, files: dict[str, bytes | str] | None = None) -> Path:
    """Build a job folder beside the inbox and move it in with one rename, like ``mv j inbox/``."""
    staging = inbox.parent / f".staging-{uuid.uuid4().hex}"
    job = make_job(staging, name, manifest, files)
    target = inbox / name
    os.rename(job, target)
    shutil.rmtree(staging)
    return target


def wait_for(predicate: Callable[[], object], timeout: float = 30.0, interval: float = 0.1, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def http_port(daemon: SyncdProcess) -> int:
    """The port a daemon started with ``http.listen: 127.0.0.1:0`` chose (read from its log)."""
    match = wait_for(
        lambda: re.search(r"http endpoint on http://127\.0\.0\.1:(\d+)/", daemon.log()),
        timeout=10,
        what="the http endpoint",
    )
    return int(match.group(1))


def http_get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def readyz(port: int) -> tuple[int, dict]:
    """Status and JSON body of a daemon's /readyz."""
    code, body = http_get(port, "/readyz")
    return code, json.loads(body)


def read_result(outbox_job: Path) -> dict:
    return json.loads((outbox_job / "syncd-result.json").read_text())


class SyncdProcess:
    """``syncd run -c CONFIG`` as a real child process, with its log kept for assertions."""

    def __init__(self, config: Path, *args: str, env: dict | None = None, user: str | None = None):
        self.config = config
        #: run the daemon as this (unprivileged) user; the tests run as root, and root reads every file
        self.user = user
        self.root = config.parent
        self.args = args
        self.env = {**os.environ, **(env or {})}
        self.log_path = self.root / f"syncd-{uuid.uuid4().hex[:6]}.log"
        self.proc: subprocess.Popen | None = None
        self.killed = False  # by the test itself: how it ended is then the test's to judge

    @property
    def inbox(self) -> Path:
        return self.root / "inbox"

    @property
    def outbox(self) -> Path:
        return self.root / "outbox"

    def start(self, wait: bool = True) -> SyncdProcess:
        """Start ``syncd run``; with ``wait``, return once it logged that it is ready."""
        self._log = open(self.log_path, "ab")
        started_at = self._log.tell()
        self.killed = False
        as_user = (
            ["setpriv", f"--reuid={self.user}", f"--regid={self.user}", "--init-groups", "--"] if self.user else []
        )
        self.proc = subprocess.Popen(
            [*as_user, *SYNCD, "run", "-c", str(self.config), "--log-format", "text", *self.args],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=self.env,
        )
        if not wait:
            return self
        wait_for(  # this run's line: a restarted daemon's log already holds the one of the run before
            lambda: b"syncd ready" in self.log_path.read_bytes()[started_at:] or self.proc.poll() is not None,
            timeout=30,
            what="syncd to start",
        )
        assert self.proc.poll() is None, f"syncd exited at start:\n{self.log()}"
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout: float = 15.0, *, expect: int = 0) -> int:
        """SIGTERM, then check how the daemon ended: exit code ``expect`` and no traceback in its log. A daemon
        that had already died is checked the same way, so a crash during the test cannot pass unseen; only
        one the test killed itself (``kill9``) is not."""
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise AssertionError(f"syncd did not stop within {timeout}s of SIGTERM:\n{self.log()}") from None
            finally:
                self._log.close()
        code = self.proc.returncode
        if not self.killed:
            assert code == expect, f"syncd exited with {code}, not {expect}:\n{self.log()}"
            assert TRACEBACK not in self.log(), f"syncd logged a traceback:\n{self.log()}"
        return code

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()
        self.killed = True
        self._log.close()

    def result(self, folder: str, timeout: float = 30.0, bucket: str = "results") -> dict:
        path = self.outbox / bucket / folder
        wait_for(
            lambda: (path / "syncd-result.json").exists() or (self.proc and self.proc.poll() is not None),
            timeout=timeout,
            what=f"result record of {folder}",
        )
        assert (path / "syncd-result.json").exists(), f"syncd died:\n{self.log()}"
        return read_result(path)

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        done = subprocess.run(
            [*SYNCD, *args, "-c", str(self.config)] if args and args[0] != "validate" else [*SYNCD, *args],
            capture_output=True,
            text=True,
            env=self.env,
            timeout=60,
        )
        if check and done.returncode != 0:
            raise AssertionError(f"syncd {' '.join(args)} exited {done.returncode}:\n{done.stdout}\n{done.stderr}")
        return done


def runner_launchers(daemon_pid: int) -> list[int]:
    """The daemon's runner launchers: its children running ``local_runner.py --serve``."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                parent = int(stat.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{entry}/cmdline", "rb") as cmdline:
                arguments = cmdline.read().split(b"\0")
        except (OSError, ValueError, IndexError):
            continue
        if parent == daemon_pid and b"--serve" in arguments and any(a.endswith(b"local_runner.py") for a in arguments):
            found.append(int(entry))
    return found
