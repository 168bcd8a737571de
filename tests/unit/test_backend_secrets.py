"""A backend's token never shows: not in the loaded config, a config error, the snapshot, an error or `status --json`."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from click.testing import CliRunner

from syncd import cli, config_snapshot
from syncd.backends.slurm import SlurmBackend
from syncd.errors import AuthError, ConfigError, PermanentError
from syncd.service.daemon import load
from syncd.state.store import Store
from tests.support.harness import make_config

INLINE = "inline-token-7c41e9d2"
FROM_ENV = "env-token-2b8f60aa"
BY_NAME = "named-token-94d1c3e5"
SECRETS = (INLINE, FROM_ENV, BY_NAME)


def slurm(**token) -> dict:
    return {
        "type": "slurm",
        "url": "http://127.0.0.1:9",
        "user": "lab",
        "workdir_root": "work",
        "api_version": "v0.0.38",
        **token,
    }


@pytest.fixture
def env(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("SYNCD_BACKEND_TOKEN", FROM_ENV)
    monkeypatch.setenv("SYNCD_BACKEND_TOKEN_BY_NAME", BY_NAME)
    return monkeypatch


def site(tmp_path: Path, backends: dict, **extra) -> Path:
    return make_config(
        tmp_path / "site", extra={"backends": {"local": {"type": "local"}, **backends}, **extra}
    ).resolve()


def assert_hidden(text: str) -> None:
    for secret in SECRETS:
        assert secret not in text


def test_the_loaded_config_shows_backend_tokens_as_stars_and_keeps_them_usable(env, tmp_path):
    path = site(
        tmp_path,
        {
            "inline": slurm(token=INLINE),
            "fromenv": slurm(token="${SYNCD_BACKEND_TOKEN}"),
            "byname": slurm(token_env="SYNCD_BACKEND_TOKEN_BY_NAME"),
        },
    )
    config = load(path)
    for shown in (
        repr(config),
        str(config),
        config.model_dump_json(),
        json.dumps(config.backends),
        repr(config.backend_options),
    ):
        assert_hidden(shown)
    assert config.backends["inline"]["token"] == config.backends["fromenv"]["token"] == "**********"
    assert config.backends["byname"]["token_env"] == "SYNCD_BACKEND_TOKEN_BY_NAME"
    options = config.backend_options
    assert options["inline"].token.get_secret_value() == INLINE
    assert options["fromenv"].token.get_secret_value() == FROM_ENV
    assert SlurmBackend("byname", options["byname"], tmp_path / "w").tokens.get() == BY_NAME


def test_a_config_read_without_backend_plugins_hides_secret_named_keys_too(env, tmp_path):
    path = site(
        tmp_path,
        {
            "inline": slurm(token=INLINE),
            "other": {"type": "someplugin", "api_key": INLINE, "password": FROM_ENV, "url": "https://x"},
        },
    )
    config, _ = cli._load_light(path)
    assert_hidden(repr(config) + json.dumps(config.backends))
    assert config.backends["other"] == {
        "type": "someplugin",
        "max_parallel": 4,
        "results_deadline": 86400.0,
        "api_key": "**********",
        "password": "**********",
        "url": "https://x",
    }


@pytest.mark.parametrize(
    "backend",
    [
        slurm(token=INLINE, token_env="SYNCD_BACKEND_TOKEN_BY_NAME"),
        slurm(token="${SYNCD_BACKEND_TOKEN}", token_file="token"),
        slurm(token_env=f"Bearer {INLINE}"),
        slurm(token=INLINE, partition=["not", "a", "string"]),
        slurm(token=INLINE, token_command=[]),
    ],
)
def test_a_config_error_never_quotes_a_backend_token(env, tmp_path, backend):
    path = site(tmp_path, {"hpc": backend})
    with pytest.raises(ConfigError) as caught:
        load(path)
    assert_hidden(str(caught.value) + "\n".join(caught.value.problems))
    assert any("backends.hpc" in problem for problem in caught.value.problems)


def test_the_cli_reports_a_bad_backend_without_its_token(env, tmp_path):
    path = site(tmp_path, {"hpc": slurm(token=INLINE, token_env="SYNCD_BACKEND_TOKEN_BY_NAME")})
    result = CliRunner().invoke(cli.main, ["validate", str(path)])
    assert result.exit_code != 0 and "exactly one of token" in result.output
    assert_hidden(result.output)


def snapshot_text(path: Path) -> str | None:
    file = config_snapshot.snapshot_file(path)
    return file.read_text() if file.exists() else None


def save_snapshot(path: Path) -> None:
    config_snapshot.save(*cli._load_light(path))


def test_the_snapshot_holds_no_backend_token_nor_a_digest_of_one(env, tmp_path):
    path = site(
        tmp_path,
        {"fromenv": slurm(token="${SYNCD_BACKEND_TOKEN}"), "byname": slurm(token_env="SYNCD_BACKEND_TOKEN_BY_NAME")},
    )
    save_snapshot(path)
    text = snapshot_text(path)
    assert text is not None
    assert_hidden(text)
    document = json.loads(text)
    assert "SYNCD_BACKEND_TOKEN" not in document["variables"], "a secret's value is not digested"
    assert document["backend_secrets"] == ["SYNCD_BACKEND_TOKEN"]
    assert config_snapshot.load(path) is not None
    env.setenv("SYNCD_BACKEND_TOKEN", "rotated")
    assert config_snapshot.load(path) is not None, "a rotated secret needs no new snapshot"
    env.delenv("SYNCD_BACKEND_TOKEN")
    assert config_snapshot.load(path) is None, "unset, the config would not load"


def test_an_inline_backend_token_leaves_no_snapshot(env, tmp_path):
    path = site(tmp_path, {"fromenv": slurm(token="${SYNCD_BACKEND_TOKEN}")})
    save_snapshot(path)
    assert snapshot_text(path) is not None
    path.write_text(path.read_text().replace("${SYNCD_BACKEND_TOKEN}", INLINE))
    save_snapshot(path)
    assert snapshot_text(path) is None, "the older snapshot is removed as well"


def test_a_backend_secrets_variable_used_elsewhere_leaves_no_snapshot(env, tmp_path):
    path = site(
        tmp_path,
        {"fromenv": slurm(token="${SYNCD_BACKEND_TOKEN}")},
        storages={"local": {"type": "file", "root": "buckets-${SYNCD_BACKEND_TOKEN}"}},
    )
    save_snapshot(path)
    assert snapshot_text(path) is None


class EchoingSlurmrestd:
    """Answers every request with ``status`` and a slurmrestd error that quotes the request's headers."""

    def __init__(self, status: int):
        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                headers = ", ".join(f"{k}={v}" for k, v in self.headers.items())
                body = json.dumps(
                    {
                        "errors": [
                            {"error": f"refused {headers}", "error_number": -1},
                            {"description": f"Authorization: {self.headers.get('X-SLURM-USER-TOKEN')}"},
                        ],
                        "message": f"token {self.headers.get('X-SLURM-USER-TOKEN')}",
                    }
                ).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, args=(0.02,), daemon=True).start()


@pytest.fixture
def echoing(request) -> Iterator[EchoingSlurmrestd]:
    server = EchoingSlurmrestd(request.param)
    yield server
    server.httpd.shutdown()
    server.httpd.server_close()


@pytest.mark.parametrize(
    "echoing, kind", [(401, AuthError), (403, AuthError), (500, AuthError), (400, PermanentError)], indirect=["echoing"]
)
def test_errors_status_json_and_jobs_hold_no_token_even_when_the_server_echoes_it(env, tmp_path, echoing, kind):
    path = site(tmp_path, {"hpc": {**slurm(token=INLINE), "url": echoing.url}})
    config = load(path)
    backend = SlurmBackend("hpc", config.backend_options["hpc"], tmp_path / "w")
    with pytest.raises(kind) as caught:
        backend.probe()
    message = str(caught.value)
    assert message.startswith(f"slurmrestd at {echoing.url}") and "**********" in message
    assert_hidden(message)
    store = Store(config.db_path)
    store.create_job(
        id="j1",
        name="job",
        dir_name="job",
        inbox="default",
        backend="hpc",
        storage="local",
        bucket="results",
        spool_path=str(tmp_path / "spool"),
        error=message,
    )
    store.close()
    result = CliRunner().invoke(cli.main, ["status", "--json", "-c", str(path)])
    assert result.exit_code == 0, result.output
    jobs = json.loads(result.output)
    assert jobs[0]["error"] == message
    assert_hidden(result.output)
