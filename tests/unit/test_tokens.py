"""The one token type of backends: where a secret token comes from, and how each source fails."""

from __future__ import annotations

import base64
import json
import stat
import sys
import threading
import time
from pathlib import Path

import pytest
from pydantic import ValidationError

from syncd.backends.tokens import TokenOptions, TokenSource, jwt_expiry
from syncd.errors import AuthError, TransientError

TOKEN = "tok-5f2c9a7e1d"


def script(tmp_path: Path, body: str, name: str = "mint") -> Path:
    path = tmp_path / name
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return path


def counting(tmp_path: Path, extra: str = "") -> tuple[Path, Path]:
    """A command printing token-N, N counting its runs."""
    counter = tmp_path / "runs"
    return script(tmp_path, f'{extra}\necho x >> {counter}\necho "  token-$(wc -l < {counter})  "'), counter


def runs(counter: Path) -> int:
    return len(counter.read_text().splitlines()) if counter.exists() else 0


@pytest.mark.parametrize(
    "given",
    [
        {},
        {"token": TOKEN, "token_env": "X"},
        {"token_file": "/a", "token_command": ["b"]},
        {"token": TOKEN, "token_file": "/a", "token_env": "X", "token_command": ["b"]},
    ],
)
def test_exactly_one_source_and_the_message_holds_no_token(given):
    with pytest.raises(ValidationError, match="exactly one of token, token_file, token_env or token_command") as caught:
        TokenOptions.model_validate(given)
    assert TOKEN not in str(caught.value)


def test_an_inline_token_is_a_secret():
    options = TokenOptions(token=TOKEN)
    assert TokenSource(options).get() == TOKEN
    assert TOKEN not in repr(options) and TOKEN not in str(options.model_dump(mode="json"))
    assert options.model_dump(mode="json")["token"] == "**********"


def test_a_token_file_is_relative_to_the_config_and_read_afresh_each_time(tmp_path):
    options = TokenOptions.model_validate({"token_file": "secret/token"}, context={"base_dir": tmp_path})
    assert options.token_file == tmp_path / "secret" / "token"
    options.token_file.parent.mkdir()
    options.token_file.write_text(f"\n  {TOKEN}\n")
    options.token_file.chmod(0o600)
    source = TokenSource(options)
    assert source.get() == TOKEN
    options.token_file.write_text("rotated\n")
    assert source.get() == "rotated" and source.can_refresh


def test_a_token_file_missing_empty_or_unreadable_is_an_auth_error_naming_it(tmp_path):
    path = tmp_path / "token"
    source = TokenSource(TokenOptions(token_file=path), owner="backend 'api'")
    with pytest.raises(AuthError, match=f"^backend 'api': token_file {path}: no such file"):
        source.get()
    path.write_text(" \n")
    with pytest.raises(AuthError, match=f"token_file {path} is empty"):
        source.get()
    with pytest.raises(AuthError, match=f"token_file {tmp_path}: cannot read it"):
        TokenSource(TokenOptions(token_file=tmp_path)).get()
    path.write_bytes(b"\xff\xfe")
    with pytest.raises(AuthError, match="not UTF-8"):
        source.get()


def test_a_token_variable_is_read_each_time_and_must_be_set(monkeypatch):
    monkeypatch.setenv("SYNCD_TEST_TOKEN", f" {TOKEN} ")
    source = TokenSource(TokenOptions(token_env="SYNCD_TEST_TOKEN"))
    assert source.get() == TOKEN and not source.can_refresh
    monkeypatch.setenv("SYNCD_TEST_TOKEN", "next")
    assert source.get() == "next"
    monkeypatch.setenv("SYNCD_TEST_TOKEN", "")
    with pytest.raises(AuthError, match="SYNCD_TEST_TOKEN .token_env. is empty"):
        source.get()
    monkeypatch.delenv("SYNCD_TEST_TOKEN")
    with pytest.raises(AuthError, match="environment variable SYNCD_TEST_TOKEN .token_env. is not set"):
        source.get()


def test_token_env_is_a_variables_name_not_its_value():
    with pytest.raises(ValidationError) as caught:
        TokenOptions(token_env=f"Bearer {TOKEN}")
    assert TOKEN not in str(caught.value.errors(include_input=False))


def test_a_command_runs_without_a_shell_and_its_output_is_stripped(tmp_path):
    options = TokenOptions(token_command=f"{sys.executable} -c 'print(\" a;b $HOME \")'")
    assert options.token_command[0] == sys.executable
    assert TokenSource(options).get() == "a;b $HOME"


def test_a_minted_token_is_reused_for_token_ttl_then_minted_again(tmp_path):
    command, counter = counting(tmp_path)
    source = TokenSource(TokenOptions(token_command=[str(command)], token_ttl=0.5))
    assert source.get() == "token-1" and source.get() == "token-1" and runs(counter) == 1
    time.sleep(0.6)
    assert source.get() == "token-2"
    source.invalidate()
    assert source.get() == "token-3" and source.can_refresh


def test_a_jwt_is_minted_again_once_it_expires_within_token_ttl(tmp_path):
    def jwt(exp: float) -> str:
        part = base64.urlsafe_b64encode(json.dumps({"exp": int(exp)}).encode()).decode().rstrip("=")
        return f"e30.{part}.sig"

    soon, later = jwt(time.time() + 60), jwt(time.time() + 3600)
    assert jwt_expiry(soon) == pytest.approx(time.time() + 60, abs=2) and jwt_expiry("opaque") is None
    for token, ttl, reused in ((soon, 120, False), (soon, 30, True), (later, 300, True)):
        counter = tmp_path / f"runs-{ttl}-{token[-8:]}"
        command = script(tmp_path, f"echo x >> {counter}\necho {token}", name=f"mint-{ttl}")
        source = TokenSource(TokenOptions(token_command=[str(command)], token_ttl=ttl))
        source.get(), source.get()
        assert runs(counter) == (1 if reused else 2)


def test_concurrent_users_share_one_minted_token(tmp_path):
    command, counter = counting(tmp_path, extra="sleep 0.2")
    source = TokenSource(TokenOptions(token_command=[str(command)]))
    got: list[str] = []
    threads = [threading.Thread(target=lambda: got.append(source.get())) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert got == ["token-1"] * 8 and runs(counter) == 1


def test_a_failing_command_is_an_auth_error_with_an_excerpt_of_its_stderr(tmp_path):
    command = script(tmp_path, 'echo "no credentials for syncd" >&2\n' + "echo " + "x" * 500 + " >&2\nexit 3")
    with pytest.raises(AuthError) as caught:
        TokenSource(TokenOptions(token_command=[str(command)]), owner="backend 'api'").get()
    text = str(caught.value)
    assert text.startswith("backend 'api': token_command 'mint' exited 3: no credentials for syncd")
    assert len(text) < 300 and text.endswith("…")


def test_a_command_that_is_missing_prints_nothing_or_hangs(tmp_path):
    with pytest.raises(AuthError, match="token_command '/no/such/minter' cannot run"):
        TokenSource(TokenOptions(token_command=["/no/such/minter"])).get()
    with pytest.raises(AuthError, match="the output of token_command 'true' is empty"):
        TokenSource(TokenOptions(token_command=["true"])).get()
    started = time.monotonic()
    with pytest.raises(TransientError, match="did not finish within"):
        TokenSource(TokenOptions(token_command=["sleep", "5"]), command_timeout=0.3).get()
    assert time.monotonic() - started < 3


def test_an_extractor_picks_the_token_out_of_what_the_source_holds(monkeypatch):
    monkeypatch.setenv("SYNCD_TEST_TOKEN", f"SLURM_JWT={TOKEN}")
    source = TokenSource(TokenOptions(token_env="SYNCD_TEST_TOKEN"), extract=lambda s: s.split("=", 1)[-1])
    assert source.get() == TOKEN


def test_the_nested_form_maps_to_the_flat_fields():
    options = TokenOptions.model_validate({"token": {"command": ["mint", "-x"], "refresh_before": "1m"}})
    assert options.token_command == ["mint", "-x"] and options.token_ttl == 60 and options.token is None
    with pytest.raises(ValidationError, match="token.file and token_file say the same"):
        TokenOptions.model_validate({"token": {"file": "/a"}, "token_file": "/b"})
    with pytest.raises(ValidationError, match="token.value: unknown key"):
        TokenOptions.model_validate({"token": {"value": TOKEN}})
