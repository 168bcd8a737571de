"""Security promises through the real daemon: secrets stay out of jobs and every file syncd writes,
files get sane modes, and a manifest cannot pick a backend, storage, bucket, endpoint or credentials."""

from __future__ import annotations

import json
import os
import re
import socket
import stat
import threading
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

from tests.support.harness import SyncdProcess, drop_job, make_config, wait_for

pytestmark = pytest.mark.e2e

DAEMON_SECRET = "AKIA-daemon-env-secret-7f3a91c2e5"
CONFIG_SECRET = "cfg-interpolated-secret-0b8d4e6f1a"
CONFIG_KEY_ID = "cfg-key-id-5c2e9a7d3b"


def _all_files(root: Path):
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            yield Path(dirpath) / name


def _grep_tree(root: Path, needles: list[bytes]) -> list[str]:
    hits = []
    for path in _all_files(root):
        if path.is_symlink() or not path.is_file():
            continue
        data = path.read_bytes()
        hits += [f"{path}: {needle.decode()}" for needle in needles if needle in data]
    return hits


@pytest.fixture
def secret_site(tmp_path):
    """A site whose config holds S3 credentials through ${ENV} and whose daemon's environment holds AWS keys."""
    site = tmp_path / "site"
    config = make_config(
        site,
        extra={
            "storages": {
                "local": {"type": "file", "root": "buckets"},
                # configured but unused by the inbox: its keys come from the environment
                "vault": {
                    "type": "s3",
                    "endpoint_url": "http://127.0.0.1:9",
                    "access_key_id": "${VAULT_KEY_ID}",
                    "secret_access_key": "${VAULT_SECRET}",
                },
            },
        },
    )
    assert CONFIG_SECRET not in config.read_text()
    env = {
        "AWS_SECRET_ACCESS_KEY": DAEMON_SECRET,
        "AWS_ACCESS_KEY_ID": "AKIA" + DAEMON_SECRET[-8:],
        "SYNCD_TEST_API_TOKEN": DAEMON_SECRET,
        "VAULT_SECRET": CONFIG_SECRET,
        "VAULT_KEY_ID": CONFIG_KEY_ID,
    }
    daemon = SyncdProcess(config, "--log-level", "DEBUG", env=env).start()
    yield daemon
    daemon.stop()


def test_secrets_never_reach_jobs_logs_status_results_or_error_files(secret_site):
    daemon = secret_site
    drop_job(daemon.inbox, "envdump", {"command": "env > env.txt; env >&2; echo done"})
    drop_job(daemon.inbox, "fails", {"command": "env; exit 4"})
    drop_job(daemon.inbox, "bad", "command: [unclosed\n", {"data.txt": "x"})
    envdump, fails = daemon.result("envdump"), daemon.result("fails")
    wait_for(lambda: (daemon.root / "failed" / "bad" / "syncd-error.json").exists(), timeout=20, what="rejection")
    assert envdump["state"] == "succeeded" and fails["state"] == "failed"

    seen = dict(
        line.split("=", 1)
        for line in (daemon.outbox / "results" / "envdump" / "env.txt").read_text().splitlines()
        if "=" in line
    )
    assert "AWS_SECRET_ACCESS_KEY" not in seen and "AWS_ACCESS_KEY_ID" not in seen
    assert "SYNCD_TEST_API_TOKEN" not in seen and "VAULT_SECRET" not in seen
    assert seen["SYNCD_JOB_NAME"] == "envdump" and "PATH" in seen, "the job still gets its minimal environment"

    outputs = []
    for args in (
        ("status",),
        ("status", "--all"),
        ("status", "--json", "--all"),
        ("status", "envdump"),
        ("status", "--json", "fails"),
        ("status", "bad"),
        ("logs", "envdump"),
        ("logs", "fails"),
        ("logs", "bad"),
    ):
        done = daemon.cli(*args)
        outputs.append(done.stdout + done.stderr)
    outputs.append(daemon.cli("validate", str(daemon.config), check=False).stdout)
    endpoint = re.search(r"http endpoint on (http://\S+/)", daemon.log())
    if endpoint:  # the daemon's own status endpoint, when it has one
        for path in ("healthz", "readyz", "metrics", "", "jobs"):  # "": the status page
            try:
                with urllib.request.urlopen(endpoint.group(1) + path, timeout=5) as response:
                    outputs.append(response.read().decode(errors="replace"))
            except urllib.error.HTTPError as exc:
                outputs.append(exc.read().decode(errors="replace"))
        assert "envdump" in outputs[-1], "the jobs endpoint lists the jobs it was checked with"
    needles = [DAEMON_SECRET, CONFIG_SECRET, CONFIG_KEY_ID, DAEMON_SECRET[-8:]]
    for text in outputs:
        for needle in needles:
            assert needle not in text, f"secret in CLI output: {text[:500]}"
    daemon.stop()
    leaked = _grep_tree(daemon.root, [n.encode() for n in needles])
    assert not leaked, f"secrets found in files under the site (logs, state, outbox, failed): {leaked}"


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def _created_by_syncd(site: Path, before: set[Path]) -> list[Path]:
    found = []
    for dirpath, dirs, files in os.walk(site):
        for name in dirs + files:
            path = Path(dirpath) / name
            harness_log = path.parent == site and name.startswith("syncd-") and name.endswith(".log")
            if path not in before and not path.is_symlink() and not harness_log:
                found.append(path)
    return found


def _run_jobs_and_collect_modes(tmp_path: Path, umask: int) -> tuple[Path, list[Path]]:
    site = tmp_path / "site"
    config = make_config(site)
    before = {Path(d) / n for d, ds, fs in os.walk(site) for n in ds + fs}
    old = os.umask(umask)  # the daemon inherits the umask it is started with
    try:
        daemon = SyncdProcess(config).start()
    finally:
        os.umask(old)
    try:
        drop_job(
            daemon.inbox,
            "ok",
            {"command": "mkdir -p sub && echo hi > sub/out.txt && chmod 666 sub/out.txt"},
            {"in.txt": "x"},
        )
        drop_job(daemon.inbox, "bad", "command: [unclosed\n", {"data.txt": "x"})
        assert daemon.result("ok")["state"] == "succeeded"
        wait_for(lambda: (site / "failed" / "bad" / "syncd-error.json").exists(), timeout=20, what="rejection")
        wait_for(
            lambda: (
                "ok"
                not in [
                    j["name"]
                    for j in json.loads(daemon.cli("status", "--json").stdout)
                    if j["state"] not in ("succeeded", "rejected")
                ]
            ),
            timeout=10,
            what="finish",
        )
    finally:
        daemon.stop()
    return site, _created_by_syncd(site, before)


def test_modes_state_dir_private_db_owner_only_outbox_not_writable_by_others(tmp_path):
    site, created = _run_jobs_and_collect_modes(tmp_path, 0o022)  # the systemd unit's UMask
    state = site / ".state"
    assert _mode(state) == 0o700, oct(_mode(state))
    for name in ("syncd.db", "syncd.db-wal", "syncd.db-shm"):
        if (state / name).exists():
            assert _mode(state / name) & 0o077 == 0, f"{name} is {oct(_mode(state / name))}"
    assert _mode(state / "syncd.db") == 0o600
    out = site / "outbox" / "results" / "ok"
    for path in [p for p in _all_files(out)]:
        assert _mode(path) & 0o133 == 0, f"{path} is {oct(_mode(path))}; outbox files must be 0644 or stricter"
    assert _mode(out / "sub" / "out.txt") == 0o644, "a job's 0666 output is delivered as 0644"
    for name in ("ERROR.txt", "syncd-error.json"):
        assert _mode(site / "failed" / "bad" / name) & 0o133 == 0
    world_writable = [f"{p} {oct(_mode(p))}" for p in created if _mode(p) & 0o002]
    assert not world_writable, f"world-writable files or folders created by syncd: {world_writable}"


def test_modes_no_world_writable_files_even_when_started_with_umask_000(tmp_path):
    """syncd must not rely on the umask it inherits (a cron job or shell may give it 000)."""
    site, created = _run_jobs_and_collect_modes(tmp_path, 0o000)
    assert _mode(site / ".state") == 0o700
    assert _mode(site / ".state" / "syncd.db") == 0o600
    world_writable = sorted(f"{p.relative_to(site)} {oct(_mode(p))}" for p in created if _mode(p) & 0o002)
    assert not world_writable, f"world-writable files or folders created by syncd: {world_writable}"


class _Listener:
    """A loopback TCP port that records every connection: proof that nothing was contacted."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self):
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.connections += 1
            conn.close()

    def close(self):
        self._stop.set()
        self._thread.join(2)
        self.sock.close()


ROUTING_KEYS = {
    "backend": "slurm",
    "storage": "s3",
    "bucket": "someone-elses-bucket",
    "prefix": "../../etc",
    "endpoint_url": "http://127.0.0.1:{port}/",
    "url": "http://127.0.0.1:{port}/",
    "credentials": {"aws_access_key_id": "AKIAEXAMPLE", "aws_secret_access_key": "x"},
    "aws_secret_access_key": "x",
    "token": {"command": "curl http://127.0.0.1:{port}/"},
    "outbox": "/tmp/elsewhere",
    "state_dir": "/tmp/elsewhere",
    "workdir_root": "/tmp/elsewhere",
}


@pytest.mark.parametrize("key", sorted(ROUTING_KEYS))
def test_manifest_routing_key_is_rejected_as_unknown_and_nothing_contacted(daemon, key):
    listener = _Listener()
    try:
        value = json.loads(json.dumps(ROUTING_KEYS[key]).replace("{port}", str(listener.port)))
        text = yaml.safe_dump({"command": "echo hi > hi.txt", key: value})
        name = f"route-{key.replace('_', '-')}"
        drop_job(daemon.inbox, name, text, {"in.txt": "x"})
        failed = daemon.root / "failed" / name
        wait_for(lambda: (failed / "syncd-error.json").exists(), timeout=20, what=f"{name} to be rejected")
        report = json.loads((failed / "syncd-error.json").read_text())
        assert any(f"unknown key '{key}'" in p for p in report["problems"]), report["problems"]
        assert (failed / "job.yaml").read_text() == text
        assert not (daemon.outbox / "results" / name).exists()
        assert not (daemon.root / "buckets" / "someone-elses-bucket").exists()
        assert not Path("/tmp/elsewhere").exists()
        assert listener.connections == 0, "a manifest made syncd open a connection"
    finally:
        listener.close()


def test_manifest_resources_mapping_cannot_smuggle_backend_options(daemon):
    text = "command: 'true'\nresources: {cpus: 1, partition: debug, account: root, qos: high}\n"
    drop_job(daemon.inbox, "smuggle", text)
    failed = daemon.root / "failed" / "smuggle"
    wait_for(lambda: (failed / "syncd-error.json").exists(), timeout=20, what="rejection")
    problems = " ".join(json.loads((failed / "syncd-error.json").read_text())["problems"])
    for key in ("partition", "account", "qos"):
        assert f"unknown key '{key}'" in problems, problems
