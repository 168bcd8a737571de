"""Holding a local job's whole process tree, so that nothing of it outlives the job.

A process group is not enough: ``setsid``, a double fork or ``nohup … &`` leave it. The runner
(:mod:`syncd.backends.local_runner`) therefore contains each job in one of two ways:

- ``cgroup``: a cgroup v2 folder of its own, ``<the runner's cgroup>/<submit key>``, made where the
  runner may write (a delegated subtree syncd owns, or as root outside a sandbox that makes
  ``/sys/fs/cgroup`` read-only). The job is born in it (the runner steps into it for the ``fork`` and
  back out), no descendant can leave it, and ``cgroup.kill`` ends all of them at once.
- ``subreaper``: the runner is the job's child subreaper (``PR_SET_CHILD_SUBREAPER``): an orphaned
  descendant (double fork, ``nohup … &``, ``setsid``) is re-parented to the runner instead of init, so
  every process of the job stays a descendant of the runner, found by walking ``/proc``. A sweep
  stops, then kills, every descendant until none is left.

The runner is a subreaper in both cases (it reaps what it kills). ``auto`` uses a cgroup where one can
be made and the subreaper otherwise.
"""

from __future__ import annotations

import ctypes
import errno
import os
import signal
import time
from collections.abc import Iterable
from pathlib import Path

PR_SET_CHILD_SUBREAPER = 36
SWEEP_SECONDS = 10.0


def become_subreaper() -> bool:
    """Make this process the child subreaper of its descendants (Linux ≥ 3.4); False where it can't."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def cgroup2_mount(mountinfo: str = "/proc/self/mountinfo") -> Path | None:
    """Where the cgroup v2 hierarchy is mounted (``/sys/fs/cgroup``, or ``…/unified`` on hybrid hosts)."""
    try:
        with open(mountinfo) as handle:
            for line in handle:
                left, _, right = line.partition(" - ")
                if right.split(" ", 1)[0] == "cgroup2":
                    return Path(left.split()[4].replace("\\040", " "))
    except OSError:
        return None
    return None


def own_cgroup(cgroup_file: str = "/proc/self/cgroup") -> str | None:
    try:
        with open(cgroup_file) as handle:
            for line in handle:
                if line.startswith("0::"):
                    return line[3:].strip()
    except OSError:
        return None
    return None


class Containment:
    """The processes of one job, and how to end them all."""

    kind = "none"

    def __init__(self, runner_pid: int):
        self.runner_pid = runner_pid
        #: the job's first process: the runner waits for it itself (Popen), so it is never reaped here
        self.main_pid: int | None = None

    # -- in the runner ----------------------------------------------------------------------------------
    def enter_for_fork(self) -> None:
        """Called just before the job is forked: the new process must start inside."""

    def leave_after_fork(self) -> None:
        """Called right after: the runner itself goes back out."""

    def members(self) -> list[int]:
        raise NotImplementedError

    def signal_all(self, sig: int) -> int:
        count = 0
        for pid in self.members():
            try:
                os.kill(pid, sig)
                count += 1
            except (ProcessLookupError, PermissionError):
                pass
        return count

    def kill_all(self, deadline: float = SWEEP_SECONDS) -> list[int]:
        """Stop, then kill, every process of the job until none is left; the pids that survived (none,
        unless one could not be killed within ``deadline`` seconds)."""
        end = time.monotonic() + deadline
        left = self.members()
        while left and time.monotonic() < end:
            for sig in (signal.SIGSTOP, signal.SIGKILL):  # stopped processes can't fork while they are killed
                for pid in left:
                    try:
                        os.kill(pid, sig)
                    except (ProcessLookupError, PermissionError):
                        pass
            self._after_kill()
            self._reap(left)
            time.sleep(0.01)
            left = self.members()
        return left

    def _after_kill(self) -> None:
        pass

    def _reap(self, pids: Iterable[int]) -> None:
        reap(pid for pid in pids if pid != self.main_pid)

    def close(self) -> None:
        """Release what holds the job (its cgroup), once nothing of it is left."""

    def describe(self) -> dict:
        return {"kind": self.kind}


def reap(pids: Iterable[int]) -> None:
    """Collect the exit status of those of ``pids`` that are this process's children (re-parented orphans
    included), so that none stays a zombie. Never waits for any other child."""
    for pid in pids:
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass


def _children_map() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as handle:
                stat = handle.read()
        except OSError:
            continue
        fields = stat[stat.rfind(b")") + 2 :].split()
        if len(fields) < 2 or fields[0] == b"Z":  # a zombie is dead already: reaped, never signalled
            continue
        children.setdefault(int(fields[1]), []).append(int(entry.name))
    return children


class Subreaper(Containment):
    """Every living descendant of the runner (orphans come back to it: it is their subreaper)."""

    kind = "subreaper"

    def members(self) -> list[int]:
        children = _children_map()
        found, todo = [], list(children.get(self.runner_pid, []))
        while todo:
            pid = todo.pop()
            found.append(pid)
            todo.extend(children.get(pid, []))
        return found

    def _after_kill(self) -> None:
        self._reap(_zombie_children(self.runner_pid))


def _zombie_children(parent: int) -> list[int]:
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as handle:
                stat = handle.read()
        except OSError:
            continue
        fields = stat[stat.rfind(b")") + 2 :].split()
        if len(fields) >= 2 and fields[0] == b"Z" and int(fields[1]) == parent:
            found.append(int(entry.name))
    return found


def _living(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            stat = handle.read()
    except OSError:
        return False
    return stat[stat.rfind(b")") + 2 :][:1] != b"Z"


class CgroupUnavailable(Exception):
    pass


class Cgroup(Subreaper):
    """A cgroup v2 folder for the job; the runner is also its subreaper, to reap what is killed."""

    kind = "cgroup"

    def __init__(self, runner_pid: int, name: str):
        super().__init__(runner_pid)
        mount, mine = cgroup2_mount(), own_cgroup()
        if mount is None or mine is None:
            raise CgroupUnavailable("no cgroup v2 hierarchy is mounted")
        self.home = mount / mine.lstrip("/")
        self._inside = False
        self.path = self.home / name
        try:
            self.path.mkdir()
        except FileExistsError:
            pass  # a runner that started this attempt before: the same folder
        except OSError as exc:
            raise CgroupUnavailable(f"cannot make the cgroup {self.path}: {exc.strerror}") from None
        try:
            self.enter_for_fork()
            self.leave_after_fork()
        except OSError as exc:
            self._remove()
            raise CgroupUnavailable(f"cannot move processes into {self.path}: {exc.strerror}") from None

    def _move(self, cgroup: Path) -> None:
        with open(cgroup / "cgroup.procs", "w") as handle:
            handle.write("0")  # 0: this process

    def enter_for_fork(self) -> None:
        self._move(self.path)
        self._inside = True

    def leave_after_fork(self) -> None:
        self._move(self.home)
        self._inside = False

    def members(self) -> list[int]:
        try:
            text = (self.path / "cgroup.procs").read_text()
        except OSError:
            text = ""
        inside = {pid for pid in map(int, text.split()) if pid != self.runner_pid and _living(pid)}
        return sorted(inside | set(super().members()))

    def _after_kill(self) -> None:
        if not self._inside:  # never while the runner itself is in it
            try:
                (self.path / "cgroup.kill").write_text("1")  # Linux ≥ 5.14: every process in it, at once
            except OSError:
                pass
        super()._after_kill()

    def close(self) -> None:
        if not self.kill_all():
            self._remove()

    def _remove(self) -> None:
        for _ in range(50):
            try:
                self.path.rmdir()
                return
            except FileNotFoundError:
                return
            except OSError as exc:
                if exc.errno != errno.EBUSY:
                    return
                time.sleep(0.02)  # the last killed processes are still leaving

    def describe(self) -> dict:
        return {"kind": self.kind, "cgroup": str(self.path)}


def cgroup_available() -> bool:
    """Whether this process could contain a job in a cgroup (makes, enters, leaves and removes a probe)."""
    try:
        probe = Cgroup(os.getpid(), f"syncd-probe-{os.getpid()}-{time.monotonic_ns()}")
    except CgroupUnavailable:
        return False
    probe._remove()
    return True


def contain(mode: str, name: str, runner_pid: int | None = None) -> Containment:
    """The containment for one job: ``cgroup``, ``subreaper`` or ``auto`` (a cgroup where one can be made).
    ``cgroup`` raises :class:`CgroupUnavailable` where none can be made."""
    pid = runner_pid if runner_pid is not None else os.getpid()
    become_subreaper()
    if mode in ("auto", "cgroup"):
        try:
            return Cgroup(pid, name)
        except CgroupUnavailable:
            if mode == "cgroup":
                raise
    return Subreaper(pid)


def kill_leftover_cgroup(path: str | None) -> None:
    """Kill whatever is still in a job's cgroup (its runner died, e.g. kill -9) and remove the folder."""
    if not path:
        return
    folder = Path(path)
    if not (folder / "cgroup.procs").exists():
        return
    for _ in range(100):
        try:
            (folder / "cgroup.kill").write_text("1")
        except OSError:
            for pid in (folder / "cgroup.procs").read_text().split():
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
        try:
            folder.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError:
            time.sleep(0.02)
