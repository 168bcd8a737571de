"""A real single-node Slurm cluster for the session, started and stopped by scripts/slurm-cluster."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parents[2] / "scripts" / "slurm-cluster"
MIN_JOB_AGE = 10  # seconds: short, so that tests can see slurmctld forget finished jobs


@dataclass
class SlurmCluster:
    dir: Path
    url: str
    conf: Path
    user: str = "root"  # jobs run as the token's user; the tests' daemon runs as root too

    def token_command(self, lifespan: int = 600) -> list[str]:
        return ["env", f"SLURM_CONF={self.conf}", "scontrol", "token", f"username={self.user}", f"lifespan={lifespan}"]

    def backend_section(self, workdir_root: Path, **overrides) -> dict:
        section = {
            "type": "slurm",
            "url": self.url,
            "user": self.user,
            "token": {"command": self.token_command()},
            "workdir_root": str(workdir_root),
            "request_timeout": "20s",
        }
        section.update(overrides)
        return section

    def run(self, *args: str) -> str:
        done = subprocess.run(
            list(args), capture_output=True, text=True, timeout=60, env={**os.environ, "SLURM_CONF": str(self.conf)}
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    def rest(self, action: str) -> None:
        subprocess.run([str(SCRIPT), f"rest-{action}", str(self.dir)], check=True, timeout=60)


@pytest.fixture(scope="session")
def slurm_cluster() -> SlurmCluster:
    """Installs (if needed) and starts munge, slurmctld, slurmd and slurmrestd; stops them at the end."""
    needs_install = not all(shutil.which(tool) for tool in ("slurmctld", "slurmrestd", "munged"))
    if os.geteuid() != 0 and needs_install:
        pytest.skip("starting a Slurm cluster needs root (to install Debian's slurm-wlm, slurmrestd, munge)")
    if os.geteuid() != 0:
        pytest.skip("starting a Slurm cluster needs root (munge and slurmd run as system users)")
    # Not under pytest's 0700 temp folders: the unprivileged slurmrestd must read slurm.conf.
    directory = Path(tempfile.mkdtemp(prefix="syncd-slurm-"))
    os.chmod(directory, 0o755)
    env = {**os.environ, "SLURM_MIN_JOB_AGE": str(MIN_JOB_AGE)}
    started = subprocess.run([str(SCRIPT), "up", str(directory)], capture_output=True, text=True, env=env, timeout=900)
    try:
        assert started.returncode == 0, f"slurm-cluster up failed:\n{started.stdout}\n{started.stderr}"
        values = dict(line.split("=", 1) for line in (directory / "env").read_text().split())
        yield SlurmCluster(dir=directory, url=values["SLURM_URL"], conf=Path(values["SLURM_CONF"]))
    finally:
        subprocess.run([str(SCRIPT), "down", str(directory)], timeout=120)
        shutil.rmtree(directory, ignore_errors=True)
