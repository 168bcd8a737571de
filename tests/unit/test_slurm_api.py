"""Slurm wire decoding and token handling, without a server."""

from __future__ import annotations

import base64
import json
import stat
import time
from pathlib import Path

import pytest

from syncd.backends.base import RemoteState
from syncd.backends.slurm import SlurmOptions, slurm_jwt
from syncd.backends.slurm_api import decode_wait_status, parse_job, submit_body
from syncd.backends.tokens import TokenOptions, TokenSource
from syncd.errors import AuthError


@pytest.mark.parametrize(
    "raw, expected",
    [
        (0, (0, None)),
        (768, (3, None)),
        (256 * 255, (255, None)),
        (15, (143, 15)),
        (9, (137, 9)),
        (None, (None, None)),
        ({"return_code": 2, "signal": {"signal_id": None}}, (2, None)),
    ],
)
def test_decode_wait_status_splits_exit_code_and_signal(raw, expected):
    assert decode_wait_status(raw) == expected


@pytest.mark.parametrize(
    "state, exit_code, expected",
    [
        ("PENDING", 0, RemoteState.QUEUED),
        ("RUNNING", 0, RemoteState.RUNNING),
        ("COMPLETING", 0, RemoteState.RUNNING),
        ("COMPLETED", 0, RemoteState.SUCCEEDED),
        ("COMPLETED", 256, RemoteState.FAILED),
        ("FAILED", 768, RemoteState.FAILED),
        ("OUT_OF_MEMORY", 0, RemoteState.FAILED),
        ("NODE_FAIL", 0, RemoteState.FAILED),
        ("PREEMPTED", 0, RemoteState.FAILED),
        ("CANCELLED", 15, RemoteState.CANCELLED),
        ("TIMEOUT", 0, RemoteState.TIMED_OUT),
        ("SOMETHING_NEW", 0, RemoteState.UNKNOWN),
    ],
)
def test_parse_job_maps_slurm_states_and_keeps_slurms_word(state, exit_code, expected):
    job = parse_job(
        {
            "job_id": 5,
            "name": "syncd-x",
            "comment": "syncd-x",
            "job_state": state,
            "exit_code": exit_code,
            "start_time": 100,
            "end_time": 0,
        }
    )
    assert job.normalised is expected and job.state == state
    assert job.start_time == 100 and job.end_time is None


def test_parse_job_reads_newer_list_and_number_shapes():
    job = parse_job(
        {
            "job_id": 7,
            "job_state": ["COMPLETED"],
            "exit_code": {"return_code": {"number": 0}},
            "start_time": {"set": True, "number": 50},
            "end_time": {"set": False, "number": 0},
        }
    )
    assert (job.state, job.exit_status, job.start_time, job.end_time) == ("COMPLETED", 0, 50.0, None)


def test_submit_body_maps_resources_in_slurm_units():
    body = submit_body(
        script="#!/bin/bash\n",
        name="k",
        comment="k",
        workdir="/w",
        environment={"A": "1"},
        stdout="/o",
        stderr="/e",
        time_limit_seconds=61,
        partition="p",
        account=None,
        qos="q",
        cpus=4,
        memory_bytes=3 * 1024 * 1024 + 1,
        gpus=2,
    )
    job = body["job"]
    assert (job["time_limit"], job["cpus_per_task"], job["memory_per_node"], job["gres"]) == (2, 4, 4, "gpu:2")
    assert job["partition"] == "p" and job["qos"] == "q" and "account" not in job
    assert job["requeue"] is False and job["environment"] == {"A": "1"}


def _jwt(exp: float) -> str:
    def part(data):
        return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")

    return f"{part({'alg': 'HS256'})}.{part({'exp': int(exp), 'sun': 'x'})}.sig"


def test_token_source_mints_again_before_expiry(tmp_path):
    counter = tmp_path / "count"
    script = tmp_path / "mint"
    # Each call prints a token that expires 60 s from now, numbered so that re-mints are visible.
    script.write_text(f"#!/bin/sh\necho x >> {counter}\necho SLURM_JWT={_jwt(time.time() + 60)}$(wc -l < {counter})\n")
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    soon = TokenSource(TokenOptions(token_command=[str(script)], token_ttl=120), extract=slurm_jwt)
    first, second = soon.get(), soon.get()
    assert first != second, "a token expiring within token_ttl is replaced on every use"
    assert not first.startswith("SLURM_JWT=") and first.count(".") == 2
    later = TokenSource(TokenOptions(token_command=[str(script)], token_ttl=10), extract=slurm_jwt)
    assert later.get() == later.get(), "a fresh token is reused"


def test_token_source_reports_missing_sources_as_auth_errors(tmp_path):
    with pytest.raises(AuthError, match="SYNCD_NO_SUCH_TOKEN"):
        TokenSource(TokenOptions(token_env="SYNCD_NO_SUCH_TOKEN"), environ={}).get()
    with pytest.raises(AuthError, match="token_file .*absent: no such file"):
        TokenSource(TokenOptions(token_file=tmp_path / "absent")).get()
    with pytest.raises(AuthError, match="exited 1"):
        TokenSource(TokenOptions(token_command=["false"])).get()


def test_token_options_need_exactly_one_source():
    with pytest.raises(ValueError, match="exactly one"):
        TokenOptions(token_file="/a", token_env="B")
    with pytest.raises(ValueError, match="exactly one"):
        TokenOptions()


def test_slurms_token_section_keeps_its_keys():
    base = {"type": "slurm", "url": "http://127.0.0.1:6820", "user": "u", "workdir_root": "/w"}
    minted = SlurmOptions.model_validate(
        {**base, "token": {"command": "scontrol token lifespan=60", "refresh_before": "2m"}}
    )
    assert minted.token_command == ["scontrol", "token", "lifespan=60"] and minted.token_ttl == 120
    assert SlurmOptions.model_validate({**base, "token": {"file": "/t"}}).token_file == Path("/t")
    assert SlurmOptions.model_validate({**base, "token": {"env": "JWT"}}).token_env == "JWT"
    assert SlurmOptions.model_validate({**base, "token_env": "JWT"}).token_env == "JWT"
    with pytest.raises(ValueError, match="token.path: unknown key"):
        SlurmOptions.model_validate({**base, "token": {"path": "/t"}})
    with pytest.raises(ValueError, match="exactly one"):
        SlurmOptions.model_validate({**base, "token": {"file": "/t", "env": "JWT"}})
    with pytest.raises(ValueError, match="exactly one"):
        SlurmOptions.model_validate(base)
