"""The ``syncd`` command line: init, run, status, validate, cancel, retry, logs."""

from __future__ import annotations

import json
import sys
from datetime import datetime
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from syncd import __version__
from syncd.errors import ConfigError, ManifestError
from syncd.templates import INIT_CONFIG, INIT_FOLDERS

CONFIG_HELP = "config file (default: $SYNCD_CONFIG, then ./syncd.yaml)"
EXIT_INVALID = 1
EXIT_USAGE = 2


def config_option(func):
    return click.option("-c", "--config", "config_path", envvar="SYNCD_CONFIG", default="syncd.yaml",
                        show_default=False, type=click.Path(dir_okay=False, path_type=Path), help=CONFIG_HELP)(func)


def _load(config_path: Path):
    from syncd.daemon import load

    try:
        return load(config_path)
    except ConfigError as exc:
        click.echo(f"syncd: the config {exc.path} is invalid:", err=True)
        for problem in exc.problems:
            click.echo(f"  {problem}", err=True)
        sys.exit(EXIT_USAGE)


def _store(config):
    from syncd.store import Store

    if not config.db_path.exists():
        click.echo(f"syncd: no state yet at {config.db_path}; start the daemon with 'syncd run -c {config.source}'",
                   err=True)
        sys.exit(EXIT_INVALID)
    return Store(config.db_path)


def _one_job(store, ref: str):
    matches = store.find(ref)
    if not matches:
        click.echo(f"syncd: no job with id or name '{ref}'; 'syncd status' lists them", err=True)
        sys.exit(EXIT_INVALID)
    if len(matches) > 1:
        click.echo(f"syncd: {len(matches)} jobs are named '{ref}'; give one of their ids:", err=True)
        for job in matches:
            click.echo(f"  {job.id}  {job.state}", err=True)
        sys.exit(EXIT_INVALID)
    return matches[0]


def _console() -> Console:
    # Piped output keeps whole ids and names instead of wrapping to 80 columns.
    return Console() if sys.stdout.isatty() else Console(width=220)


def _iso(ts):
    return datetime.fromtimestamp(ts).astimezone().isoformat(timespec="seconds") if ts else None


def _job_json(job) -> dict:
    return {
        "id": job.id, "name": job.name, "state": job.state, "backend": job.backend, "remote_id": job.remote_id,
        "created": _iso(job.created), "updated": _iso(job.updated), "error": job.error,
        "inbox": job.inbox, "directory": job.dir_name, "attempts": job.attempts, "exit_code": job.exit_code,
        "outcome": job.outcome, "folder": job.folder, "bucket": job.bucket, "held_from": job.held_from,
        "submitted": _iso(job.submitted_at), "started": _iso(job.started_at), "ended": _iso(job.ended_at),
    }


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
    if config.exists() and not force:
        click.echo(f"syncd: {config} already exists; use --force to overwrite it", err=True)
        sys.exit(EXIT_INVALID)
    directory.mkdir(parents=True, exist_ok=True)
    for folder in INIT_FOLDERS:
        (directory / folder).mkdir(exist_ok=True)
    config.write_text(INIT_CONFIG)
    click.echo(f"Wrote {config} and the folders {', '.join(INIT_FOLDERS)} in {directory}/.\n\n"
               f"Next:\n"
               f"  syncd run -c {config}\n"
               f"then, from another terminal, move a job folder (job.yaml + inputs) into {directory / 'inbox'}/\n"
               f"and find its results in {directory / 'outbox' / 'results'}/<job name>/.")


@main.command()
@config_option
@click.option("--log-format", type=click.Choice(["auto", "text", "json", "journal"]), default="auto",
              help="text for people, json for log collectors, journal for systemd (auto: detect)")
@click.option("--log-level", default="INFO", type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"]))
def run(config_path: Path, log_format: str, log_level: str) -> None:
    """Run the daemon in the foreground until SIGTERM or Ctrl-C."""
    from syncd.daemon import run_daemon
    from syncd.logsetup import setup_logging

    setup_logging(log_level, log_format)
    run_daemon(_load(config_path))


@main.command()
@config_option
@click.option("--json", "as_json", is_flag=True, help="print a JSON array")
@click.option("--all", "show_all", is_flag=True, help="include every finished job (default: the last 50)")
@click.argument("job", required=False)
def status(config_path: Path, as_json: bool, show_all: bool, job: str | None) -> None:
    """Show jobs (or one JOB, by id or name, with its events)."""
    store = _store(_load(config_path))
    if job:
        record = _one_job(store, job)
        if as_json:
            data = _job_json(record)
            data["events"] = [{"at": _iso(e.at), "from": e.from_state, "to": e.to_state, "message": e.message}
                              for e in store.events(record.id)]
            click.echo(json.dumps([data], indent=2, ensure_ascii=False))
            return
        console = _console()
        for key, value in _job_json(record).items():
            if value is not None:
                console.print(f"[bold]{key:>10}[/bold]  {value}", highlight=False)
        table = Table("at", "change", "message", title="events", title_justify="left")
        for event in store.events(record.id):
            change = f"{event.from_state or ''} → {event.to_state}" if event.to_state else ""
            table.add_row(_iso(event.at), change, event.message)
        console.print(table)
        return
    jobs = store.jobs()
    jobs.sort(key=lambda j: j.created)
    if not show_all:
        jobs = jobs[-50:]
    if as_json:
        click.echo(json.dumps([_job_json(j) for j in jobs], indent=2, ensure_ascii=False))
        return
    table = Table("id", "name", "state", "backend", "remote id", "updated", "error")
    for j in jobs:
        style = {"succeeded": "green", "failed": "red", "rejected": "red", "held": "yellow",
                 "timed_out": "red", "cancelled": "yellow"}.get(j.state, "")
        table.add_row(j.id, j.name, f"[{style}]{j.state}[/{style}]" if style else j.state, j.backend,
                      j.remote_id or "", _iso(j.updated), (j.error or "")[:80])
    _console().print(table)
    if not jobs:
        click.echo("no jobs yet")
    for backend, (until, reason) in store.backend_pauses().items():
        click.echo(f"backend {backend} is paused (next try {_iso(until)}): {reason}")


@main.command()
@click.argument("path", type=click.Path(exists=True, path_type=Path))
def validate(path: Path) -> None:
    """Check a job directory or a config file; exit 0 when valid, 1 when not."""
    if path.name == "job.yaml" and path.is_file():
        path = path.parent  # a manifest is checked together with its job directory
    if path.is_dir():
        from syncd.manifest import load_job_directory

        try:
            job = load_job_directory(path)
        except ManifestError as exc:
            click.echo(f"{path}: invalid job directory:")
            for problem in exc.problems:
                click.echo(f"  {problem}")
            sys.exit(EXIT_INVALID)
        click.echo(f"{path}: valid job '{job.name}' with {len(job.inputs)} input file(s)")
        return
    from syncd.daemon import load

    try:
        config = load(path)
    except ConfigError as exc:
        click.echo(f"{path}: invalid config:")
        for problem in exc.problems:
            click.echo(f"  {problem}")
        sys.exit(EXIT_INVALID)
    click.echo(f"{path}: valid config with {len(config.inboxes)} inbox(es)")


@main.command()
@config_option
@click.argument("job")
def cancel(config_path: Path, job: str) -> None:
    """Cancel JOB (id or name); a running job is stopped and its logs delivered."""
    store = _store(_load(config_path))
    record = _one_job(store, job)
    store.request(record.id, "cancel")
    click.echo(f"cancel requested for {record.name} ({record.id}, {record.state}); the daemon acts on it shortly")


@main.command()
@config_option
@click.argument("job")
def retry(config_path: Path, job: str) -> None:
    """Resume a held JOB, or run a failed/cancelled/timed-out JOB again (results go to a new folder)."""
    store = _store(_load(config_path))
    record = _one_job(store, job)
    store.request(record.id, "retry")
    click.echo(f"retry requested for {record.name} ({record.id}, {record.state}); the daemon acts on it shortly")


@main.command()
@config_option
@click.argument("job")
def logs(config_path: Path, job: str) -> None:
    """Print JOB's event log, then its stdout and stderr."""
    from syncd.backends.base import RemoteRef
    from syncd.daemon import build_backends

    config = _load(config_path)
    store = _store(config)
    record = _one_job(store, job)
    for event in store.events(record.id):
        change = f"{event.from_state or '∅'} → {event.to_state}: " if event.to_state else ""
        click.echo(f"{_iso(event.at)}  {change}{event.message}")
    streams: dict[str, Path | None] = {"stdout": None, "stderr": None}
    if record.folder:
        outbox = config.inbox(record.inbox).outbox / record.bucket / record.folder
        for stream in streams:
            candidate = outbox / f"syncd-{stream}.txt"
            streams[stream] = candidate if candidate.exists() else None
    if record.remote_id and not any(streams.values()):
        backend = build_backends(config)[record.backend]
        found = backend.logs(RemoteRef(record.remote_id, record.handle_data))
        streams = {"stdout": found.stdout, "stderr": found.stderr}
    for stream, path in streams.items():
        click.echo(f"----- {stream}" + (f" ({path})" if path else " (none)"))
        if path is not None:
            text = path.read_text(errors="replace")
            click.echo(text, nl=bool(text) and not text.endswith("\n"))


if __name__ == "__main__":
    main()
