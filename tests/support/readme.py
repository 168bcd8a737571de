"""Walking a README as its reader would: its shell blocks, taken from the file itself, run line by line
in one shell (so `cd`, `set -a` and variables carry over from one line to the next)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
import uuid
from pathlib import Path

_FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.DOTALL | re.MULTILINE)


def shell_blocks(readme: Path, heading: str) -> list[list[str]]:
    """The ```sh blocks under ``heading`` (up to the next heading of its level or above), each as its
    command lines, blank lines and comments dropped."""
    text = readme.read_text()
    level = len(heading) - len(heading.lstrip("#"))
    start = text.index(heading + "\n")
    end_at = re.compile(rf"^#{{1,{level}}} ", re.MULTILINE).search(text, start + len(heading))
    section = text[start : end_at.start() if end_at else len(text)]
    blocks = []
    for language, body in _FENCE.findall(section):
        if language == "sh":
            lines = [line.split("  #")[0].rstrip() for line in body.splitlines()]
            blocks.append([line for line in lines if line and not line.startswith("#")])
    return blocks


class Shell:
    """One bash, fed a line at a time, as at a terminal. Each line's output and exit code are read back
    from files; a line run with :meth:`start` runs in the background (a second terminal)."""

    def __init__(self, workdir: Path, cwd: Path, env: dict[str, str]):
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            ["bash", "--noprofile", "--norc"],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd=cwd,
            env=env,
            text=True,
            start_new_session=True,
        )
        self.background: list[tuple[int, Path]] = []

    def _send(self, text: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(text + "\n")
        self.process.stdin.flush()

    def run(self, line: str, timeout: float = 60.0) -> tuple[int, str]:
        """(exit code, stdout and stderr together) of ``line``."""
        tag = uuid.uuid4().hex
        out, rc = self.dir / f"{tag}.out", self.dir / f"{tag}.rc"
        self._send(f"{{ {line}\n}} > {out} 2>&1 < /dev/null; echo $? > {rc}.tmp && mv {rc}.tmp {rc}")
        deadline = time.monotonic() + timeout
        while not rc.exists():
            if self.process.poll() is not None:
                raise AssertionError(f"the shell ended while running: {line}")
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout}s: {line}\n{out.read_text() if out.exists() else ''}")
            time.sleep(0.05)
        return int(rc.read_text()), out.read_text()

    def start(self, line: str) -> Path:
        """Run ``line`` in the background; returns the file its output goes to."""
        log = self.dir / f"{uuid.uuid4().hex}.log"
        code, _ = self.run(f"{line} > {log} 2>&1 < /dev/null & echo $! > {log}.pid")
        assert code == 0
        self.background.append((int(Path(f"{log}.pid").read_text()), log))
        return log

    def stop_background(self, timeout: float = 30.0) -> None:
        """SIGTERM to each background line (what Ctrl-C asks of a daemon), then wait for it to end."""
        for pid, _log in self.background:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                continue
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and _alive(pid):
                time.sleep(0.05)
        self.background.clear()

    def close(self) -> None:
        self.stop_background()
        if self.process.stdin is not None:
            self.process.stdin.close()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()


def _alive(pid: int) -> bool:
    """Whether ``pid`` still runs (a zombie, ended but not yet reaped by the shell, counts as ended)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except (FileNotFoundError, IndexError):
        return False
