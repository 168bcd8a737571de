"""systemd unit files tailored to one config: the paths it writes, the syncd to run, the user."""

from __future__ import annotations

import pwd
from pathlib import Path

from syncd.config import Config

TEMPLATE_DIR = Path(__file__).parent / "systemd"
# Only what starting, owning and stopping another user's jobs takes (see syncd.backends.job_user).
RUN_AS_CAPABILITIES = "CAP_CHOWN CAP_KILL CAP_SETGID CAP_SETUID"


def writable_paths(config: Config) -> list[str]:
    """Every folder syncd writes for this config, for ReadWritePaths= under ProtectSystem=strict."""
    paths = {config.state_dir}
    for inbox in config.inboxes:
        paths |= {inbox.path, inbox.outbox, inbox.failed, inbox.spool_dir}
    for options in [*config.storage_options.values(), *config.backend_options.values()]:
        for key in ("root", "workdir_root"):
            if isinstance(getattr(options, key, None), Path):
                paths.add(getattr(options, key))
    # Drop paths inside other listed paths; systemd needs each to exist, so list the outermost ones.
    ordered = sorted(paths, key=lambda p: len(p.parts))
    kept: list[Path] = []
    for path in ordered:
        if not any(parent == path or parent in path.parents for parent in kept):
            kept.append(path)
    return [str(p) for p in sorted(kept)]


def render_units(config: Config, *, user: str | None, syncd_path: str) -> dict[str, str]:
    """The unit files for ``config``; with run_as, the service runs as root with the capabilities jobs
    of another user need. Raises ValueError when ``user`` cannot run such jobs."""
    run_as = sorted(config.run_as_users)
    if run_as:
        if user not in (None, "root"):
            raise ValueError(
                f"backends run jobs as {', '.join(run_as)} (run_as), which needs the service to run "
                f"as root; drop --user {user} or remove run_as"
            )
        user = "root"
    if user is None:
        user = pwd.getpwuid(config.source.stat().st_uid).pw_name if config.source else "syncd"
    try:
        pwd.getpwnam(user)
    except KeyError:
        raise ValueError(
            f"there is no user '{user}' on this host; create it first (useradd --system --home /var/lib/syncd "
            f"--shell /usr/sbin/nologin {user}) or give an existing one with --user"
        ) from None
    rw = " ".join(writable_paths(config))
    result = {}
    for name in ("syncd.service", "syncd@.service"):
        text = (TEMPLATE_DIR / name).read_text()
        text = text.replace("/usr/local/bin/syncd", syncd_path)
        if name == "syncd.service":
            text = text.replace("ReadWritePaths=/srv/syncd", f"ReadWritePaths={rw}")
        else:  # one template for every instance: each instance's folders go in its own drop-in
            text = text.replace(
                "ReadWritePaths=/srv/syncd",
                "# Each instance adds the folders of its config in a drop-in (systemctl edit syncd@NAME):\n"
                "# `syncd units -c /etc/syncd/NAME.yaml` prints them on its ReadWritePaths= line.\n"
                "ReadWritePaths=/srv/syncd",
            )
        text = text.replace("User=syncd", f"User={user}").replace("Group=syncd", f"Group={user}")
        if run_as:
            text = text.replace("CapabilityBoundingSet=\n", f"CapabilityBoundingSet={RUN_AS_CAPABILITIES}\n")
        if name == "syncd.service" and config.source is not None:
            text = text.replace("/etc/syncd/syncd.yaml", str(config.source))  # the header and ExecStart
        result[name] = text
    return result


HIDDEN_BY_PROTECT_HOME = (Path("/home"), Path("/root"), Path("/run/user"))
PRIVATE_TMP = (Path("/tmp"), Path("/var/tmp"))


def unit_warnings(config: Config, *, user: str | None, rendered_user: str, syncd_path: str) -> list[str]:
    """What would keep the rendered unit from working, or run it other than the reader may expect."""
    warnings = []
    paths = [Path(p) for p in writable_paths(config)] + ([config.source] if config.source else [])
    in_tmp = sorted({str(p) for p in paths if any(p == t or t in p.parents for t in PRIVATE_TMP)})
    if in_tmp:
        warnings.append(
            f"PrivateTmp=true gives the service a /tmp of its own, so it would not see {', '.join(in_tmp)}: "
            f"move the config and its folders out of /tmp and /var/tmp (e.g. /etc/syncd, /srv/syncd)"
        )
    programs = [Path(syncd_path), Path(syncd_path).resolve(), _interpreter(Path(syncd_path))]
    hidden = sorted(
        {str(p) for p in [*paths, *programs] if p and any(h == p or h in p.parents for h in HIDDEN_BY_PROTECT_HOME)}
    )
    if hidden:
        warnings.append(
            f"ProtectHome=true hides /home, /root and /run/user from the service, so it could not reach "
            f"{', '.join(hidden)}: install syncd where every user can read it (e.g. python3 -m venv /opt/syncd) "
            f"and keep the config and its folders outside home folders"
        )
    if user is None and rendered_user == "root" and not config.run_as_users:
        warnings.append(
            f"no --user: the unit runs as root, the owner of {config.source}; give --user with a dedicated "
            f"user (README: Installing as a service)"
        )
    return warnings


def _interpreter(script: Path) -> Path | None:
    """The interpreter named on the first line of a script (a venv's python may live elsewhere)."""
    try:
        with open(script, "rb") as handle:
            first = handle.readline(4096)
    except OSError:
        return None
    if not first.startswith(b"#!"):
        return None
    words = first[2:].decode("utf-8", "replace").split()
    return Path(words[0]).resolve() if words else None
