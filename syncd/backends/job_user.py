"""Running jobs as another, unprivileged user: who that is, whether this process may switch to it,
and moving a job's work folder into that user's hands and back.

The work folder is handed over just before the job starts and taken back before syncd reads
anything in it. Both walks go folder by folder through file descriptors opened with
``O_NOFOLLOW`` and act on one name at a time inside a folder the job can no longer change, so a
job (or a process it left running) cannot swap a file for a link between syncd's check and its
action. Files with more than one link are never touched or delivered: a hard link made by the job
could be the name of a file it may not read.
"""

from __future__ import annotations

import grp
import os
import pwd
import stat
from dataclasses import dataclass
from pathlib import Path

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# What the daemon needs to start, own and stop another user's jobs (bit numbers of linux/capability.h).
REQUIRED_CAPABILITIES = {"CAP_CHOWN": 0, "CAP_KILL": 5, "CAP_SETGID": 6, "CAP_SETUID": 7}


@dataclass(frozen=True)
class JobUser:
    name: str
    uid: int
    gid: int
    groups: tuple[int, ...]
    home: str

    @classmethod
    def lookup(cls, user: str, group: str | None = None) -> JobUser:
        """The user's ids and supplementary groups (as initgroups would set them); KeyError if unknown."""
        entry = pwd.getpwnam(user)
        gid = grp.getgrnam(group).gr_gid if group else entry.pw_gid
        return cls(user, entry.pw_uid, gid, tuple(sorted(set(os.getgrouplist(user, gid)))), entry.pw_dir)

    def environment(self) -> dict[str, str]:
        return {"HOME": self.home, "USER": self.name, "LOGNAME": self.name}

    def can_traverse(self, st: os.stat_result) -> bool:
        if st.st_uid == self.uid:
            return bool(st.st_mode & stat.S_IXUSR)
        if st.st_gid in self.groups:
            return bool(st.st_mode & stat.S_IXGRP)
        return bool(st.st_mode & stat.S_IXOTH)


def effective_capabilities() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("CapEff:"):
                return int(line.split()[1], 16)
    return 0


def missing_privileges(user: JobUser) -> str | None:
    """Why this process cannot run jobs as ``user``, or None if it can."""
    if os.geteuid() != 0:
        me = _user_name(os.geteuid())
        return (
            f"run_as: {user.name} needs the daemon to run as root, with CAP_SETUID, CAP_SETGID, CAP_CHOWN "
            f"and CAP_KILL; it runs as {me} (uid {os.geteuid()}). Start syncd as root (`syncd units` "
            f"renders such a unit when a local backend uses run_as), or remove run_as to run jobs as {me}. "
            f"A non-root daemon holding CAP_SETUID is refused on purpose: its jobs would inherit the "
            f"capabilities"
        )
    capabilities = effective_capabilities()
    missing = [name for name, bit in REQUIRED_CAPABILITIES.items() if not capabilities >> bit & 1]
    if missing:
        return (
            f"run_as: {user.name} needs the capabilities {', '.join(missing)}, which this root process lacks "
            f"(a systemd CapabilityBoundingSet= without them?); regenerate the unit with `syncd units`"
        )
    return None


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def unreachable_by(path: Path, user: JobUser) -> str | None:
    """The first existing folder on the way to ``path`` that ``user`` cannot pass through, if any."""
    for folder in [*reversed(path.parents), path]:
        try:
            st = os.stat(folder)
        except FileNotFoundError:
            return None  # syncd creates the rest, passable
        if not user.can_traverse(st):
            return f"{folder} (mode {stat.S_IMODE(st.st_mode):04o}, owner uid {st.st_uid})"
    return None


def hand_over(folder: Path, user: JobUser) -> None:
    """Give ``folder`` and every folder and single-link file in it to ``user``; folders become 0700.

    Taken back first, so that a hand-over repeated after a crash walks only folders syncd owns.
    """
    take_back(folder, user)
    parent = os.open(folder.parent, DIR_FLAGS)
    try:
        _give(parent, folder.name, user)
    finally:
        os.close(parent)


def _give(parent_fd: int, name: str, user: JobUser) -> None:
    st = os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
    if stat.S_ISDIR(st.st_mode):
        fd = os.open(name, DIR_FLAGS, dir_fd=parent_fd)
        try:
            for child in os.listdir(fd):
                _give(fd, child, user)
            os.fchmod(fd, 0o700)
            os.fchown(fd, user.uid, user.gid)  # last: until now the folder could not change under us
        finally:
            os.close(fd)
    elif stat.S_ISREG(st.st_mode) and st.st_nlink == 1:
        os.chown(name, user.uid, user.gid, dir_fd=parent_fd, follow_symlinks=False)


def take_back(folder: Path, user: JobUser) -> None:
    """Make ``folder`` and what ``user`` owns in it the daemon's again: folders 0700, files owner-readable.

    Links are left as they are (never followed, never delivered), as are files with several links
    and anything owned by a third user; a folder of a third user is not entered.
    """
    parent = os.open(folder.parent, DIR_FLAGS)
    try:
        _take(parent, folder.name, user, os.geteuid(), os.getegid())
    finally:
        os.close(parent)


def _take(parent_fd: int, name: str, user: JobUser, uid: int, gid: int) -> None:
    try:
        st = os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        if st.st_uid == user.uid:
            os.chown(name, uid, gid, dir_fd=parent_fd, follow_symlinks=False)
        elif st.st_uid != uid:
            return
        # Following is safe: the name was a folder, not a link, in a parent the job can no longer change.
        # 0700 also masks any ACL entry the job granted itself.
        os.chmod(name, 0o700, dir_fd=parent_fd)
        fd = os.open(name, DIR_FLAGS, dir_fd=parent_fd)
        try:
            for child in os.listdir(fd):
                _take(fd, child, user, uid, gid)
        finally:
            os.close(fd)
    elif stat.S_ISREG(st.st_mode) and st.st_uid == user.uid and st.st_nlink == 1:
        os.chown(name, uid, gid, dir_fd=parent_fd, follow_symlinks=False)
        os.chmod(name, stat.S_IMODE(st.st_mode) & 0o700 | 0o600, dir_fd=parent_fd)
