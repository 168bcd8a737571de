"""Qarnot's wire shapes: names, dates, states, constraints (no service needed)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from syncd.backends.base import RemoteState
from syncd.backends.qarnot import api


def test_shortname_is_dns_safe_stable_and_short():
    assert api.shortname("syncd-20240101-120000-abc123-2") == "syncd-20240101-120000-abc123-2"
    assert api.shortname("Syncd_Job ID!") == "syncd-job-id"
    assert len(api.shortname("syncd-" + "x" * 100)) == 63
    assert api.bucket_name("ab") == "ab-bucket"


@pytest.mark.parametrize("text", ["2018-06-13T09:06:20Z", "2018-06-13T09:06:20.537708Z"])
def test_parse_date_reads_both_forms_the_sdk_reads(text):
    assert int(api.parse_date(text)) == int(datetime(2018, 6, 13, 9, 6, 20, tzinfo=UTC).timestamp())


@pytest.mark.parametrize("text", [None, "", "13/06/2018", "2018-06-13T09:06:20.5377081Z"])
def test_parse_date_gives_none_for_anything_else(text):
    assert api.parse_date(text) is None


@pytest.mark.parametrize(
    ("native", "state"),
    [
        ("Submitted", RemoteState.QUEUED),
        ("FullyDispatched", RemoteState.QUEUED),
        ("FullyExecuting", RemoteState.RUNNING),
        ("UploadingResults", RemoteState.RUNNING),
        ("PendingCancel", RemoteState.RUNNING),
        ("Success", RemoteState.SUCCEEDED),
        ("Failure", RemoteState.FAILED),
        ("Cancelled", RemoteState.CANCELLED),
        ("PendingDelete", RemoteState.UNKNOWN),
        (None, RemoteState.UNKNOWN),
    ],
)
def test_state_of_every_task_state(native, state):
    assert api.state_of(native) is state


def test_resources_become_hardware_constraints():
    assert api.hardware_constraints(4, 3 * 2**30 + 1, 1) == [
        {"discriminator": "MinimumCoreHardwareConstraint", "coreCount": 4},
        {"discriminator": "MinimumRamHardwareConstraint", "minimumMemoryMB": 3073},
        {"discriminator": "GpuHardwareConstraint"},
    ]
    assert api.hardware_constraints(None, None, 0) == []


def test_docker_image_splits_repo_and_tag_but_not_a_registry_port():
    assert api.docker_image("python:3.12-slim") == [("DOCKER_REPO", "python"), ("DOCKER_TAG", "3.12-slim")]
    assert api.docker_image("registry:5000/lab/tool") == [("DOCKER_REPO", "registry:5000/lab/tool")]
    assert api.docker_image(None) == []


def test_task_body_keeps_user_text_out_of_docker_cmd():
    body = api.task_body(
        name="n",
        short="s",
        profile="docker-batch",
        argv=["/bin/sh", ".syncd/run.sh"],
        constants={"X": "$(rm -rf /)"},
        tags=["syncd"],
        labels={},
        result_bucket="r",
        resources=api.resource_bucket("in", "job/"),
        constraints={},
        hardware=[],
    )
    assert body["constants"][0] == {"key": "DOCKER_CMD", "value": "/bin/sh .syncd/run.sh"}
    assert body["autoDeleteOnCompletion"] is False and body["instanceCount"] == 1
    assert body["advancedResourceBuckets"][0]["resourcesTransformation"] == {"stripPrefix": {"prefix": "job/"}}
