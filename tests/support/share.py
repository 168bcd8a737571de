"""A real network filesystem for the session: sshd on loopback exporting one folder, mounted with sshfs.

scripts/share does the work (and installs openssh-server and sshfs when missing); each test mounts
the export where it needs it, once per "host", and its mounts are unmounted at the end even when the
test fails.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parents[2] / "scripts" / "share"
#: What the README tells admins to set on an sshfs inbox: no cache in sshfs, the kernel's 1 s attribute cache only.
TUNED = "dir_cache=no"
#: sshfs's own defaults (names and attributes cached for 20 s).
DEFAULT = ""


@dataclass
class Share:
    dir: Path
    export: Path
    mounts: list[Path] = field(default_factory=list)

    def _run(self, *args: str) -> None:
        done = subprocess.run([str(SCRIPT), *args], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, f"scripts/share {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"

    def folder(self) -> Path:
        """A fresh folder in the export for one test (the server side's view of it)."""
        path = self.export / uuid.uuid4().hex[:12]
        path.mkdir()
        return path

    def mount(self, point: Path, options: str = TUNED) -> Path:
        """Mount the export on ``point`` (another "host"); returns ``point``."""
        self._run("mount", str(self.dir), str(point), *([options] if options else []))
        self.mounts.append(point)
        return point

    def umount(self, point: Path) -> None:
        self._run("umount", str(self.dir), str(point))

    def hang(self, point: Path) -> None:
        """Stop the server side of that mount: every call on it blocks until ``resume``."""
        self._run("hang", str(self.dir), str(point))

    def resume(self, point: Path) -> None:
        self._run("resume", str(self.dir), str(point))

    def drop(self, point: Path) -> None:
        """Kill the server side of that mount: the connection is gone and the mount goes with it."""
        self._run("drop", str(self.dir), str(point))

    def unmount_all(self) -> None:
        for point in reversed(self.mounts):
            subprocess.run([str(SCRIPT), "resume", str(self.dir), str(point)], capture_output=True, timeout=30)
            subprocess.run([str(SCRIPT), "umount", str(self.dir), str(point)], capture_output=True, timeout=60)
        self.mounts.clear()


@pytest.fixture(scope="session")
def network_share() -> Iterator[Share]:
    """Installs (if needed) and starts sshd on loopback; unmounts everything and stops it at the end."""
    needs_install = not (os.path.exists("/usr/sbin/sshd") and shutil.which("sshfs"))
    if os.geteuid() != 0 and needs_install:
        pytest.skip("an sshfs share needs root to install Debian's openssh-server and sshfs")
    if not os.path.exists("/dev/fuse"):
        pytest.skip("an sshfs share needs FUSE (/dev/fuse) on this machine")
    directory = Path(tempfile.mkdtemp(prefix="syncd-share-"))
    started = subprocess.run([str(SCRIPT), "up", str(directory)], capture_output=True, text=True, timeout=900)
    try:
        assert started.returncode == 0, f"scripts/share up failed:\n{started.stdout}\n{started.stderr}"
        yield Share(dir=directory, export=directory / "export")
    finally:
        subprocess.run([str(SCRIPT), "down", str(directory)], timeout=120)
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def share(network_share: Share) -> Iterator[Share]:
    """The session's share; the mounts a test makes are unmounted when it ends, pass or fail."""
    try:
        yield network_share
    finally:
        network_share.unmount_all()
