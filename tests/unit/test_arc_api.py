"""A-REX's wire shapes: both JSON renderings, its name escaping, and the ADL built as XML."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

from syncd.backends.arc import api
from syncd.backends.base import RemoteState


def test_items_reads_every_rendering_of_a_collection():
    assert api.items(None) == [] and api.items("") == []
    assert api.items({"id": "a"}) == [{"id": "a"}]
    assert api.items([{"id": "a"}, {"id": "b"}]) == [{"id": "a"}, {"id": "b"}]


def test_listing_takes_file_and_dir_keys_single_or_repeated():
    assert api.listing({"file": "a.txt"}) == (["a.txt"], [])
    assert api.listing({"file": ["a", "b"], "dir": "sub"}) == (["a", "b"], ["sub"])
    assert api.listing({}) == ([], [])


def test_listing_undoes_arex_escaping_utf8_bytes_one_by_one():
    escaped = "".join(chr(b) for b in "Übersicht café.txt".encode())
    assert api.listing({"file": [escaped, "plain.txt"]}) == (["Übersicht café.txt", "plain.txt"], [])


def test_versions_and_the_choice_between_them():
    assert api.versions({"version": "1.0"}) == ["1.0"]
    assert api.versions({"version": ["1.0", "1.1"]}) == ["1.0", "1.1"]
    assert api.pick_version(["1.0", "1.1"], token=False) == "1.1"
    assert api.pick_version(["1.0"], token=True) is None


def _entry(state=None, exit_code=None, error=None, code="200"):
    info = {"Name": "k"}
    if state:
        info["State"] = ["nordugrid:X", f"arcrest:{state}", "bes:Y"]
    if exit_code is not None:
        info["ExitCode"] = str(exit_code)
    if error:
        info["Error"] = error
    return api.entries(
        {"job": {"status-code": code, "reason": "OK", "id": "j", "info_document": {"ComputingActivity": info}}}
    )[0]


@pytest.mark.parametrize(
    ("state", "exit_code", "error", "expected"),
    [
        ("ACCEPTED", None, None, RemoteState.QUEUED),
        ("RUNNING", None, None, RemoteState.RUNNING),
        ("FINISHING", None, None, RemoteState.RUNNING),
        ("FINISHED", 0, None, RemoteState.SUCCEEDED),
        ("FINISHED", 4, None, RemoteState.FAILED),
        ("FAILED", 3, "LRMS error: (3) Job finished with wrong exit code - 3 != 0", RemoteState.FAILED),
        ("FAILED", None, "Job is canceled by external request", RemoteState.CANCELLED),
        ("KILLED", None, None, RemoteState.CANCELLED),
        (None, None, None, RemoteState.QUEUED),
    ],
)
def test_states_map_to_syncd_states(state, exit_code, error, expected):
    status = api.status_of(_entry(state, exit_code, error))
    assert status.state is expected
    if expected is RemoteState.FAILED:
        assert status.exit_code == exit_code


def test_an_unknown_job_is_unknown():
    assert api.status_of(_entry(code="404")).state is RemoteState.UNKNOWN


def test_adl_escapes_every_value_and_refuses_what_xml_cannot_carry():
    hostile = "</Value><x>&amp; \"q\" 's' ]]>"
    doc = api.adl(
        name="syncd-k",
        executable="/bin/sh",
        arguments=[".syncd/syncd-arc.sh"],
        stdout="o",
        stderr="e",
        env={"V": hostile},
        inputs=["a <b>.txt"],
        queue="q",
        slots=2,
        memory_bytes=1024,
        walltime_seconds=60,
    )
    root = ET.fromstring(doc)
    ns = {"a": api.ADL_NS}
    assert root.find("a:Application/a:Environment/a:Value", ns).text == hostile
    assert root.find("a:DataStaging/a:InputFile/a:Name", ns).text == "a <b>.txt"
    assert root.find("a:Resources/a:WallTime", ns).text == "60"
    with pytest.raises(ValueError):
        api.adl(name="k", executable="/bin/sh", arguments=[], stdout="o", stderr="e", env={"V": "a\x01b"}, inputs=[])
