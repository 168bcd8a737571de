"""The local backend's ``run_as``: jobs run as an unprivileged user who can use its work folder but
can't read the daemon's state or config, forge its own outcome, or smuggle daemon-readable files out
through links; misconfiguration is refused with the fix. Needs root (it creates the user)."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import stat
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest

from syncd.backends.base import JobSpec
from syncd.backends.job_user import JobUser, hand_over, take_back
from syncd.backends.local import LocalBackend, LocalOptions
from syncd.backends.workdir import WorkFolder
from tests.support.harness import SYNCD, SyncdProcess, drop_job, make_config, wait_for

pytestmark = pytest.mark.e2e

JOB_USER = "syncd-job"
REPO = Path(__file__).parents[2]


@pytest.fixture(scope="module")
def job_user() -> JobUser:
    if os.geteuid() != 0:
        pytest.skip("running jobs as another user needs root (to create the user and to switch to it)")
    try:
        pwd.getpwnam(JOB_USER)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", JOB_USER], check=True
        )
    return JobUser.lookup(JOB_USER)


@pytest.fixture(scope="module")
def open_site(job_user):
    """A site in a folder others may pass through (pytest's tmp folders are root-only), so only the
    modes syncd gives its own files keep the job out."""
    root = Path(tempfile.mkdtemp(prefix="syncd-runas-", dir="/tmp"))
    os.chmod(root, 0o755)
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def runas_daemon(open_site):
    config = make_config(
        open_site / "site",
        extra={"backends": {"local": {"type": "local", "max_parallel": 4, "run_as": JOB_USER, "workdir_root": "work"}}},
    )
    os.chmod(config, 0o600)
    daemon = SyncdProcess(config).start()
    yield daemon
    daemon.stop()


def _processes_in_group(pgid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if entry.name.isdigit() and int(fields[2]) == pgid:
            found.append(int(entry.name))
    return found


def _kill_if_job_users(pid: int, user: JobUser) -> None:
    try:
        if os.stat(f"/proc/{pid}").st_uid == user.uid:
            os.kill(pid, 9)
    except (FileNotFoundError, ProcessLookupError):
        pass


PROBE = r"""
id -u > uid.txt
id -G > groups.txt
printf '%s %s %s\n' "$HOME" "$USER" "$LOGNAME" > identity.txt
pwd > pwd.txt
attempt() { if sh -c "$2" 2>/dev/null; then echo "$1: allowed"; else echo "$1: denied"; fi; }
{
  attempt "read the state db" 'cat "$DB_PATH" > /dev/null'
  attempt "read the config" 'cat "$CONFIG_PATH" > /dev/null'
  attempt "list the state folder" 'ls "$STATE_PATH" > /dev/null'
  attempt "write the exit status" 'echo "{\"status\": {\"exit_code\": 9}}" >> ../ctrl/claim'
  attempt "request a cancel" 'touch ../ctrl/cancel'
  attempt "write a file of syncd's" 'echo x > ../ctrl/status.json'
  attempt "rewrite the spec" 'echo x > ../ctrl/spec.json'
  attempt "move the control folder" 'mv ../ctrl ../ctrl-gone'
} > attempts.txt
tr a-z A-Z < in.txt > upper.txt
mkdir private && cp data.bin private/copy.bin && chmod 600 private/copy.bin && chmod 700 private
"""


def test_job_runs_as_the_user_with_its_groups_and_cannot_touch_state_config_or_control_files(runas_daemon, job_user):
    daemon = runas_daemon
    state = daemon.root / ".state"
    data = os.urandom(300_000)
    drop_job(
        daemon.inbox,
        "probe",
        {
            "command": "sh probe.sh",
            "env": {"DB_PATH": str(state / "syncd.db"), "CONFIG_PATH": str(daemon.config), "STATE_PATH": str(state)},
        },
        {"probe.sh": PROBE, "in.txt": "hello", "data.bin": data},
    )
    result = daemon.result("probe")
    out = daemon.outbox / "results" / "probe"

    assert result["state"] == "succeeded" and result["exit_code"] == 0, result
    assert int((out / "uid.txt").read_text()) == job_user.uid
    assert sorted(map(int, (out / "groups.txt").read_text().split())) == sorted(job_user.groups)
    assert (out / "identity.txt").read_text().split() == [job_user.home, JOB_USER, JOB_USER]
    assert (out / "pwd.txt").read_text().strip().endswith("/work"), "the job starts in its work folder"
    attempts = (out / "attempts.txt").read_text().splitlines()
    assert len(attempts) == 8 and all(line.endswith(": denied") for line in attempts), attempts
    assert stat.S_IMODE(state.stat().st_mode) == 0o700 and stat.S_IMODE((state / "syncd.db").stat().st_mode) == 0o600

    assert (out / "upper.txt").read_text() == "HELLO"
    assert (out / "private" / "copy.bin").read_bytes() == data, "a 0600 output in a 0700 folder arrives intact"
    for path in [p for p in out.rglob("*") if p.is_file()]:
        st = path.stat()
        assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (os.geteuid(), 0o644), f"{path}: {st}"
    work_root = daemon.root / "work"
    wait_for(lambda: not any(work_root.iterdir()), timeout=10, what="the work folder to be removed")
    assert "readable by other users" not in daemon.log()


def test_links_hard_links_and_a_process_left_behind_cannot_smuggle_out_daemon_files(runas_daemon, job_user):
    daemon = runas_daemon
    db, secret = daemon.root / ".state" / "syncd.db", daemon.root / "daemon-only.txt"
    secret.write_text("only the daemon may read this")
    os.chmod(secret, 0o600)
    # A process that escapes the job's process group keeps swapping an output between a file and a
    # link to the state database, hoping syncd follows the link while it collects.
    script = textwrap.dedent(f"""
        echo harmless > racy.txt
        setsid sh -c 'while :; do ln -sf {db} racy.new; mv -f racy.new racy.txt; echo x > racy.new;
                      mv -f racy.new racy.txt; sleep 0.01; done' > /dev/null 2>&1 &
        echo $! > straggler.pid
        ln -s {db} db-link.txt
        ln -s {secret} secret-link.txt
        ln -s {db.parent} state-link
        mkdir d && ln -s / d/root
        ln {secret} hard-link.txt 2> /dev/null || true
        echo kept > kept.txt
        sleep 0.3
    """)
    drop_job(daemon.inbox, "smuggle", {"command": script})
    result = daemon.result("smuggle")
    out = daemon.outbox / "results" / "smuggle"
    straggler = int((out / "straggler.pid").read_text())
    try:
        assert result["state"] == "succeeded", result
        assert (out / "kept.txt").read_text() == "kept\n"
        delivered = {item["path"] for item in result["outputs"]}
        assert not delivered & {"db-link.txt", "secret-link.txt", "hard-link.txt"}, delivered
        assert not any(p.startswith(("state-link", "d/")) for p in delivered), delivered
        for path in [p for p in out.rglob("*")]:
            assert not path.is_symlink(), f"{path} is a link"
            if path.is_file():
                content = path.read_bytes()
                assert b"SQLite format 3" not in content and b"only the daemon" not in content, path
        assert (secret.stat().st_uid, stat.S_IMODE(secret.stat().st_mode)) == (os.geteuid(), 0o600)
    finally:
        _kill_if_job_users(straggler, job_user)


def test_take_back_never_follows_links_nor_touches_hard_linked_or_foreign_files(tmp_path, job_user):
    outside = tmp_path / "outside.txt"
    outside.write_text("not the job's")
    os.chmod(outside, 0o600)
    work = tmp_path / "attempt" / "work"
    (work / "sub").mkdir(parents=True)
    (work / "sub" / "made.txt").write_text("made")
    hand_over(work, job_user)
    assert (work.stat().st_uid, stat.S_IMODE(work.stat().st_mode)) == (job_user.uid, 0o700)
    assert (work / "sub" / "made.txt").stat().st_uid == job_user.uid
    # What a job could leave: links to daemon files, a hard link, a folder of a third user.
    os.link(outside, work / "hard.txt")
    os.symlink(outside, work / "link.txt")
    os.symlink(tmp_path, work / "sub" / "up")
    nobody = pwd.getpwnam("nobody")
    (work / "foreign").mkdir()
    (work / "foreign" / "f.txt").write_text("foreign")
    os.chown(work / "foreign", nobody.pw_uid, nobody.pw_gid)
    os.chown(work / "foreign" / "f.txt", nobody.pw_uid, nobody.pw_gid)
    os.chmod(work / "sub" / "made.txt", 0o000)

    take_back(work, job_user)
    assert (work.stat().st_uid, (work / "sub").stat().st_uid) == (os.geteuid(), os.geteuid())
    assert stat.S_IMODE((work / "sub" / "made.txt").stat().st_mode) == 0o600, "made readable for its new owner"
    assert (outside.stat().st_uid, stat.S_IMODE(outside.stat().st_mode)) == (os.geteuid(), 0o600)
    assert (work / "foreign").stat().st_uid == nobody.pw_uid
    outputs = WorkFolder(tmp_path, "attempt").outputs(None, owner=os.geteuid())
    assert [item.relpath for item in outputs] == ["sub/made.txt"]


def test_timeout_and_cancel_kill_the_job_users_whole_process_group(runas_daemon, job_user):
    daemon = runas_daemon
    drop_job(daemon.inbox, "slow", {"command": "echo $$ > pgid.txt; sleep 300 & sleep 300", "timeout": "1s"})
    drop_job(daemon.inbox, "stopped", {"command": "echo $$ > pgid.txt; id -u > uid.txt; sleep 300 & sleep 300"})
    wait_for(
        lambda: (
            "running" in (daemon.inbox / "stopped.status.txt").read_text()
            if (daemon.inbox / "stopped.status.txt").exists()
            else False
        ),
        what="the job to run",
    )
    daemon.cli("cancel", "stopped")
    for name, state in (("slow", "timed_out"), ("stopped", "cancelled")):
        result = daemon.result(name)
        assert result["state"] == state, result
        pgid = int((daemon.outbox / "results" / name / "pgid.txt").read_text())
        wait_for(lambda pgid=pgid: not _processes_in_group(pgid), timeout=10, what=f"{name}'s processes to end")
    assert int((daemon.outbox / "results" / "stopped" / "uid.txt").read_text()) == job_user.uid


def _write_config(site: Path, local: dict) -> Path:
    return make_config(site, extra={"backends": {"local": {"type": "local", **local}}})


def test_unknown_user_or_missing_workdir_root_is_a_config_error_with_the_fix(tmp_path):
    config = _write_config(tmp_path / "a", {"run_as": "syncd-no-such-user", "workdir_root": "work"})
    done = subprocess.run([*SYNCD, "validate", str(config)], capture_output=True, text=True)
    assert done.returncode == 1
    line = next(i for i, text in enumerate(config.read_text().splitlines(), 1) if "run_as:" in text)
    assert (
        f"syncd.yaml:{line}: backends.local.run_as: no user named 'syncd-no-such-user' on this host; "
        f"create it (e.g. useradd --system --no-create-home syncd-no-such-user)" in done.stdout
    ), done.stdout

    config = _write_config(tmp_path / "b", {"run_as": "root"})
    done = subprocess.run([*SYNCD, "validate", str(config)], capture_output=True, text=True)
    assert done.returncode == 1 and "run_as needs workdir_root" in done.stdout, done.stdout

    config = _write_config(
        tmp_path / "c", {"run_as": "root", "run_as_group": "syncd-no-such-group", "workdir_root": "work"}
    )
    done = subprocess.run([*SYNCD, "run", "-c", str(config)], capture_output=True, text=True, timeout=30)
    assert done.returncode == 2 and "no group named 'syncd-no-such-group'" in done.stderr, done.stderr


def preflight_answers(work_root: Path) -> list[str]:
    """What probe, stage and submit of a run_as backend answer in this process."""
    backend = LocalBackend("local", LocalOptions(type="local", run_as=JOB_USER, workdir_root=work_root), work_root)
    spec = JobSpec(job_id="j1", name="j", submit_key="syncd-j1", attempt=1, command="id -u > uid.txt")
    answers = []
    for step in (backend.probe, lambda: backend.stage(spec, []), lambda: backend.submit(spec)):
        try:
            step()
            answers.append("ok")
        except Exception as exc:
            answers.append(f"{type(exc).__name__}: {exc}")
    return answers


def _preflight(work_root: Path, *wrapper: str) -> list[str]:
    """preflight_answers in a fresh process, started through ``wrapper`` (which may drop capabilities)."""
    code = (
        "import json, sys; from pathlib import Path; from tests.e2e.test_run_as import preflight_answers; "
        "print(json.dumps(preflight_answers(Path(sys.argv[1]))))"
    )
    done = subprocess.run(
        [*wrapper, sys.executable, "-c", code, str(work_root)], capture_output=True, text=True, cwd=REPO, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def _preflight_as(user: str, work_root: Path) -> list[str]:
    """preflight_answers in a forked copy of this process that became ``user`` (who may not be able to
    read this Python's files, so nothing new is loaded)."""
    entry = pwd.getpwnam(user)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child reports through the pipe and never returns into pytest
        try:
            os.setgroups([])
            os.setgid(entry.pw_gid)
            os.setuid(entry.pw_uid)
            os.write(write, json.dumps(preflight_answers(work_root)).encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as answer:
        text = answer.read()
    os.waitpid(pid, 0)
    return json.loads(text)


def test_without_root_or_its_capabilities_jobs_never_start_and_the_error_says_why(open_site, job_user):
    as_nobody = open_site / "nobody-work"
    as_nobody.mkdir()
    os.chown(as_nobody, pwd.getpwnam("nobody").pw_uid, -1)
    probe, stage, submit = _preflight_as("nobody", as_nobody)
    for answer in (probe, submit):
        assert answer.startswith("TransientError: run_as: syncd-job needs the daemon to run as root"), answer
        assert "CAP_SETUID" in answer and "runs as nobody" in answer
    assert stage == "ok"
    assert not (as_nobody / "syncd-j1" / "ctrl" / "claim").exists(), "no runner started as the daemon's user"

    without_setuid = open_site / "capless-work"
    probe, _, submit = _preflight(without_setuid, "setpriv", "--bounding-set", "-setuid,-kill")
    for answer in (probe, submit):
        assert answer.startswith("TransientError: run_as: syncd-job needs the capabilities CAP_KILL, CAP_SETUID"), (
            answer
        )
    assert not (without_setuid / "syncd-j1" / "ctrl" / "claim").exists()

    closed = open_site / "closed"
    closed.mkdir(mode=0o700)
    probe, *_ = _preflight(closed / "work")
    assert probe.startswith(
        f"TransientError: run_as: syncd-job cannot reach the work folders under {closed}/work: {closed} (mode 0700"
    ), probe


def test_units_for_run_as_run_as_root_with_only_the_capabilities_jobs_need(tmp_path, job_user):
    config = _write_config(tmp_path / "site", {"run_as": JOB_USER, "workdir_root": str(tmp_path / "jobs")})
    out = tmp_path / "units"
    done = subprocess.run([*SYNCD, "units", "-c", str(config), "--output", str(out)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    for unit in ("syncd.service", "syncd@.service"):
        text = (out / unit).read_text()
        assert "\nUser=root\n" in text and "\nCapabilityBoundingSet=CAP_CHOWN CAP_KILL CAP_SETGID CAP_SETUID\n" in text
        assert "\nNoNewPrivileges=true\n" in text
    assert str(tmp_path / "jobs") in (out / "syncd.service").read_text().split("ReadWritePaths=")[1].splitlines()[0]
    verify = subprocess.run(["systemd-analyze", "verify", str(out / "syncd.service")], capture_output=True, text=True)
    assert verify.returncode == 0 and not verify.stderr.strip(), verify.stderr
    refused = subprocess.run([*SYNCD, "units", "-c", str(config), "--user", "syncd"], capture_output=True, text=True)
    assert refused.returncode == 2 and "needs the service to run as root" in refused.stderr, refused.stderr
