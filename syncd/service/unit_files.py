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
    rw = " ".join(writable_paths(config))
    result = {}
    for name in ("syncd.service", "syncd@.service"):
        text = (TEMPLATE_DIR / name).read_text()
        text = text.replace("/usr/local/bin/syncd", syncd_path)
        text = text.replace("ReadWritePaths=/srv/syncd", f"ReadWritePaths={rw}")
        text = text.replace("User=syncd", f"User={user}").replace("Group=syncd", f"Group={user}")
        if run_as:
            text = text.replace("CapabilityBoundingSet=\n", f"CapabilityBoundingSet={RUN_AS_CAPABILITIES}\n")
        if name == "syncd.service" and config.source is not None:
            text = text.replace("-c /etc/syncd/syncd.yaml", f"-c {config.source}")
        result[name] = text
    return result
