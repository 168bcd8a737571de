"""`syncd sync` refuses what it would not do, and a failed run says what is left to do."""

from __future__ import annotations

import socket

from click.testing import CliRunner

from syncd.cli import main
from tests.support.harness import make_config


def test_sync_delete_from_a_folder_to_a_bucket_is_refused_with_the_reason(tmp_path):
    storage = {"type": "s3", "endpoint_url": "http://127.0.0.1:9", "access_key_id": "k", "secret_access_key": "s"}
    path = make_config(
        tmp_path / "site", extra={"storages": {"local": {"type": "file", "root": "buckets"}, "s3": storage}}
    )
    (tmp_path / "data").mkdir()
    result = CliRunner().invoke(main, ["sync", "-c", str(path), str(tmp_path / "data"), "s3:bucket/p", "--delete"])
    assert result.exit_code == 2, result.output
    assert "--delete removes local files the bucket no longer has" in result.output
    assert "never deletes remote objects" in result.output


def test_sync_that_fails_in_the_end_does_not_say_it_retries(tmp_path):
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused
    endpoint = f"http://127.0.0.1:{closed.getsockname()[1]}"
    storage = {"type": "s3", "endpoint_url": endpoint, "access_key_id": "k", "secret_access_key": "s"}
    extra = {"storages": {"local": {"type": "file", "root": "buckets"}, "s3": storage}}
    path = make_config(tmp_path / "site", extra=extra | {"retry": {"initial": "0.05s", "max": "0.1s"}})
    try:
        result = CliRunner().invoke(main, ["sync", "-c", str(path), "s3:bucket/p", str(tmp_path / "down")])
    finally:
        closed.close()
    assert result.exit_code == 1, result.output
    assert endpoint in result.output and "syncd retries" not in result.output
    assert not (tmp_path / "down" / ".syncd-tmp").exists()
