"""What ``syncd sync`` reads of a config, remembered between runs.

Reading a config costs PyYAML, then a pydantic validator for every model of the
file: about a quarter of a small sync's start. A one-shot sync needs only the storages, the
retry policy and the state folder; once a config has been validated in full, those
are written here and the next ``syncd sync`` with the same config builds its
models straight from them (``model_construct``: no YAML, no validator).

A snapshot is used only when nothing it came from has changed: the config file's
bytes (SHA-256), its path, the home folder (``~`` in paths), the value of every
``${VAR}`` it uses but the secrets', the versions of syncd and pydantic, and the
source files that validate it (``syncd/config.py``, ``syncd/units.py``, each
storage type's module). Anything else, or any doubt (unreadable, another format),
is a miss: the config is read and validated as always, and the snapshot written again.

Secrets are never written. A secret field is remembered as the name of the
variable it comes from and read from the environment at each run; a storage
or backend whose secret is written in the config itself (not ``${VAR}``), or a secret's
variable also used for a value that is not secret (whose digest is written), makes
the config unsuitable, and it is always read in full. Backends are not part of a
snapshot, but the variables of their secrets must still be set for it to be used
(reading the config in full would fail otherwise); their values are never digested. Snapshots live in
``$XDG_CACHE_HOME/syncd`` (default ``~/.cache/syncd``), readable by their owner
only; deleting them is always safe.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
import types
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar, Union, get_args, get_origin

from pydantic import VERSION as PYDANTIC_VERSION
from pydantic import BaseModel, SecretStr

from syncd import __version__
from syncd.config import Config, ConfigSource, HttpConfig, PollPolicy, RetryPolicy, StorageOptions, TakeoverConfig
from syncd.log import logger

FORMAT = 2
#: modules whose code decides what a config validates to, besides each storage type's own
_VALIDATING_MODULES = ("syncd.config", "syncd.units")
_WHOLE_VARIABLE = re.compile(r"^\$\{([A-Za-z_][A-Za-z0-9_]*)\}$")
_PLAIN = {str, int, float, bool, type(None)}


def snapshot_file(config_path: Path) -> Path | None:
    """Where the snapshot of ``config_path`` (resolved) lives; None without a home or cache folder."""
    base = os.environ.get("XDG_CACHE_HOME")
    if not base:
        home = os.path.expanduser("~")
        if home == "~" or not os.path.isabs(home):
            return None
        base = os.path.join(home, ".cache")
    return Path(base) / "syncd" / f"sync-{hashlib.sha256(os.fsencode(config_path)).hexdigest()[:32]}.json"


def save(config: Config, source: ConfigSource) -> None:
    """Remember what ``syncd sync`` reads of ``config``, if it can be without a secret; never raises."""
    target = snapshot_file(config.source) if config.source is not None else None
    if target is None or source.sha256 is None:
        return
    storages: dict[str, dict[str, Any]] = {}
    for name, options in config.storage_options.items():
        remembered = _remember(options, source.raw.get("storages", {}).get(name, {}))
        if remembered is None:  # not logged: the first message of a sync costs loguru's import (~20 ms)
            _forget(target)
            return
        storages[name] = remembered
    secret_places = {
        ("storages", name, key): variable
        for name, entry in storages.items()
        for key, variable in entry["secrets"].items()
    }
    raw_backends = source.raw.get("backends")
    for name, raw in (raw_backends if isinstance(raw_backends, dict) else {}).items():
        places = _backend_secrets(raw)  # backends are not in the snapshot, but their secrets' variables are used
        if places is None:
            _forget(target)
            return
        secret_places.update({("backends", name, *place): variable for place, variable in places.items()})
    variables = sorted(
        {
            name
            for location, name in source.variables
            if not any(tuple(location[: len(place)]) == place for place in secret_places)
        }
    )
    if set(variables) & set(secret_places.values()):
        _forget(target)  # a secret's variable used elsewhere too: not even a digest of its value is written
        return
    modules: set[str] = {entry["module"] for entry in storages.values()}
    for module_name in _VALIDATING_MODULES:
        module_file = sys.modules[module_name].__file__
        if module_file is None:  # nothing to stamp, so no snapshot could tell that it changed
            _forget(target)
            return
        modules.add(module_file)
    document = {
        "format": FORMAT,
        "syncd": __version__,
        "pydantic": PYDANTIC_VERSION,
        "config": str(config.source),
        "sha256": source.sha256,
        "home": os.path.expanduser("~"),
        "variables": variables,
        "environment": _digest(variables),
        "code": {path: _stamp(path) for path in sorted(modules)},
        "state_dir": str(config.state_dir),
        "retry": config.retry.model_dump(),
        "storages": storages,
        "shown": config.storages,
        "backend_secrets": sorted({v for place, v in secret_places.items() if place[0] == "backends"}),
    }
    partial = target.with_name(f".{target.name}.{os.getpid()}")
    try:
        target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with open(fd, "w", encoding="utf-8") as out:
            json.dump(document, out)
        os.replace(partial, target)
    except (OSError, TypeError, ValueError) as exc:  # a full disk, a read-only home: the next sync reads in full
        _forget(partial)
        logger.debug("config {}: no snapshot for syncd sync ({})", config.source, exc)


def load(config_path: Path) -> Config | None:
    """The part of the config ``syncd sync`` reads, from a snapshot still true of it; else None."""
    from syncd import plugins

    target = snapshot_file(config_path)
    try:
        document = json.loads(target.read_bytes()) if target is not None else None
        current = hashlib.sha256(config_path.read_bytes()).hexdigest()
    except (OSError, ValueError):
        return None
    if not isinstance(document, dict) or (
        document.get("format"),
        document.get("syncd"),
        document.get("pydantic"),
        document.get("config"),
        document.get("sha256"),
        document.get("home"),
    ) != (FORMAT, __version__, PYDANTIC_VERSION, str(config_path), current, os.path.expanduser("~")):
        return None
    try:
        if any(name not in os.environ for name in document["backend_secrets"]):
            return None  # reading the config in full says that it is not set
        if document["environment"] != _digest(document["variables"]) or any(
            _stamp(path) != stamp for path, stamp in document["code"].items()
        ):
            return None
        storage_options: dict[str, StorageOptions] = {}
        for name, entry in document["storages"].items():
            model = plugins.options_model("storage", entry["type"])
            if sys.modules[model.__module__].__file__ != entry["module"]:
                return None
            if any(variable not in os.environ for variable in entry["secrets"].values()):
                return None  # unset since: reading the config in full says so
            secrets = {key: os.environ[variable] for key, variable in entry["secrets"].items()}
            storage_options[name] = _construct(model, entry["values"], secrets)
        return Config.model_construct(
            state_dir=Path(document["state_dir"]),
            storages=document["shown"],
            backends={},
            inboxes=[],
            poll=PollPolicy.model_construct(),
            retry=RetryPolicy.model_construct(**document["retry"]),
            http=HttpConfig.model_construct(),
            mirrors=[],
            takeover=TakeoverConfig.model_construct(),
            storage_options=storage_options,
            backend_options={},
            source=config_path,
        )
    except (KeyError, TypeError, AttributeError, ValueError):
        return None


def _forget(target: Path) -> None:
    try:
        target.unlink(missing_ok=True)
    except OSError:
        pass


def _remember(options: StorageOptions, raw: Any) -> dict[str, Any] | None:
    module_file = sys.modules[type(options).__module__].__file__
    if module_file is None:  # nothing to stamp, so no snapshot could tell that it changed
        return None
    values: dict[str, Any] = {}
    secrets: dict[str, str] = {}
    for key, info in type(options).model_fields.items():
        kinds = _leaf_types(info.annotation)
        if not kinds <= _PLAIN | {Path, SecretStr} or (Path in kinds and str in kinds):
            return None
        value = getattr(options, key)
        if isinstance(value, SecretStr):
            written = raw.get(key) if isinstance(raw, dict) else None
            match = _WHOLE_VARIABLE.match(written) if isinstance(written, str) else None
            if match is None:
                return None
            secrets[key] = match.group(1)
        else:
            values[key] = str(value) if isinstance(value, Path) else value
    return {"type": options.type, "module": module_file, "values": values, "secrets": secrets}


def _backend_secrets(raw: Any) -> dict[tuple, str] | None:
    """Where a backend section holds a secret (a ``SecretStr`` field of its type) → the variable it is written as;
    None when one is written in the config itself (or the type is unknown): no snapshot then, as for storages."""
    from syncd import plugins

    if not isinstance(raw, dict) or not isinstance(raw.get("type"), str):
        return None
    try:
        model = plugins.options_model("backend", raw["type"])
    except KeyError:
        return None
    return _secret_places(model, raw, ())


def _secret_places(model: type[BaseModel], raw: dict, prefix: tuple) -> dict[tuple, str] | None:
    places: dict[tuple, str] = {}
    for key, info in model.model_fields.items():
        written = raw.get(key)
        kinds = _leaf_types(info.annotation)
        if isinstance(written, dict):  # a nested section: its own model's secrets, if it has one
            for kind in kinds:
                if isinstance(kind, type) and issubclass(kind, BaseModel):
                    inner = _secret_places(kind, written, prefix + (key,))
                    if inner is None:
                        return None
                    places.update(inner)
            continue
        if SecretStr not in kinds or written is None:
            continue
        match = _WHOLE_VARIABLE.match(written) if isinstance(written, str) else None
        if match is None:
            return None
        places[prefix + (key,)] = match.group(1)
    return places


_Model = TypeVar("_Model", bound=BaseModel)


def _construct(model: type[_Model], values: dict[str, Any], secrets: dict[str, str]) -> _Model:
    fields = dict(values)
    for key, value in values.items():
        if value is not None and Path in _leaf_types(model.model_fields[key].annotation):
            fields[key] = Path(value)
    fields.update({key: SecretStr(value) for key, value in secrets.items()})
    if set(fields) != set(model.model_fields):
        raise KeyError("the model's fields changed")
    return model.model_construct(**fields)


def _leaf_types(annotation: Any) -> set:
    origin = get_origin(annotation)
    if origin is Annotated:
        return _leaf_types(get_args(annotation)[0])
    if origin in (Union, types.UnionType):
        return set().union(*(_leaf_types(arg) for arg in get_args(annotation)))
    if origin is Literal:
        return {type(arg) for arg in get_args(annotation)}
    return {annotation}


def _digest(variables: list[str]) -> str:
    values = [(name, os.environ.get(name)) for name in variables]
    return hashlib.sha256(json.dumps(values).encode()).hexdigest()


def _stamp(path: str) -> list[int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return [st.st_mtime_ns, st.st_size]
