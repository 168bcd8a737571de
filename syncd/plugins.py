"""Registry of backend and storage types.

Built-in types are listed here by import path and imported on first use;
third-party packages add types through the ``syncd.backends`` and
``syncd.storages`` entry point groups. An unknown type name lists the valid
ones; a type whose import fails says what to install.
"""

from __future__ import annotations

import importlib
from typing import Any, Literal

Kind = Literal["backend", "storage"]

BUILTIN: dict[Kind, dict[str, str]] = {
    "backend": {
        "local": "syncd.backends.local:LocalBackend",
        "slurm": "syncd.backends.slurm:SlurmBackend",
        "cybergis": "syncd.backends.cybergis:CybergisBackend",
        "memory": "syncd.backends.memory:MemoryBackend",
        "kotta": "syncd.backends.kotta:KottaBackend",
        "chime-swarm": "syncd.backends.chime_swarm:ChimeSwarmBackend",
        "qarnot": "syncd.backends.qarnot:QarnotBackend",
        "chime-workflow": "syncd.backends.chime_workflow:ChimeWorkflowBackend",
        "arc": "syncd.backends.arc:ArcBackend",
    },
    "storage": {
        "file": "syncd.storage.file:FileStorage",
        "s3": "syncd.storage.s3.storage:S3Storage",
    },
}
INSTALL_HINTS: dict[str, str] = {"s3": "reinstall syncd: boto3 is one of its dependencies"}


def available(kind: Kind) -> dict[str, str]:
    """type name → import path, built-ins first, then installed plugins."""
    from importlib.metadata import entry_points

    found = dict(BUILTIN[kind])
    for ep in entry_points(group=f"syncd.{kind}s"):
        found.setdefault(ep.name, ep.value)
    return found


def load(kind: Kind, type_name: str) -> type[Any]:
    """The class implementing ``type_name``; KeyError with a helpful message if unknown."""
    # A built-in type wins over a plugin of the same name, so only other names need the (slow,
    # every installed package's metadata) entry-point scan.
    known = BUILTIN[kind] if type_name in BUILTIN[kind] else available(kind)
    if type_name not in known:
        raise KeyError(f"unknown {kind} type '{type_name}'; valid types: {', '.join(sorted(known))}")
    module_name, _, attr = known[type_name].partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        hint = INSTALL_HINTS.get(type_name, f"install the package that provides it ({exc.name})")
        raise KeyError(f"{kind} type '{type_name}' cannot be loaded: {exc}; {hint}") from None
    return getattr(module, attr)


def options_model(kind: Kind, type_name: str):
    """The pydantic model for a config section of ``type_name`` (for config.load_config)."""
    return load(kind, type_name).options_model
