"""The snapshot of what `syncd sync` reads of a config: true to the config, or not used; never a secret."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from syncd import config_snapshot, plugins
from syncd.config import load_config_and_source
from tests.support.harness import make_config

SECRET_KEY = "snapshot-test-secret-key-4711"
S3 = {
    "type": "s3",
    "endpoint_url": "${SNAP_ENDPOINT}",
    "region": "eu-west-1",
    "addressing_style": "path",
    "access_key_id": "${SNAP_KEY_ID}",
    "secret_access_key": "${SNAP_SECRET}",
    "ca_bundle": "certs/ca.pem",
    "connect_timeout": "3s",
    "part_size": "8MiB",
}


@pytest.fixture
def env(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("SNAP_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setenv("SNAP_KEY_ID", "key-id-1")
    monkeypatch.setenv("SNAP_SECRET", SECRET_KEY)
    return monkeypatch


def write_config(tmp_path: Path, s3: dict | None = None) -> Path:
    storages = {"local": {"type": "file", "root": "buckets"}, "s3": s3 or S3}
    return make_config(tmp_path / "site", extra={"storages": storages}).resolve()


def validate(path: Path):
    def resolve(kind, type_name):
        return plugins.options_model(kind, type_name)

    return load_config_and_source(path, resolve)


def snapshot_of(path: Path):
    config, source = validate(path)
    config_snapshot.save(config, source)
    return config, config_snapshot.load(path)


def test_a_snapshot_gives_what_validating_the_config_gives(env, tmp_path):
    path = write_config(tmp_path)
    validated, remembered = snapshot_of(path)
    assert remembered is not None
    assert remembered.state_dir == validated.state_dir and remembered.db_path == validated.db_path
    assert remembered.retry == validated.retry
    assert set(remembered.storages) == {"local", "s3"} and remembered.storages == validated.storages
    for name in ("local", "s3"):
        mine, theirs = remembered.storage_options[name], validated.storage_options[name]
        assert type(mine) is type(theirs)
        assert mine.model_dump() == theirs.model_dump()  # SecretStr compares by value
    s3 = remembered.storage_options["s3"]
    assert isinstance(s3.ca_bundle, Path) and s3.ca_bundle == path.parent / "certs" / "ca.pem"
    assert s3.secret_access_key.get_secret_value() == SECRET_KEY and s3.part_size == 8 * 1024 * 1024


def test_a_snapshot_is_read_without_yaml_or_a_single_validator(env, tmp_path):
    path = write_config(tmp_path)
    config_snapshot.save(*validate(path))
    probe = (
        "import sys; from pathlib import Path; from syncd import config_snapshot; "
        f"c = config_snapshot.load(Path({str(path)!r})); "
        "print(c is not None, 'yaml' in sys.modules, 'importlib.metadata' in sys.modules)"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, env=dict(os.environ), timeout=60
    )
    assert done.stdout.split() == ["True", "False", "False"], done.stderr


def test_the_snapshot_holds_no_secret_and_only_its_owner_reads_it(env, tmp_path):
    path = write_config(tmp_path)
    snapshot_of(path)
    file = config_snapshot.snapshot_file(path)
    assert SECRET_KEY not in file.read_text() and "key-id-1" not in file.read_text()
    assert stat.S_IMODE(file.stat().st_mode) == 0o600 and stat.S_IMODE(file.parent.stat().st_mode) == 0o700


def test_a_secret_is_read_from_the_environment_at_every_run(env, tmp_path):
    path = write_config(tmp_path)
    snapshot_of(path)
    env.setenv("SNAP_SECRET", "rotated-secret")
    remembered = config_snapshot.load(path)
    assert remembered.storage_options["s3"].secret_access_key.get_secret_value() == "rotated-secret"
    env.delenv("SNAP_SECRET")
    assert config_snapshot.load(path) is None, "unset now: reading the config in full reports it"


@pytest.mark.parametrize(
    "written",
    [
        {"secret_access_key": SECRET_KEY},  # the secret itself
        {"region": "${SNAP_SECRET}"},  # its variable, also where a value is not secret (and so goes into a digest)
    ],
)
def test_a_secret_written_in_the_config_leaves_no_snapshot(env, tmp_path, written):
    path = write_config(tmp_path)
    assert snapshot_of(path)[1] is not None
    path = write_config(tmp_path, S3 | written)
    _, remembered = snapshot_of(path)
    assert remembered is None and not config_snapshot.snapshot_file(path).exists(), "the old one is gone too"


@pytest.mark.parametrize("change", ["config", "variable", "home", "code", "format"])
def test_a_snapshot_that_no_longer_holds_is_not_used(env, tmp_path, change):
    path = write_config(tmp_path)
    _, remembered = snapshot_of(path)
    assert remembered is not None
    file = config_snapshot.snapshot_file(path)
    if change == "config":
        path.write_text(path.read_text().replace("eu-west-1", "eu-north-1"))
    elif change == "variable":  # a value that is not a secret, but part of what was validated
        env.setenv("SNAP_ENDPOINT", "http://127.0.0.1:10")
    elif change == "home":  # ~ in a path means another folder now
        env.setenv("HOME", str(tmp_path / "elsewhere"))
    else:
        document = json.loads(file.read_text())
        if change == "code":  # e.g. syncd upgraded or edited: a model's source file changed
            assert {Path(source).name for source in document["code"]} == {
                "config.py",
                "units.py",
                "storage.py",
                "file.py",
            }
            source = next(iter(document["code"]))
            document["code"][source] = [1, 2]
        else:
            document["format"] = -1
        file.write_text(json.dumps(document))
    assert config_snapshot.load(path) is None


def test_a_damaged_or_missing_snapshot_is_a_miss(env, tmp_path):
    path = write_config(tmp_path)
    assert config_snapshot.load(path) is None
    snapshot_of(path)
    file = config_snapshot.snapshot_file(path)
    file.write_text(file.read_text()[:40])
    assert config_snapshot.load(path) is None
    file.write_text(json.dumps({"format": config_snapshot.FORMAT}))
    assert config_snapshot.load(path) is None


def test_no_place_for_snapshots_is_no_snapshot_and_no_error(env, tmp_path):
    blocker = tmp_path / "cache"
    blocker.write_text("a file where the cache folder would be")
    path = write_config(tmp_path)
    _, remembered = snapshot_of(path)
    assert remembered is None


def test_sync_from_a_snapshot_and_from_the_config_alike(env, tmp_path):
    """`syncd sync` twice: the first reads the config and leaves a snapshot, the second uses it."""
    path = make_config(tmp_path / "site")
    bucket = tmp_path / "site" / "buckets" / "results"
    (bucket / "job").mkdir(parents=True)
    (bucket / "job" / "a.txt").write_bytes(b"from the bucket")
    command = [sys.executable, "-m", "syncd", "sync", "-c", str(path), "local:results/job"]
    first = subprocess.run([*command, str(tmp_path / "one")], capture_output=True, text=True, timeout=60)
    assert first.returncode == 0 and "downloaded 1 file(s)" in first.stdout, first.stderr
    assert config_snapshot.snapshot_file(path.resolve()).exists()
    second = subprocess.run(
        [sys.executable, "-X", "importtime", *command[1:], str(tmp_path / "two")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert second.returncode == 0 and "downloaded 1 file(s)" in second.stdout, second.stderr
    assert (tmp_path / "two" / "a.txt").read_bytes() == b"from the bucket"
    loaded = {line.rsplit("|", 1)[-1].strip() for line in second.stderr.splitlines() if line.startswith("import time:")}
    assert loaded and "yaml" not in loaded and "importlib.metadata" not in loaded
