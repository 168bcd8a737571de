"""A-REX's wire shapes: both JSON renderings, its name escaping, and the ADL built as XML."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

from syncd.backends.arc import ArcBackend, ArcOptions, api, runner
from syncd.backends.base import JobSpec, RemoteState, StagingArea
from syncd.errors import PermanentError
from syncd.intake.manifest import InputFile
from syncd.storage.file import FileStorage


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


@pytest.mark.parametrize(
    ("failure", "expected", "message"),
    [
        ("Job is canceled by external request\n", RemoteState.CANCELLED, "Job is canceled by external request"),
        ("LRMS error: (-1) Job missing from SLURM\n\n", RemoteState.FAILED, "LRMS error: (-1) Job missing from SLURM"),
        ("", RemoteState.FAILED, api.NO_REASON),
    ],
)
def test_a_failure_without_a_reason_takes_the_control_folders_word(failure, expected, message):
    status = api.status_of(_entry("FAILED"))
    assert api.unexplained(status)
    told = api.explained(status, failure)
    assert (told.state, told.message) == (expected, message)


def test_a_failure_with_a_reason_or_a_finished_job_needs_no_second_word():
    assert not api.unexplained(api.status_of(_entry("FAILED", 3, "LRMS error: (3) wrong exit code")))
    assert not api.unexplained(api.status_of(_entry("FINISHED", 4)))
    assert api.unexplained(api.status_of(_entry("FAILED", 143)))  # a killed job's exit code is no reason


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


@pytest.mark.parametrize("choice", ["storage", "auto"])
def test_inputs_from_a_folder_storage_are_refused_with_what_to_do_or_uploaded(tmp_path, choice):
    section = {"type": "arc", "url": "https://ce.example.org/arex", "proxy": str(tmp_path / "proxy.pem")}
    backend = ArcBackend("arc", ArcOptions.model_validate({**section, "inputs": choice}), tmp_path / "work")
    folder = FileStorage("local", FileStorage.options_model.model_validate({"type": "file", "root": str(tmp_path)}))
    spec = JobSpec(
        job_id="j1",
        name="job one",
        submit_key="syncd-j1",
        attempt=1,
        command="cat data.txt",
        staging=StagingArea.for_job(folder, "results", "", "j1"),
    )
    source = tmp_path / "data.txt"
    source.write_text("x")
    if choice == "storage":
        (problem,) = backend.check(spec)
        assert "cannot make URLs" in problem and "inputs: upload" in problem
        with pytest.raises(PermanentError, match="use an s3 storage there"):
            backend.stage(spec, [InputFile("data.txt", source, 1)])
    else:
        assert backend.check(spec) == []
        backend.stage(spec, [InputFile("data.txt", source, 1)])
        assert (tmp_path / "work" / "syncd-j1" / "work" / "data.txt").read_text() == "x", "uploaded from there"
        assert not list((tmp_path / "work" / "syncd-j1" / "work" / ".syncd").glob("fetch/*"))


def test_the_runner_learns_each_input_to_fetch_as_data():
    files = runner.fetch_files([("a dir/$(x) b.txt", "http://s3/k?X-Amz-Signature=1&b=2", 7)])
    assert files == {
        ".syncd/fetch/000000.url": b"http://s3/k?X-Amz-Signature=1&b=2",
        ".syncd/fetch/000000.name": b"a dir/$(x) b.txt",
        ".syncd/fetch/000000.size": b"7",
    }
    assert all(runner.is_own(path) for path in files)
