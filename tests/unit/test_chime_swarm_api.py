"""frb-master's swarm wire shapes and the token logic, without a server: what is sent, how answers are read."""

from __future__ import annotations

import base64
import json
import re
import time
from urllib.parse import quote

import pytest

from syncd.backends.base import RemoteState
from syncd.backends.chime_swarm import ChimeSwarmOptions, api
from syncd.backends.chime_swarm.auth import RefreshRefused, SwarmTokens
from syncd.backends.tokens import TokenOptions, TokenSource
from syncd.errors import AccountError, AuthError, TransientError


def jwt(exp: float) -> str:
    def part(data: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'HS256'})}.{part({'exp': exp, 'user_id': 'u'})}.c2ln"


def test_status_pattern_is_anchored_so_the_first_attempt_does_not_match_later_ones():
    keys = ["syncd-20261203-101500-abcdef", "syncd-20261203-101500-abcdef-2", "syncd-20261203-101500-abcdef-10"]
    pattern = api.status_pattern(keys[:2])
    assert re.search(pattern, keys[0]) and re.search(pattern, keys[1])
    assert not re.search(pattern, keys[2]), "an attempt not asked for is not matched"
    assert not re.search(api.exact(keys[0]), keys[1])


def test_status_pattern_escapes_dots_and_stays_one_request_however_many_jobs():
    pattern = api.status_pattern(["a.b"])
    assert re.search(pattern, "a.b") and not re.search(pattern, "axb")
    few = [f"syncd-20261203-101500-{n:06x}" for n in range(100)]
    assert all(re.search(api.status_pattern(few), n) for n in few)
    assert not re.search(api.status_pattern(few), "syncd-20261203-101500-ffffff"), "a hundred jobs: exactly them"
    many = [f"syncd-202612{n % 28 + 1:02d}-101500-{n:06x}" for n in range(600)]
    pattern = api.status_pattern(many)
    assert len(quote(pattern, safe="")) <= api.MAX_PATTERN and pattern == "^syncd\\-202612"
    assert all(re.search(pattern, n) for n in many) and not re.search(pattern, "other-syncd-20261201")


@pytest.mark.parametrize(
    "word, state",
    [
        ("pending", RemoteState.QUEUED),
        ("new", RemoteState.QUEUED),
        ("starting", RemoteState.QUEUED),
        ("running", RemoteState.RUNNING),
        ("complete", RemoteState.SUCCEEDED),
        ("completed", RemoteState.SUCCEEDED),
        ("COMPLETE", RemoteState.SUCCEEDED),
        ("failed", RemoteState.FAILED),
        ("rejected", RemoteState.FAILED),
        ("orphaned", RemoteState.FAILED),
        ("shutdown", RemoteState.CANCELLED),
        ("remove", RemoteState.CANCELLED),
        ("melted", RemoteState.UNKNOWN),
    ],
)
def test_state_words_both_spellings_of_success(word, state):
    status = api.state_of(word)
    assert status.state is state and status.native == word.lower() and status.exit_code is None


def test_spawn_body_has_every_key_the_sdk_sends_and_keeps_user_text_out_of_the_command():
    body = api.spawn_body(
        image="img",
        job_name="syncd-x",
        work="/site/syncd-x/work",
        stdout="/site/syncd-x/ctrl/stdout.txt",
        stderr="/site/syncd-x/ctrl/stderr.txt",
        mount_archiver=True,
        swarm_network=False,
        cpus=2,
        memory=1024,
        memory_reservation=4096,
        environment={"A": "b"},
    )
    assert set(body) == {
        "image_name",
        "command",
        "arguments",
        "job_name",
        "mount_archiver",
        "swarm_network",
        "job_mem_limit",
        "job_mem_reservation",
        "job_cpu_limit",
        "job_cpu_reservation",
        "environment",
    }
    assert body["command"][:2] == ["/bin/sh", "-c"] and body["command"][2] == api.LAUNCHER
    assert body["arguments"] == ["/site/syncd-x/work", "/site/syncd-x/ctrl/stdout.txt", "/site/syncd-x/ctrl/stderr.txt"]
    assert body["job_mem_reservation"] == 1024, "a reservation never exceeds the limit"
    assert body["job_cpu_limit"] == body["job_cpu_reservation"] == 2.0


def test_names_are_percent_encoded_in_the_path():
    assert api.named("job-status", "^(?:a|b)$") == "/v1/swarm/job-status/%5E%28%3F%3Aa%7Cb%29%24"
    assert api.service_id({"ID": "abc"}) == "abc" and api.service_id({}) is None
    assert api.states({"a": "running", "b": 3}) == {"a": "running"} and api.states([]) == {}


def source(token: str) -> TokenSource:
    return TokenSource(TokenOptions(token=token))


def test_a_token_that_expires_soon_is_refreshed_before_it_is_sent():
    asked = []

    def exchange(refresh: str, access: str) -> str:
        asked.append((refresh, access))
        return jwt(time.time() + 3600)

    old = jwt(time.time() + 60)
    tokens = SwarmTokens(source(old), source("refresh-me"), refresh_before=300, exchange=exchange, owner="b")
    new = tokens.current()
    assert asked == [("refresh-me", old)] and new != old
    assert tokens.current() == new and len(asked) == 1, "a fresh token is reused"


def test_a_token_with_time_left_is_sent_as_it_is():
    token = jwt(time.time() + 3600)
    tokens = SwarmTokens(source(token), source("r"), refresh_before=300, exchange=lambda r, a: "x", owner="b")
    assert tokens.current() == token


def test_a_refused_refresh_is_an_account_error_that_pauses_the_backend():
    def exchange(refresh: str, access: str) -> str:
        raise AuthError("frb-master refused the credentials")

    tokens = SwarmTokens(source(jwt(time.time() - 5)), source("r"), refresh_before=300, exchange=exchange, owner="b")
    with pytest.raises(RefreshRefused) as caught:
        tokens.current()
    assert isinstance(caught.value, AccountError) and "log in again" in str(caught.value)


def test_a_transient_failure_of_the_refresh_stays_transient():
    def exchange(refresh: str, access: str) -> str:
        raise TransientError("no connection")

    tokens = SwarmTokens(source(jwt(time.time() - 5)), source("r"), refresh_before=300, exchange=exchange, owner="b")
    with pytest.raises(TransientError):
        tokens.current()


def test_an_expired_token_without_a_refresh_token_is_an_auth_error():
    tokens = SwarmTokens(source(jwt(time.time() - 5)), None, refresh_before=300, exchange=lambda r, a: "", owner="b")
    with pytest.raises(AuthError, match="expired"):
        tokens.current()
    soon = jwt(time.time() + 60)
    tokens = SwarmTokens(source(soon), None, refresh_before=300, exchange=lambda r, a: "", owner="b")
    assert tokens.current() == soon, "used while it lasts when nothing can renew it"


def test_a_refused_token_is_refreshed_and_a_newer_configured_one_wins(tmp_path):
    path = tmp_path / "token"
    first = jwt(time.time() + 3600)
    path.write_text(first)
    minted = [jwt(time.time() + 1800)]
    tokens = SwarmTokens(
        TokenSource(TokenOptions(token_file=path)),
        source("r"),
        refresh_before=300,
        exchange=lambda r, a: minted[0],
        owner="b",
    )
    assert tokens.current() == first
    assert tokens.refused(first) is True
    assert tokens.current() == minted[0], "the refused one is not sent again"
    newer = jwt(time.time() + 7200)
    path.write_text(newer)
    assert tokens.current() == newer, "a fresher token from the file wins over the refreshed one"


def test_options_take_tokens_and_the_site_folder():
    section = {
        "type": "chime-swarm",
        "url": "https://frb.example.org/frb-master",
        "access_token": {"token_env": "CHIME_FRB_ACCESS_TOKEN"},
        "refresh_token": {"token_file": "/etc/syncd/chime-refresh"},
        "image": "chimefrb/pipeline:latest",
        "work_folder": "/site/syncd",
        "job_work_folder": "/data/site/syncd",
        "memory": "8GiB",
    }
    options = ChimeSwarmOptions.model_validate(section)
    assert options.memory == 8 * 1024**3 and options.cpus == 1.0 and options.refresh_before == 300
    with pytest.raises(ValueError):
        ChimeSwarmOptions.model_validate({**section, "job_work_folder": "relative/path"})


def test_without_a_refresh_token_a_refused_token_is_sent_again_for_the_service_to_decide():
    token = jwt(time.time() + 3600)
    tokens = SwarmTokens(source(token), None, refresh_before=300, exchange=lambda r, a: "", owner="b")
    assert tokens.refused(token) is False, "an inline token cannot change: the request is not repeated"
    assert tokens.current() == token, "a passing refusal does not lock the backend out for good"
