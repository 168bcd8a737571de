"""Daemon configuration: YAML → typed models.

Paths are relative to the config file, ``${VAR}`` (or ``${VAR:-default}``) is
taken from the environment, unknown keys are errors, and every error names the
file, the line and the dotted path of the field.

Backend and storage sections are validated against the option model their
plugin declares; the caller passes a resolver so that this module stays at the
bottom of the import graph.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, Protocol, TypeVar, overload

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PositiveInt,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from syncd.errors import ConfigError
from syncd.units import parse_duration, parse_size

if TYPE_CHECKING:  # PyYAML is imported when a file is read: `syncd sync` from a snapshot never needs it
    from syncd.yamlfile import LoadedYaml, Location


def _relative_to_config(value: Path, info: ValidationInfo) -> Path:
    base = (info.context or {}).get("base_dir")
    value = value.expanduser()
    if base is not None and not value.is_absolute():
        value = Path(base) / value
    return Path(os.path.normpath(value))


Duration = Annotated[float, BeforeValidator(parse_duration), Field(ge=0)]
Size = Annotated[int, BeforeValidator(parse_size)]
ConfigPath = Annotated[Path, AfterValidator(_relative_to_config)]
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"


class StrictModel(BaseModel):
    # Validators are built on first use, not at import: `syncd sync` from a snapshot (syncd.config_snapshot)
    # constructs its few models without any, and a validator built is ~1 ms per model.
    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)


class StorageOptions(StrictModel):
    """Options every storage section has; each storage type extends this."""

    # A validation error never quotes what it was given (a secret, maybe); config errors never did anyway.
    model_config = ConfigDict(**StrictModel.model_config, hide_input_in_errors=True)
    type: str = Field(description="storage type, e.g. file or s3")


class BackendOptions(StrictModel):
    """Options every backend section has; each backend type extends this."""

    model_config = ConfigDict(**StrictModel.model_config, hide_input_in_errors=True)
    type: str = Field(description="backend type, e.g. local or slurm")
    max_parallel: PositiveInt = Field(4, description="jobs submitted to this backend at once")
    results_deadline: Duration = Field(
        86400.0,
        description="how long a finished job may wait for a service that hands its results over late "
        "before it is held for attention",
    )


class PollPolicy(StrictModel):
    first: Duration = Field(1.0, description="first status poll after submit")
    max: Duration = Field(30.0, description="longest interval between polls of a running job")
    factor: float = Field(1.5, ge=1.0, description="interval growth per poll while nothing changes")


class RetryPolicy(StrictModel):
    initial: Duration = Field(2.0, description="first wait after a transient failure")
    max: Duration = Field(300.0, description="longest wait between attempts")
    budget: Duration = Field(
        86400.0, description="how long transient failures may last before the job is held for attention"
    )
    circuit_after: int = Field(
        3,
        ge=0,
        description="transport failures in a row after which syncd stops calling a backend or storage "
        "and probes it once per backoff interval instead (0: never)",
    )


class WebhookConfig(StrictModel):
    url: str = Field(pattern=r"^https?://", description="where a JSON notification is POSTed on every terminal state")
    timeout: Duration = Field(10.0, gt=0, description="seconds to wait for the receiver")


def is_loopback(host: str) -> bool:
    """Whether ``host`` (of a ``host:port``) only accepts connections from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a host name other than localhost may resolve to any interface
        return False


class HttpConfig(StrictModel):
    listen: str | None = Field(
        "127.0.0.1:9847",
        pattern=r"^[^:]+:\d+$",
        description="host:port of the status page, /healthz, /readyz, /metrics and /jobs (null: off)",
    )
    auth_file: ConfigPath | None = Field(
        None,
        description="a file holding one line: a token, or user:password; every page but /healthz and /readyz "
        "then asks for it (required when listen is not a loopback address or actions are on)",
    )
    actions: bool = Field(False, description="let the status page cancel and retry jobs (needs auth_file)")

    @model_validator(mode="after")
    def _authorised_when_exposed(self) -> HttpConfig:
        if self.auth_file is None:
            if self.actions:
                raise ValueError("actions: true needs auth_file (a file with a token or user:password)")
            if self.listen is not None and not is_loopback(self.listen.rsplit(":", 1)[0]):
                raise ValueError(
                    f"listen: {self.listen} is reachable from other machines; set auth_file (a file with a "
                    f"token or user:password) or listen on 127.0.0.1"
                )
        return self


class InboxConfig(StrictModel):
    name: str = Field(pattern=NAME_PATTERN, description="name used in logs and status")
    path: ConfigPath = Field(description="the watched directory")
    outbox: ConfigPath = Field(description="results are mirrored to <outbox>/<bucket>/<job>/")
    failed: ConfigPath = Field(description="rejected job directories are moved here")
    backend: str = Field(description="name of a section under backends:")
    storage: str = Field(description="name of a section under storages:")
    bucket: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$", description="bucket for results")
    prefix: str = Field("", description="key prefix inside the bucket, e.g. lab/results")
    settle: Duration = Field(2.0, description="quiet period before a job directory counts as complete")
    observer: Literal["auto", "native", "polling"] = Field(
        "auto", description="auto picks polling on network filesystems"
    )
    poll_interval: Duration = Field(2.0, gt=0, description="how often the polling observer looks")
    rescan: Duration = Field(30.0, gt=0, description="full rescan interval, a backup for missed events")
    spool: ConfigPath | None = Field(
        None, description="where claimed jobs live; must be on the inbox's filesystem (default <path>/.syncd)"
    )
    after: Literal["archive", "remove"] = Field(
        "archive", description="what happens to a claimed job directory once the job has finished"
    )
    max_input_files: PositiveInt = Field(100_000, description="largest number of files in one job")
    max_input_bytes: Size | None = Field(None, description="largest total input size (none: no limit)")
    min_free_space: Size = Field(
        100 * 1024 * 1024, description="free space the outbox needs before a job is submitted (pre-flight)"
    )
    journal: bool = Field(True, description="write <folder>.status.txt beside each in-flight job in the inbox")

    @field_validator("prefix")
    @classmethod
    def _clean_prefix(cls, value: str) -> str:
        value = value.strip("/")
        if any(part in ("", ".", "..") for part in value.split("/")) and value:
            raise ValueError("prefix must be plain path segments like lab/results")
        return value

    @property
    def spool_dir(self) -> Path:
        return self.spool if self.spool is not None else self.path / ".syncd"


class MirrorConfig(StrictModel):
    """A standing mirror: keep a bucket prefix mirrored into an outbox on a schedule."""

    name: str = Field(pattern=NAME_PATTERN, description="name used in logs")
    storage: str = Field(description="name of a section under storages:")
    bucket: str = Field(min_length=1, description="the bucket to mirror")
    prefix: str = Field("", description="only keys under this prefix, e.g. instrument/runs/")
    outbox: ConfigPath = Field(description="objects are mirrored to <outbox>/<bucket>/<key>")
    every: Duration = Field(300.0, gt=0, description="how often the mirror runs")
    delete: bool = Field(
        False, description="remove local files the bucket no longer has (never inside a job's results folder)"
    )
    attempts: PositiveInt = Field(4, le=20, description="tries per object within one run (waits follow retry:)")
    fsync: bool = Field(
        True, description="flush each file to disk before it is renamed into place (survives a power cut)"
    )


class TakeoverConfig(StrictModel):
    """Several daemons on one shared inbox: each holds a lease on the share, and the jobs of a daemon whose
    lease has lapsed are finished by another (README: "Several hosts, one share")."""

    enabled: bool = Field(False, description="hold a lease on each inbox's share and take over a dead daemon's jobs")
    node: str | None = Field(
        None,
        pattern=NAME_PATTERN,
        description="this daemon's name on the share (default: host name and a tag of state_dir); unique per share",
    )
    renew: Duration = Field(2.0, gt=0, description="how often the lease is renewed")
    lease: Duration = Field(
        10.0, gt=0, description="a daemon stops touching its jobs when it could not renew for this long"
    )
    grace: Duration = Field(
        20.0, description="a lease unchanged for lease + grace has lapsed: another daemon takes over its jobs"
    )
    local_jobs: Literal["retry", "hold"] = Field(
        "retry",
        description="a taken-over job of a host-bound backend that the new owner cannot find: run it again "
        "(a new attempt) or hold it for a person",
    )

    @model_validator(mode="after")
    def _renewals_fit_in_the_lease(self) -> TakeoverConfig:
        if self.enabled and self.renew * 2 > self.lease:
            raise ValueError(f"takeover: renew ({self.renew:g}s) must be at most half of lease ({self.lease:g}s)")
        return self


class Config(StrictModel):
    state_dir: ConfigPath = Field(Path(".state"), description="SQLite state, work dirs and runner files")
    storages: dict[str, dict[str, Any]] = Field(description="named storages")
    backends: dict[str, dict[str, Any]] = Field(description="named backends")
    inboxes: list[InboxConfig] = Field(min_length=1, description="watched folders")
    poll: PollPolicy = Field(default_factory=PollPolicy)
    retry: RetryPolicy = Field(default_factory=RetryPolicy)
    workers: PositiveInt = Field(
        4,
        le=64,
        description="threads that stage, submit and collect (jobs whose backend and storage are both on this machine: one thread of their own, and a second while the first is held up by one step for 0.1 s)",
    )
    webhook: WebhookConfig | None = Field(None, description="notify a URL on every terminal state")
    http: HttpConfig = Field(default_factory=HttpConfig, description="the health and metrics endpoint")
    mirrors: list[MirrorConfig] = Field(default_factory=list, description="standing mirrors of bucket prefixes")
    takeover: TakeoverConfig = Field(
        default_factory=TakeoverConfig, description="several daemons on one shared inbox (leases, takeover)"
    )
    # Filled in by load_config from the plugin option models.
    storage_options: dict[str, StorageOptions] = Field(default_factory=dict, exclude=True)
    backend_options: dict[str, BackendOptions] = Field(default_factory=dict, exclude=True)
    source: Path | None = Field(None, exclude=True)

    @property
    def db_path(self) -> Path:
        return self.state_dir / "syncd.db"

    @property
    def run_as_users(self) -> set[str]:
        """Users that backends run jobs as instead of the daemon's own (``run_as`` of the local backend)."""
        return {run_as for opts in self.backend_options.values() if (run_as := getattr(opts, "run_as", None))}

    def inbox(self, name: str) -> InboxConfig:
        for inbox in self.inboxes:
            if inbox.name == name:
                return inbox
        raise KeyError(name)


class OptionsResolver(Protocol):
    """The option model of a storage or backend type (``plugins.options_model``); KeyError if the type is unknown."""

    @overload
    def __call__(self, kind: Literal["storage"], type_name: str, /) -> type[StorageOptions]: ...
    @overload
    def __call__(self, kind: Literal["backend"], type_name: str, /) -> type[BackendOptions]: ...


_Options = TypeVar("_Options", StorageOptions, BackendOptions)

_VAR = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def interpolate(
    value: Any, env: dict[str, str], location: Location = (), missing: list | None = None, used: list | None = None
) -> Any:
    """Replace ``${VAR}`` / ``${VAR:-default}`` in every string; ``$$`` is a literal ``$``.

    ``missing`` collects ``(location, name)`` of variables neither set nor defaulted, ``used`` of every one.
    """
    if isinstance(value, dict):
        return {k: interpolate(v, env, location + (k,), missing, used) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env, location + (i,), missing, used) for i, v in enumerate(value)]
    if not isinstance(value, str):
        return value

    def replace(match: re.Match) -> str:
        if match.group(0) == "$$":
            return "$"
        name, default = match.group(1), match.group(2)
        if used is not None:
            used.append((location, name))
        if name in env:
            return env[name]
        if default is not None:
            return default
        if missing is not None:
            missing.append((location, name))
        return ""

    return _VAR.sub(replace, value)


REDACTED = "**********"
#: names of keys whose values are kept from sight when a section's type is not known (its SecretStr fields are)
SECRET_NAME = re.compile(r"secret|passw|passphrase|(^|_)(token|key|auth|credentials?)$", re.IGNORECASE)


def redacted(options: BaseModel) -> dict[str, Any]:
    """A backend's or storage's options as they may be shown: secrets (``SecretStr`` fields, and keys a section
    of an unchecked type has that are named like one: ``token``, ``password``, ``api_key``…) as ``**********``."""
    shown = options.model_dump(mode="json")
    for key in options.model_extra or {}:
        if SECRET_NAME.search(str(key)) and shown.get(key) is not None:
            shown[key] = REDACTED
    return shown


def hide_secret_named(data: Any) -> Any:
    """``data`` with the value of every key named like a secret (at any depth) made a ``SecretStr``: for a
    section taken without its type's model, whose repr and dump must not show them either."""
    if isinstance(data, dict):
        return {
            key: (
                SecretStr(value if isinstance(value, str) else json.dumps(value, default=str))
                if SECRET_NAME.search(str(key)) and value is not None
                else hide_secret_named(value)
            )
            for key, value in data.items()
        }
    if isinstance(data, list):
        return [hide_secret_named(item) for item in data]
    return data


def _undefined(kind: str, name: str, defined) -> str:
    return f"no {kind} named '{name}'; defined: {', '.join(sorted(defined)) or 'none'}"


def format_location(location: Location) -> str:
    return ".".join(str(part) for part in location) or "(top level)"


def _problems_from_validation(exc: ValidationError, loaded: LoadedYaml, prefix: Location, filename: str) -> list[str]:
    problems = []
    for error in exc.errors():
        location = prefix + tuple(error["loc"])
        line = loaded.line_of(location)
        where = f"{filename}:{line}" if line else filename
        message = error["msg"]
        if error["type"] == "extra_forbidden":
            message = f"unknown key '{location[-1]}'; check its spelling or remove it"
        elif error["type"] == "missing":
            message = "required but missing; add it"
        elif message.startswith("Value error, "):
            message = message[len("Value error, ") :]
        problems.append(f"{where}: {format_location(location)}: {message}")
    return problems


@dataclass(frozen=True)
class ConfigSource:
    """How a validated config came to be: the bytes it was read from (their SHA-256), what the YAML said
    before interpolation, and where each ``${VAR}`` was used. In memory only (the raw text may hold secrets)."""

    sha256: str | None
    raw: Any
    variables: list[tuple[Location, str]] = field(default_factory=list)


def load_config(
    path: Path | str,
    resolve_options: OptionsResolver,
    env: dict[str, str] | None = None,
) -> Config:
    """Read, interpolate and validate a config file; raise ConfigError listing every problem."""
    return load_config_and_source(path, resolve_options, env)[0]


def load_config_and_source(
    path: Path | str,
    resolve_options: OptionsResolver,
    env: dict[str, str] | None = None,
) -> tuple[Config, ConfigSource]:
    """:func:`load_config`, and the :class:`ConfigSource` of what it returns."""
    from syncd.yamlfile import YamlProblem, load_file

    path = Path(path).resolve()
    filename = str(path)
    env = dict(os.environ) if env is None else env
    try:
        loaded = load_file(path)
    except FileNotFoundError:
        raise ConfigError(filename, [f"{filename}: no such file; create one with 'syncd init DIR'"]) from None
    except YamlProblem as exc:
        where = f"{filename}:{exc.line}" if exc.line else filename
        raise ConfigError(filename, [f"{where}: {exc.message}"]) from None
    if not isinstance(loaded.data, dict):
        raise ConfigError(filename, [f"{filename}: the config must be a mapping of keys like state_dir, inboxes"])

    missing: list = []
    used: list = []
    data = interpolate(loaded.data, env, (), missing, used)
    problems = [
        f"{filename}:{loaded.line_of(loc)}: {format_location(loc)}: environment variable {name} is not set; "
        f"export it or write ${{{name}:-default}}"
        for loc, name in missing
    ]
    context = {"base_dir": path.parent}
    for reserved in ("storage_options", "backend_options", "source"):
        data.pop(reserved, None)
    try:
        config = Config.model_validate(data, context=context)
    except ValidationError as exc:
        raise ConfigError(filename, problems + _problems_from_validation(exc, loaded, (), filename)) from None

    def validated(
        kind: Literal["storage", "backend"],
        sections: dict[str, dict[str, Any]],
        model_for: Callable[[str], type[_Options]],
    ) -> dict[str, _Options]:
        target: dict[str, _Options] = {}
        for name, section in sections.items():
            location: Location = (f"{kind}s", name)
            line = loaded.line_of(location)
            if not re.match(NAME_PATTERN, str(name)):
                problems.append(f"{filename}:{line}: {format_location(location)}: names use letters, digits, . _ -")
            if not isinstance(section, dict) or not isinstance(section.get("type"), str):
                problems.append(f"{filename}:{line}: {format_location(location)}: needs a 'type' key")
                continue
            try:
                model = model_for(section["type"])
            except KeyError as exc:
                problems.append(
                    f"{filename}:{loaded.line_of(location + ('type',))}: "
                    f"{format_location(location + ('type',))}: {exc.args[0]}"
                )
                continue
            try:
                target[name] = model.model_validate(section, context=context)
            except ValidationError as exc:
                problems.extend(_problems_from_validation(exc, loaded, location, filename))
        return target

    storage_options = validated("storage", config.storages, lambda type_name: resolve_options("storage", type_name))
    backend_options = validated("backend", config.backends, lambda type_name: resolve_options("backend", type_name))

    seen: set[str] = set()
    for index, inbox in enumerate(config.inboxes):

        def at(key: str, index: int = index) -> str:
            loc = ("inboxes", index, key)
            return f"{filename}:{loaded.line_of(loc)}: {format_location(loc)}"

        if inbox.name in seen:
            problems.append(f"{at('name')}: inbox name '{inbox.name}' is used twice; names must be unique")
        seen.add(inbox.name)
        if inbox.backend not in config.backends:
            problems.append(f"{at('backend')}: {_undefined('backend', inbox.backend, config.backends)}")
        if inbox.storage not in config.storages:
            problems.append(f"{at('storage')}: {_undefined('storage', inbox.storage, config.storages)}")
        for key in ("outbox", "failed"):
            other = getattr(inbox, key)
            if other == inbox.path or inbox.path in other.parents:
                problems.append(
                    f"{at(key)}: must not be inside the inbox {inbox.path}; the watcher would see results as new jobs"
                )
    for other_index, other in enumerate(config.inboxes):
        for index, inbox in enumerate(config.inboxes):
            if index != other_index and (inbox.path == other.path or other.path in inbox.path.parents):
                problems.append(
                    f"{filename}:{loaded.line_of(('inboxes', index, 'path'))}: inboxes.{index}.path: "
                    f"overlaps inbox '{other.name}'; give each inbox its own folder"
                )

    mirror_names: set[str] = set()
    for index, mirror in enumerate(config.mirrors):
        loc = ("mirrors", index)
        where = f"{filename}:{loaded.line_of(loc)}: {format_location(loc)}"
        if mirror.name in mirror_names:
            problems.append(f"{where}.name: mirror name '{mirror.name}' is used twice; names must be unique")
        mirror_names.add(mirror.name)
        if mirror.storage not in config.storages:
            problems.append(f"{where}.storage: {_undefined('storage', mirror.storage, config.storages)}")
        for inbox in config.inboxes:
            if mirror.outbox == inbox.path or inbox.path in mirror.outbox.parents:
                problems.append(f"{where}.outbox: must not be inside the inbox {inbox.path}")

    if problems:
        raise ConfigError(filename, problems)
    # The raw sections are replaced by their validated form, where secrets (SecretStr) print as '**********'.
    return config.model_copy(
        update={
            "storages": {name: redacted(options) for name, options in storage_options.items()},
            "backends": {name: redacted(options) for name, options in backend_options.items()},
            "storage_options": storage_options,
            "backend_options": backend_options,
            "source": path,
        }
    ), ConfigSource(loaded.sha256, loaded.data, used)
