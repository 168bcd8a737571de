"""An example folder of examples/ copied and run as its README says: validate, start, drop its job, read the result.

The examples' own settings are kept; only what makes a test quick is changed (a shorter settle, a free port
for the HTTP endpoint, faster polls where the caller asks for them).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from tests.support.harness import SYNCD, SyncdProcess

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class ExampleRun:
    result: dict  # the job's syncd-result.json
    outbox: Path  # outbox/results/<job>
    log: str  # the daemon's whole log


def copy_example(name: str, tmp_path: Path, extra_config: str = "") -> Path:
    """examples/<name> copied under tmp_path, with a short settle and the HTTP endpoint on a free port."""
    site = tmp_path / f"{name}-example"
    shutil.copytree(ROOT / "examples" / name, site)
    config = site / "syncd.yaml"
    text = config.read_text()
    assert "settle: 5s" in text, f"examples/{name}/syncd.yaml no longer says 'settle: 5s'; update this helper"
    config.write_text(text.replace("settle: 5s", "settle: 0.3s") + "http: {listen: '127.0.0.1:0'}\n" + extra_config)
    return site


def run_example_job(site: Path, job: str, env: dict[str, str], timeout: float = 60) -> ExampleRun:
    """`syncd validate`, then the daemon with ``env``, and the example's jobs/<job> moved into its inbox."""
    env = {**env, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    config = site / "syncd.yaml"
    checked = subprocess.run(
        [*SYNCD, "validate", str(config)], capture_output=True, text=True, env={**os.environ, **env}, timeout=60
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    for folder in ("inbox", "outbox", "failed"):
        (site / folder).mkdir(exist_ok=True)
    daemon = SyncdProcess(config, env=env).start()
    try:
        staged = site.parent / f"{job}-copy"
        shutil.copytree(site / "jobs" / job, staged)
        staged.rename(site / "inbox" / job)  # one rename, as a person's `mv` into the inbox
        result = daemon.result(job, timeout=timeout)
    finally:
        daemon.stop()
    return ExampleRun(result, site / "outbox" / "results" / job, daemon.log())
