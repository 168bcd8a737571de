"""The ``syncd`` command line: init, run, status, validate, cancel, retry, logs, sync."""

from __future__ import annotations

import contextlib
import os
import socket
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

from syncd import __version__
from syncd.errors import ConfigError, ManifestError
from syncd.state.summary import job_summary, local_iso
from syncd.templates import INIT_CONFIG, INIT_FOLDERS
from syncd.text import shown, visible_json

if TYPE_CHECKING:
    from syncd.backends.base import Backend
    from syncd.config import Config
    from syncd.state.store import Job

CONFIG_HELP = "config file (default: $SYNCD_CONFIG, then ./syncd.yaml)"
EXIT_INVALID = 1
EXIT_USAGE = 2


def config_option(func):
    return click.option(
        "-c",
        "--config",
        "config_path",
        envvar="SYNCD_CONFIG",
        default="syncd.yaml",
        show_default=False,
        type=click.Path(dir_okay=False, path_type=Path),
        help=CONFIG_HELP,
    )(func)


def _load(config_path: Path, *, light: bool = False):
    if light:  # commands that never start the daemon or a backend skip importing them
        return _load_light(config_path)[0]
    from syncd.service.daemon import load

    return _checked(load, config_path)


def _load_light(config_path: Path):
    """(config, its ConfigSource), with backend sections taken as they are (their plugins not imported)."""
    from pydantic import ConfigDict, model_validator

    from syncd import plugins
    from syncd.config import BackendOptions, hide_secret_named, load_config_and_source

    class UncheckedBackend(BackendOptions):
        model_config = ConfigDict(extra="allow", frozen=True)

        @model_validator(mode="before")
        @classmethod
        def _hide_secrets(cls, data):  # its type's model is not at hand to say which values are secret
            return hide_secret_named(data)

    def resolve(kind, type_name):
        return UncheckedBackend if kind == "backend" else plugins.options_model(kind, type_name)

    return _checked(lambda path: load_config_and_source(path, resolve), config_path)


def _checked(load, config_path: Path):
    try:
        return load(config_path)
    except ConfigError as exc:
        click.echo(f"syncd: the config {exc.path} is invalid:", err=True)
        for problem in exc.problems:
            click.echo(f"  {problem}", err=True)
        sys.exit(EXIT_USAGE)


def _store(config):
    from syncd.state.store import Store

    if not config.db_path.exists():
        click.echo(
            f"syncd: no state yet at {config.db_path}; start the daemon with 'syncd run -c {config.source}'", err=True
        )
        sys.exit(EXIT_INVALID)
    return Store(config.db_path)


def _one_job(store, ref: str):
    matches = store.find(ref)
    if not matches:
        click.echo(f"syncd: no job with id or name '{shown(ref)}'; 'syncd status' lists them", err=True)
        sys.exit(EXIT_INVALID)
    if len(matches) > 1:
        click.echo(f"syncd: {len(matches)} jobs are named '{shown(ref)}'; give one of their ids:", err=True)
        for job in matches:
            click.echo(f"  {job.id}  {job.state}", err=True)
        sys.exit(EXIT_INVALID)
    return matches[0]


def _console():
    from rich.console import (
        Console,  # imported here: `syncd sync` and the daemon never draw tables
    )

    # Piped output keeps whole ids and names instead of wrapping to 80 columns.
    return Console() if sys.stdout.isatty() else Console(width=220)


def _table(*columns: str, **options):
    from rich.table import Table

    return Table(*columns, **options)


def _text(*parts):
    """A rich Text of plain strings or (string, style) pairs: shown as written, never parsed as markup."""
    from rich.text import Text

    return Text.assemble(*parts)


_iso = local_iso


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="syncd")
def main() -> None:
    """syncd: drop a folder into an inbox, get its results in the outbox."""


@main.command()
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.option("--force", is_flag=True, help="overwrite an existing syncd.yaml")
def init(directory: Path, force: bool) -> None:
    """Create DIRECTORY with a working config (local backend, folder buckets) and its folders."""
    config = directory / "syncd.yaml"
    if os.path.lexists(config) and not config.is_file():  # a FIFO would block the write, a device take it
        click.echo(f"syncd: {config} exists and is not a regular file; remove it or choose another folder", err=True)
        sys.exit(EXIT_INVALID)
    if config.exists() and not force:
        click.echo(f"syncd: {config} already exists; use --force to overwrite it", err=True)
        sys.exit(EXIT_INVALID)
    directory.mkdir(parents=True, exist_ok=True)
    for folder in INIT_FOLDERS:
        (directory / folder).mkdir(exist_ok=True)
    config.write_text(INIT_CONFIG)
    click.echo(
        f"Wrote {config} and the folders {', '.join(INIT_FOLDERS)} in {directory}/.\n\n"
        f"Next:\n"
        f"  syncd run -c {config}\n"
        f"then, from another terminal, move a job folder (job.yaml + inputs) into {directory / 'inbox'}/\n"
        f"and find its results in {directory / 'outbox' / 'results'}/<job name>/."
    )


@main.command()
@config_option
@click.option(
    "--log-format",
    type=click.Choice(["auto", "text", "json", "journal"]),
    default="auto",
    help="text for people, json for log collectors, journal for systemd (auto: detect)",
)
@click.option("--log-level", default="INFO", type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"]))
def run(config_path: Path, log_format: str, log_level: str) -> None:
    """Run the daemon in the foreground until SIGTERM or Ctrl-C."""
    from syncd.service.daemon import run_daemon
    from syncd.service.logsetup import setup_logging

    setup_logging(log_level, log_format)
    run_daemon(_load(config_path))


@main.command()
@config_option
@click.option("--json", "as_json", is_flag=True, help="print a JSON array")
@click.option("--all", "show_all", is_flag=True, help="include every finished job (default: the last 50)")
@click.argument("job", required=False)
def status(config_path: Path, as_json: bool, show_all: bool, job: str | None) -> None:
    """Show jobs (or one JOB, by id or name, with its events)."""
    config = _load(config_path)
    store = _store(config)
    if job:
        record = _one_job(store, job)
        if as_json:
            data = job_summary(record)
            data["events"] = [
                {"at": _iso(e.at), "from": e.from_state, "to": e.to_state, "message": e.message}
                for e in store.events(record.id)
            ]
            click.echo(visible_json([data], indent=2))
            return
        console = _console()
        for key, value in job_summary(record).items():
            if value is not None:  # a Text: a name like "[red]x" is shown as it is, never read as markup
                console.print(_text((f"{key:>10}", "bold"), "  ", shown(value)), highlight=False)
        table = _table("at", "change", "message", title="events", title_justify="left")
        for event in store.events(record.id):
            change = f"{event.from_state or ''} → {event.to_state}" if event.to_state else ""
            table.add_row(_iso(event.at), change, _text(shown(event.message)))
        console.print(table)
        return
    jobs = store.jobs()
    jobs.sort(key=lambda j: j.created)
    if not show_all:
        jobs = jobs[-50:]
    if as_json:
        click.echo(visible_json([job_summary(j) for j in jobs], indent=2))
        return
    shared = config.takeover.enabled
    table = _table("id", "name", "state", "backend", "remote id", "updated", *(["owner"] if shared else []), "error")
    for j in jobs:
        style = {
            "succeeded": "green",
            "validated": "green",
            "failed": "red",
            "rejected": "red",
            "held": "yellow",
            "timed_out": "red",
            "cancelled": "yellow",
        }.get(j.state, "")
        # user text as Text (never markup), escaped: a name can't add rows, colours or hidden characters
        table.add_row(
            j.id,
            _text(shown(j.name)),
            _text((j.state, style)),
            j.backend,
            _text(shown(j.remote_id or "")),
            _iso(j.updated),
            *([_text(shown(_owner(j)))] if shared else []),
            _text(shown(_problem(j))[:80]),
        )
    _console().print(table)
    if not jobs:
        click.echo("no jobs yet")
    if shared:
        _print_leases(config)
    for backend, (until, reason) in store.backend_pauses().items():
        click.echo(f"backend {backend} is paused (next try {_iso(until)}): {shown(reason)}")
    for service, (since, next_probe, reason) in store.open_circuits().items():
        click.echo(f"{service} is not answering since {_iso(since)} (next probe {_iso(next_probe)}): {shown(reason)}")


def _owner(job: Job) -> str:
    """Who has the job: this host, or the daemon that took it over; and where it came from if adopted."""
    if job.taken_by:
        return f"taken over by {job.taken_by}"
    host = socket.gethostname()
    return f"{host}, adopted from {job.adopted_from}" if job.adopted_from else host


def _print_leases(config: Config) -> None:
    """The daemons of each shared inbox, as their leases on the share say."""
    from syncd.state.share import leases_in

    for inbox in config.inboxes:
        for view, fenced in leases_in(inbox.spool_dir):
            state = f"taken over by {fenced}" if fenced else f"renewed {_iso(view.renewed_at)}"
            since = f", started {_iso(view.started)}" if view.started else ""
            click.echo(f"inbox {inbox.name}: daemon {view.lease_id} on {view.host} (pid {view.pid}{since}): {state}")


def _problem(job: Job) -> str:
    """What went wrong: the error, else how an unsuccessful job ended (e.g. which files were not delivered)."""
    if job.error:
        return job.error
    return job.message or "" if job.state in ("failed", "timed_out", "cancelled") else ""


@main.command()
@click.argument("path", type=click.Path(exists=True, path_type=Path))
def validate(path: Path) -> None:
    """Check a job directory or a config file; exit 0 when valid, 1 when not."""
    if path.name == "job.yaml" and not path.is_dir():
        path = path.parent  # a manifest is checked together with its job directory (whatever kind of file it is)
    if path.is_dir():
        from syncd.intake.manifest import load_job_directory

        try:
            job = load_job_directory(path)
        except ManifestError as exc:
            click.echo(f"{shown(path)}: invalid job directory:")
            for problem in exc.problems:  # one line each: a file name can't add a problem or hide one
                click.echo(f"  {shown(problem)}")
            sys.exit(EXIT_INVALID)
        click.echo(f"{shown(path)}: valid job '{shown(job.name)}' with {len(job.inputs)} input file(s)")
        return
    from syncd.service.daemon import load

    try:
        config = load(path)
    except ConfigError as exc:
        click.echo(f"{shown(path)}: invalid config:")
        for problem in exc.problems:
            click.echo(f"  {shown(problem)}")
        sys.exit(EXIT_INVALID)
    click.echo(f"{path}: valid config with {len(config.inboxes)} inbox(es)")


@main.command()
@config_option
@click.argument("job")
def cancel(config_path: Path, job: str) -> None:
    """Cancel JOB (id or name); a running job is stopped and its logs delivered."""
    config = _load(config_path)
    store = _store(config)
    record = _one_job(store, job)
    from syncd.state.states import TERMINAL

    if record.state in TERMINAL:  # a request would sit unread: nothing is left to stop
        click.echo(
            f"syncd: {shown(record.name)} ({record.id}) has already ended ({record.state}); nothing to cancel. "
            f"'syncd status -c {config.source} {record.id}' shows how it ended",
            err=True,
        )
        sys.exit(EXIT_INVALID)
    store.request(record.id, "cancel")
    click.echo(
        f"cancel requested for {shown(record.name)} ({record.id}, {record.state}); the daemon acts on it shortly"
    )
    if (why := _cannot_stop(config, record)) is not None:
        click.echo(
            f"note: {why}; the job runs to its end and its results will be marked cancelled, not delivered as a success"
        )


def _cannot_stop(config: Config, record: Job) -> str | None:
    """Why the job's backend cannot stop it, by the capability its type declares (None if it can)."""
    from syncd import plugins
    from syncd.engine.requests import cannot_stop
    from syncd.state.store import HELD, REMOTE

    options = config.backend_options.get(record.backend)
    if options is None or record.state not in (*REMOTE, HELD):
        return None
    try:
        backend_type: type[Backend] = plugins.load("backend", options.type)
    except KeyError:
        return None
    return cannot_stop(backend_type.capabilities.cancel, record)


@main.command()
@config_option
@click.argument("job")
def retry(config_path: Path, job: str) -> None:
    """Resume a held JOB, or run a failed/cancelled/timed-out JOB again (results go to a new folder)."""
    store = _store(_load(config_path))
    record = _one_job(store, job)
    store.request(record.id, "retry")
    click.echo(f"retry requested for {shown(record.name)} ({record.id}, {record.state}); the daemon acts on it shortly")


@main.command()
@config_option
@click.argument("job")
def logs(config_path: Path, job: str) -> None:
    """Print JOB's event log, then its stdout and stderr."""
    from syncd.backends.base import RemoteRef
    from syncd.service.daemon import build_backends

    config = _load(config_path)
    store = _store(config)
    record = _one_job(store, job)
    for event in store.events(record.id):
        change = f"{event.from_state or '∅'} → {event.to_state}: " if event.to_state else ""
        click.echo(f"{_iso(event.at)}  {change}{shown(event.message)}")
    streams: dict[str, Path | None] = {"stdout": None, "stderr": None}
    if record.folder:
        outbox = config.inbox(record.inbox).outbox / record.bucket / record.folder
        for stream in streams:
            candidate = outbox / f"syncd-{stream}.txt"
            streams[stream] = candidate if candidate.exists() else None
    if record.remote_id and not any(streams.values()):
        backend = build_backends(config, {record.backend})[record.backend]
        found = backend.logs(RemoteRef(record.remote_id, record.handle_data))
        streams = {"stdout": found.stdout, "stderr": found.stderr}
    for stream, path in streams.items():
        click.echo(f"----- {stream}" + (f" ({path})" if path else " (none)"))
        if path is not None:
            _echo_file(path)


def _echo_file(path: Path) -> None:
    """Print a log file; anything but a regular file (a FIFO or device in its place) is named, never read."""
    from syncd.fsutil import open_regular

    try:
        fd = open_regular(path, follow=False)
    except OSError as exc:
        click.echo(f"syncd: {path}: {exc.strerror}", err=True)
        return
    last = b"\n"
    with open(fd, "rb") as handle:
        while chunk := handle.read(1 << 20):
            click.echo(chunk.decode("utf-8", "replace"), nl=False)
            last = chunk[-1:]
    if last != b"\n":
        click.echo("")


@main.command()
@config_option
@click.argument("src")
@click.argument("dest")
@click.option("--delete", is_flag=True, help="remove local files the bucket no longer has (never job results)")
@click.option("--progress/--no-progress", default=None, help="show a progress bar (default: on a terminal)")
@click.option(
    "--fsync",
    is_flag=True,
    help="flush each downloaded file to disk before it is renamed into place "
    "(survives a power cut; slower, like rsync --fsync)",
)
def sync(config_path: Path, src: str, dest: str, delete: bool, progress: bool | None, fsync: bool) -> None:
    """Mirror SRC into DEST once: STORAGE:BUCKET[/PREFIX] to a local folder, or a local folder to one.

    STORAGE names a section under storages: in the config. Unchanged files are skipped
    (no download, no upload); every file is written under a temporary name and renamed.
    """
    import gc
    import time

    # Loading the config builds thousands of long-lived objects (modules, pydantic schemas); the
    # collector would scan them again and again for nothing (~20 ms of a ~0.2 s no-change run).
    gc.disable()
    from syncd.delivery.sync import parse_remote
    from syncd.errors import SyncdError
    from syncd.log import logger

    logger.setup_on_first_use(_sync_logging)
    config = _load_for_sync(config_path)
    gc.freeze()  # what exists now lives until exit: out of the collector's sight
    gc.enable()
    try:
        source, target = parse_remote(src, config), parse_remote(dest, config)
    except (ValueError, SyncdError) as exc:
        click.echo(f"syncd: {exc}", err=True)
        sys.exit(EXIT_USAGE)
    if delete and target is not None:
        click.echo(
            "syncd: --delete removes local files the bucket no longer has, so it works only from "
            "STORAGE:BUCKET to a folder; a folder to STORAGE:BUCKET never deletes remote objects. "
            "Leave out --delete",
            err=True,
        )
        sys.exit(EXIT_USAGE)
    if (source is None) == (target is None):
        names = ", ".join(sorted(config.storages)) or "none"
        click.echo(
            f"syncd: exactly one of SRC and DEST must be STORAGE:BUCKET[/PREFIX] with a storage from the "
            f"config ({names}); the other a local folder",
            err=True,
        )
        sys.exit(EXIT_USAGE)
    started = time.monotonic()
    try:
        report = _run_sync(
            config, source, target, src, dest, delete, sys.stderr.isatty() if progress is None else progress, fsync
        )
    except SyncdError as exc:
        click.echo(f"syncd: sync {src} {dest} failed: {exc}", err=True)
        sys.exit(EXIT_INVALID)
    for key, why in report.refused:  # keys come from the bucket: escaped, one line each
        click.echo(f"syncd: refused {shown(key)}: {shown(why)}", err=True)
    for key, error in report.failed:
        click.echo(f"syncd: failed {shown(key)}: {shown(error)}", err=True)
    verb = "downloaded" if source is not None else "uploaded"
    click.echo(
        f"{verb} {len(report.fetched)} file(s), {report.bytes} bytes, unchanged {len(report.skipped)}, "
        f"refused {len(report.refused)}, deleted {len(report.deleted)}, failed {len(report.failed)} "
        f"in {time.monotonic() - started:.2f}s"
    )
    if report.failed:
        click.echo(
            f"syncd: {len(report.failed)} file(s) failed after syncd's retries; fix the cause above, then run "
            f"the same command again (what arrived is skipped)",
            err=True,
        )
        sys.exit(EXIT_INVALID)


def _load_for_sync(config_path: Path):
    """The config from its snapshot (syncd.config_snapshot) when it is still true, else read in full."""
    from syncd import config_snapshot

    config = config_snapshot.load(config_path.resolve())
    if config is None:
        config, source = _load_light(config_path)
        config_snapshot.save(config, source)
    return config


def _sync_logging() -> None:
    from syncd.service.logsetup import setup_logging

    setup_logging("WARNING", "text")


def _run_sync(config, source, target, src: str, dest: str, delete: bool, show: bool, fsync: bool):
    from syncd import plugins
    from syncd.delivery.mirror import Mirror
    from syncd.delivery.outbox import check_outbox_key
    from syncd.delivery.sync import upload
    from syncd.fsutil import TMP_DIR
    from syncd.state.store import Store

    store = Store(config.db_path, durable=fsync)
    remote = source or target
    options = config.storage_options[remote.storage]
    storage = plugins.load("storage", options.type)(remote.storage, options)
    bar, on_plan, on_done = _progress(f"{src} → {dest}", show)
    try:
        with bar:
            if source is not None:
                local = Path(dest).resolve()
                local.mkdir(parents=True, exist_ok=True)
                try:
                    return Mirror(store, config.retry, fsync=fsync).run(
                        storage,
                        source.bucket,
                        source.prefix,
                        local,
                        tmp_dir=local / TMP_DIR,
                        strip=source.prefix,
                        delete=delete,
                        check_key=check_outbox_key,
                        on_plan=on_plan,
                        on_done=on_done,
                    )
                finally:
                    with contextlib.suppress(OSError):  # only when empty: a sync running beside may use it
                        (local / TMP_DIR).rmdir()
            local = Path(src).resolve()
            if not local.is_dir():
                raise click.ClickException(f"{src} is not a folder")
            storage.ensure_bucket(target.bucket)
            return upload(
                storage,
                store,
                local,
                target.bucket,
                target.prefix,
                retry=config.retry,
                on_plan=on_plan,
                on_done=on_done,
            )
    finally:
        storage.close()
        store.close()


@main.command()
@config_option
@click.option("--user", default=None, help="the service user (default: the owner of the config file)")
@click.option(
    "--output",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="write syncd.service and syncd@.service into this folder instead of printing syncd.service",
)
def units(config_path: Path, user: str | None, output: Path | None) -> None:
    """Print (or write) systemd unit files tailored to CONFIG: its paths, this syncd, a service user."""
    from syncd.service.unit_files import render_units, unit_warnings

    config = _load(config_path)
    syncd_path = _syncd_executable()
    try:
        rendered = render_units(config, user=user, syncd_path=syncd_path)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    service_user = rendered["syncd.service"].split("\nUser=", 1)[1].split("\n", 1)[0]
    for warning in unit_warnings(config, user=user, rendered_user=service_user, syncd_path=syncd_path):
        click.echo(f"syncd: warning: {warning}", err=True)
    if output is None:
        click.echo(rendered["syncd.service"], nl=False)
        return
    output.mkdir(parents=True, exist_ok=True)
    for name, text in rendered.items():
        (output / name).write_text(text)
    click.echo(
        f"wrote {', '.join(rendered)} to {output}/. Install with:\n"
        f"  sudo cp {output}/syncd.service /etc/systemd/system/ && sudo systemctl daemon-reload\n"
        f"  sudo systemctl enable --now syncd"
    )


def _progress(label: str, show: bool):
    """(context, on_plan, on_done) of a progress bar on stderr; without a bar, rich is not even imported."""
    if not show:
        return contextlib.nullcontext(), None, None
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    bar = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=False,
    )
    files = bar.add_task(label, total=None)

    def on_plan(count: int, size: int) -> None:
        bar.update(files, total=size)

    def on_done(key: str, size: int) -> None:
        bar.advance(files, size)

    return bar, on_plan, on_done


def _syncd_executable() -> str:
    import shutil

    beside = Path(sys.executable).parent / "syncd"
    return str(beside) if beside.exists() else (shutil.which("syncd") or "/usr/local/bin/syncd")


if __name__ == "__main__":
    main()
