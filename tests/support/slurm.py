"""A real single-node Slurm cluster for the session, started and stopped by scripts/slurm-cluster."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
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


def read_env(path: Path) -> dict[str, str]:
    """The NAME=value lines of the env file `slurm-cluster up` writes (a value may be in double quotes)."""
    pairs = (line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)
    return {name: value.strip('"') for name, value in pairs}


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
        values = read_env(directory / "env")
        yield SlurmCluster(dir=directory, url=values["SLURMRESTD_URL"], conf=Path(values["SLURM_CONF"]))
    finally:
        subprocess.run([str(SCRIPT), "down", str(directory)], timeout=120)
        shutil.rmtree(directory, ignore_errors=True)


def syncd_for_every_user(folder: Path) -> Path:
    """A ``bin/`` folder with a ``syncd`` that any user can run (the docs ask for one: the daemon runs as
    the Slurm user). This interpreter may live under root's closed home; then a virtual environment of
    the system's Python of the same version is made, which reads this one's packages."""
    probe = subprocess.run(
        ["runuser", "-u", "nobody", "--", sys.executable, "-c", "import syncd"], capture_output=True, timeout=60
    )
    if probe.returncode == 0:
        return Path(sys.executable).parent
    system = Path("/usr/bin/python3")
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    if (
        not system.exists()
        or subprocess.run(
            [
                str(system),
                "-c",
                f"import sys; sys.exit(f'{{sys.version_info.major}}.{{sys.version_info.minor}}' != '{version}')",
            ]
        ).returncode
    ):
        pytest.skip(f"this Python is closed to other users and /usr/bin/python3 is not Python {version}")
    subprocess.run([str(system), "-m", "venv", "--without-pip", str(folder)], check=True, timeout=120)
    mine = sysconfig.get_paths()["purelib"]
    theirs = subprocess.run(
        [str(folder / "bin" / "python3"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    Path(theirs, "syncd-test-packages.pth").write_text(f"import site; site.addsitedir({mine!r})\n")
    script = folder / "bin" / "syncd"
    script.write_text(f"#!{folder / 'bin' / 'python3'}\nimport sys\nfrom syncd.cli import main\nsys.exit(main())\n")
    script.chmod(0o755)
    return script.parent
