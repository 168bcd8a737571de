"""Runs one local job, detached from the daemon, and records how it ended.

Started by the local backend's launcher (``local_runner.py --serve``, which is handed each job's spec
through its pipe), or on its own as ``local_runner.py ATTEMPT_DIR`` (which reads ``ctrl/spec.json``).
It forks into the background (so the daemon never has to reap it), claims ``ctrl/claim``
exclusively (so a second runner for the same attempt exits at once) and holds a lock on it for as
long as it lives (so the daemon can tell a live runner from a dead one without trusting pids; on a
filesystem without hard links, and from runners of an older syncd, the lock is on
``ctrl/alive.lock``), runs the command in its own process group, enforces the timeout, obeys
``ctrl/cancel``, and appends to the claim, a line each, its job's process group and cgroup once it
started and how it ended (flushed, before the lock is let go). The job's whole process tree is contained
(:mod:`syncd.backends.containment`: a cgroup, or the runner as subreaper): at the end of the job, on
timeout and on cancel, nothing of it survives.

When the spec names a user, only the job's process takes that user's ids (and enters ``work/`` as
that user, so the folder is reachable by its absolute path); the runner keeps the daemon's
privileges, so the job can neither write the control files nor signal the runner, and the runner
can still kill the job's whole process group.

It is started as a script (``python -I -S .../local_runner.py ATTEMPT_DIR``), not with ``-m``: without
the site machinery and the package's neighbours it is ready in a third of the time, and a runner starts
for every job. The launching process returns once the runner has claimed the attempt.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

if __name__ == "__main__" and not __package__:  # run as a script: the package is two folders up
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from syncd.backends.containment import CgroupUnavailable, Containment, contain  # noqa: E402
from syncd.fsutil import fsync_dir  # noqa: E402

KILL_GRACE = 5.0
MAX_CLAIM = 1 << 16  # a claim is a pid and two short records; more is not read (nor allocated)
TICK = 0.2


# What link(2) answers on a filesystem that has no hard links.
_NO_HARD_LINKS = frozenset({errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS, errno.EXDEV})


def claim(ctrl: Path) -> int | None:
    """Make the attempt of ``ctrl`` this runner's: the open descriptor whose lock says it lives (kept open
    until the runner ends), or None if another runner has claimed it.

    The claim is written and locked under a name of its own, then linked as ``claim``: link(2) fails
    when the name is taken, and a daemon never finds a claim its live runner has not locked yet."""
    mine = ctrl / f"claim.{os.getpid()}.{time.monotonic_ns()}"
    fd = os.open(mine, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.write(fd, f"{os.getpid()}\n".encode())
        os.link(mine, ctrl / "claim")
    except FileExistsError:
        os.close(fd)
        return None
    except OSError as exc:
        os.close(fd)
        if exc.errno not in _NO_HARD_LINKS:
            raise
        return _claim_with_lock_file(ctrl)
    finally:
        os.unlink(mine)
    os.fsync(fd)
    fsync_dir(ctrl)
    return fd


def _claim_with_lock_file(ctrl: Path) -> int | None:
    """:func:`claim` without hard links: the lock is held on ``alive.lock``, taken before the claim is made
    (a runner that finds it held leaves the attempt to the one that holds it)."""
    fd = os.open(ctrl / "alive.lock", os.O_CREAT | os.O_WRONLY | os.O_APPEND, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        made = os.open(ctrl / "claim", os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    except OSError as exc:
        os.close(fd)
        if isinstance(exc, FileExistsError) or exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            return None
        raise
    os.write(made, f"{os.getpid()}\n".encode())
    os.fsync(made)
    os.close(made)
    fsync_dir(ctrl)
    return fd


def _append_to_claim(ctrl: Path, key: str, record: dict, *, durable: bool) -> None:
    """Append ``{key: record}`` to the claim as a line of its own. Appended, never rewritten: a reader never
    finds the pid gone, and ignores a line that is not whole yet; ``durable``: on disk when this returns."""
    fd = os.open(ctrl / "claim", os.O_WRONLY | os.O_APPEND)
    try:
        os.write(fd, (json.dumps({key: record}) + "\n").encode())
        if durable:
            os.fsync(fd)
    finally:
        os.close(fd)


def _record_runner(ctrl: Path, record: dict) -> None:
    """What a daemon needs to kill what this runner would leave behind if it died (its job's group and
    cgroup); not flushed: nothing of the job outlives a power cut, so the record need not either."""
    _append_to_claim(ctrl, "runner", record, durable=False)


def _record_end(ctrl: Path, status: dict) -> None:
    """How the job ended, on disk before the runner lets go of its claim (a daemon that finds the claim
    unlocked and no end in it counts the job lost). The claim's name is on disk already, so one flush of
    the file does it."""
    _append_to_claim(ctrl, "status", status, durable=True)


class Claim(NamedTuple):
    """What ``ctrl/claim`` says: the pid of the runner that made it, the record it appended once its job
    started (``{}`` until then) and how the job ended (None until then)."""

    pid: int | None
    runner: dict
    status: dict | None


def read_claim(ctrl: Path) -> Claim:
    """Read ``ctrl/claim``. A claim made by an older syncd is the pid alone, with no line end: its runner
    kept its record in ``runner.json`` and the end in ``status.json``, which are read instead."""
    with open(ctrl / "claim", "rb") as source:
        first, newline, rest = source.read(MAX_CLAIM).partition(b"\n")
    try:
        pid: int | None = int(first)
    except ValueError:
        pid = None
    if not newline:
        return Claim(pid, _read_json(ctrl / "runner.json") or {}, _read_json(ctrl / "status.json"))
    found: dict[str, dict] = {}
    for line in rest.split(b"\n")[:-1]:  # the last piece is not a whole line: empty, or still being written
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict):
            found.update((key, value) for key, value in entry.items() if isinstance(value, dict))
    return Claim(pid, found.get("runner", {}), found.get("status"))


def _read_json(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _kill_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _stop(child: subprocess.Popen, box: Containment) -> int:
    """TERM every process of the job (its group and all it contains), KILL them all after a grace period;
    return the exit status of the job's first process."""
    _kill_group(child.pid, signal.SIGTERM)
    box.signal_all(signal.SIGTERM)
    try:
        return child.wait(timeout=KILL_GRACE)
    except subprocess.TimeoutExpired:
        _kill_group(child.pid, signal.SIGKILL)
        box.kill_all()
        return child.wait()


def _identity(spec: dict, work: Path) -> dict:
    """Popen arguments that start the command in ``work``, as the spec's user if it names one."""
    user = spec.get("user")
    if user is None:
        return {"cwd": work}
    # The child changes directory after it has become the user (the runner is single-threaded).
    return {
        "user": user["uid"],
        "group": user["gid"],
        "extra_groups": user["groups"],
        "preexec_fn": lambda: os.chdir(work),
    }


def run(attempt_dir: Path, claimed: Callable[[], None] = lambda: None, spec: dict | None = None) -> int:
    """Run the attempt as ``spec`` says (by default, as ``ctrl/spec.json`` says); ``claimed`` is called once
    it is this runner's (or another's) to run."""
    ctrl = attempt_dir / "ctrl"
    try:
        if spec is None:
            spec = json.loads((ctrl / "spec.json").read_text())
        held = claim(ctrl)
        if held is None:
            return 0  # another runner owns (or owned) this attempt: never run twice
    finally:
        claimed()
    try:
        return _run_claimed(attempt_dir, spec)
    finally:
        os.close(held)  # after the end is recorded: the daemon never finds a claim unlocked without it


def _run_claimed(attempt_dir: Path, spec: dict) -> int:
    ctrl = attempt_dir / "ctrl"
    started = time.time()
    command = ["/bin/sh", "-c", spec["command"]] if isinstance(spec["command"], str) else spec["command"]
    status: dict[str, Any] = {"started": started, "timed_out": False, "cancelled": False, "signal": None, "error": None}
    try:
        box = contain(spec.get("containment", "auto"), attempt_dir.name)
    except CgroupUnavailable as exc:  # containment: cgroup was asked for, and none can be made here
        status.update(exit_code=127, ended=time.time(), error=f"cannot contain the job: {exc}")
        _record_end(ctrl, status)
        return 0
    try:
        with open(ctrl / "stdout.txt", "ab") as out, open(ctrl / "stderr.txt", "ab") as err:
            box.enter_for_fork()  # the job is born inside its cgroup: no descendant is ever outside it
            try:
                child = subprocess.Popen(
                    command,
                    env=spec["env"],
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=err,
                    start_new_session=True,
                    **_identity(spec, attempt_dir / "work"),
                )
            finally:
                box.leave_after_fork()
    except (OSError, subprocess.SubprocessError) as exc:
        box.close()
        why = (
            f"the job's user could not enter {attempt_dir / 'work'}"
            if isinstance(exc, subprocess.SubprocessError)
            else exc.strerror or str(exc)
        )
        status.update(exit_code=127, ended=time.time(), error=f"cannot start the command: {why}")
        with open(ctrl / "stderr.txt", "a") as err:
            err.write(f"syncd: {status['error']}\n")
        _record_end(ctrl, status)
        return 0
    box.main_pid = child.pid
    _record_runner(ctrl, {"pgid": child.pid, "started": started, "containment": box.describe()})

    timeout = spec.get("timeout")
    deadline = started + timeout if timeout else None
    code = None
    while code is None:
        try:
            code = child.wait(timeout=TICK)
        except subprocess.TimeoutExpired:
            if (ctrl / "cancel").exists():
                status["cancelled"] = True
                code = _stop(child, box)
            elif deadline is not None and time.time() >= deadline:
                status["timed_out"] = True
                code = _stop(child, box)
    # Nothing of the job outlives it: what it left running (in its group, started with setsid, a double
    # fork or nohup … &) is stopped and killed before its end is recorded.
    _kill_group(child.pid, signal.SIGKILL)
    survivors = box.kill_all()
    box.close()
    if survivors:
        status["error"] = f"processes {survivors} of the job could not be killed"
    if code < 0:
        status.update(signal=-code, exit_code=128 - code)
    else:
        status["exit_code"] = code
    status["ended"] = time.time()
    _record_end(ctrl, status)
    return 0


def start_detached(attempt_dir: Path, log_path: Path | None = None, spec: dict | None = None) -> None:
    """Start the runner of ``attempt_dir`` (for ``spec``; by default ``ctrl/spec.json``) as a process of its
    own session that is nobody's child, and return once it has claimed the attempt (or found it claimed,
    or died). With ``log_path``, why the runner failed goes there (the file is made only then: a runner
    that does its work has nothing to say), and its standard streams go nowhere."""
    claim_read, claim_write = os.pipe()
    middle = os.fork()
    if middle == 0:
        try:
            os.close(claim_read)
            os.setsid()
            if os.fork() > 0:
                os._exit(0)  # the runner is orphaned at once: nobody has to reap it
            null = os.open(os.devnull, os.O_RDWR)
            os.dup2(null, 0)
            os.dup2(null, 1)
            if log_path is not None:
                os.dup2(null, 2)
            os.close(null)
            code = run(attempt_dir, claimed=lambda: os.close(claim_write), spec=spec)
        except BaseException:
            _report_failure(log_path)
            code = 1
        finally:
            sys.stderr.flush()
        os._exit(code)
    os.close(claim_write)
    os.waitpid(middle, 0)
    os.read(claim_read, 1)
    os.close(claim_read)


def _report_failure(log_path: Path | None) -> None:
    """Write the exception being handled to ``log_path`` (to standard error without one)."""
    import traceback

    if log_path is None:
        traceback.print_exc()
        return
    with open(os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600), "a") as log:
        traceback.print_exc(file=log)


def serve() -> None:
    """Start runners on request, for as long as standard input is open: each request is one line of JSON,
    ``{"attempt": folder, "spec": spec}``, each answer a NUL once its runner has claimed the attempt. The
    spec comes with the request, so no file is made for it. Forking this process, whose imports are done,
    costs a fraction of starting a Python for every job."""
    requests = sys.stdin.buffer
    while line := requests.readline():  # at its end the daemon is gone (or closed us): runners live on
        request = json.loads(line)
        attempt_dir = Path(request["attempt"])
        start_detached(attempt_dir, attempt_dir / "ctrl" / "runner.log", spec=request["spec"])
        sys.stdout.buffer.write(b"\0")
        sys.stdout.buffer.flush()


def main() -> None:
    if sys.argv[1] == "--serve":
        serve()
        return
    start_detached(Path(sys.argv[1]))


if __name__ == "__main__":
    main()
