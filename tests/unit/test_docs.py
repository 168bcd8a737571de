"""The README is the contract: every option syncd accepts is documented there, and its commands exist."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from syncd.backends.arc import ArcOptions
from syncd.backends.chime_swarm import ChimeSwarmOptions
from syncd.backends.chime_workflow import ChimeWorkflowOptions
from syncd.backends.cybergis import CybergisOptions
from syncd.backends.kotta import KottaOptions
from syncd.backends.local import LocalOptions
from syncd.backends.qarnot import QarnotOptions
from syncd.backends.slurm import SlurmOptions
from syncd.backends.tokens import TokenOptions
from syncd.config import (
    Config,
    HttpConfig,
    InboxConfig,
    MirrorConfig,
    PollPolicy,
    RetryPolicy,
    WebhookConfig,
)
from syncd.intake.manifest import Manifest, Resources
from syncd.storage.file import FileStorageOptions
from syncd.storage.s3.storage import S3StorageOptions

README = (Path(__file__).parents[2] / "README.md").read_text()


def _documented_keys() -> set[str]:
    return set(re.findall(r"^\| `([a-z_]+)` \|", README, flags=re.MULTILINE))


@pytest.mark.parametrize(
    "model",
    [
        Config,
        InboxConfig,
        PollPolicy,
        RetryPolicy,
        LocalOptions,
        FileStorageOptions,
        Manifest,
        SlurmOptions,
        TokenOptions,
        WebhookConfig,
        HttpConfig,
        S3StorageOptions,
        MirrorConfig,
        KottaOptions,
        QarnotOptions,
        CybergisOptions,
        ChimeSwarmOptions,
        ChimeWorkflowOptions,
        ArcOptions,
    ],
)
def test_readme_documents_every_option_of(model):
    fields = {name for name, field in model.model_fields.items() if not field.exclude}
    missing = fields - _documented_keys()
    assert not missing, f"{model.__name__} options missing from the README tables: {sorted(missing)}"


def test_readme_documents_every_resource():
    for name in Resources.model_fields:
        assert f"`{name}`" in README


def test_readme_names_the_scripts_that_exist_and_ci_runs_the_test_command():
    root = Path(__file__).parents[2]
    for script in ("./scripts/demo", "./scripts/test"):
        assert f"\n{script}\n" in README
        assert (root / script).is_file()
    assert "./scripts/test" in (root / ".ci" / "run").read_text()


def test_readme_command_table_lists_every_command_and_its_options():
    from syncd.cli import main

    table = README.split("## Command line", 1)[1].split("\n## ", 1)[0]
    rows = {m.group(1): m.group(0) for m in re.finditer(r"^\| `syncd (\w+).*$", table, re.MULTILINE)}
    assert set(main.commands) <= set(rows), (
        f"commands missing from the README's table: {set(main.commands) - set(rows)}"
    )
    for name, command in main.commands.items():
        for param in command.params:
            longest = max(param.opts, key=len)
            if longest.startswith("--") and longest not in ("--help", "--config"):
                assert longest in rows[name], f"syncd {name} {longest} is missing from the README's table"


def test_the_readme_lists_every_mutant_as_the_script_does():
    root = Path(__file__).parents[2]
    listed = subprocess.run(
        [sys.executable, str(root / "scripts" / "mutants.py"), "--list"], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert listed in (root / "README.md").read_text(), "update the README's table: scripts/mutants.py --list"
