"""Cloud Kotta's wire shapes and the job bundle, without a server: how answers are read, what is sent."""

from __future__ import annotations

import io
import json
import tarfile

import pytest

from syncd.backends.base import RemoteState
from syncd.backends.kotta import api, bundle
from syncd.backends.kotta.backend import KottaOptions


def test_job_record_reads_numbered_one_key_items_in_any_order_and_repeated_outputs():
    data = {
        "status": "failed",
        "items": {
            "0": {"outputs": '<a href="http://s3/x?a=1&b=2">syncd-outputs.tar</a>'},
            "1": {"ERROR_CODE": 1001},
            "2": {"status": "failed"},
            "3": {"outputs": "<i>STDERR.txt</i>"},
            "4": {"jobname": "syncd-1"},
            "5": {"walltime": 600},
            "6": {"inputs": '<a href="s3://b/k">k</a>'},
        },
    }
    record = api.job_record(data)
    assert record.outputs == {"syncd-outputs.tar": "http://s3/x?a=1&b=2", "STDERR.txt": None}
    assert (record.jobname, record.error_code, record.walltime) == ("syncd-1", 1001, 600)
    status = api.state_of(record)
    assert (status.state, status.native, status.exit_code) == (RemoteState.TIMED_OUT, "failed", None)
    assert "walltime (10 min)" in status.message


@pytest.mark.parametrize(
    "fields, state",
    [
        ({"status": "completed"}, RemoteState.SUCCEEDED),
        ({"status": "completed", "ERROR": "script_name missing"}, RemoteState.FAILED),  # "Failed" first, then completed
        ({"status": "failed", "ERROR_CODE": 7}, RemoteState.FAILED),
        ({"status": "failed", "ERROR_CODE": -9}, RemoteState.FAILED),
        ({"status": "failed", "ERROR_CODE": 1002}, RemoteState.CANCELLED),
        ({"status": "failed", "ERROR": "Failed to download inputs"}, RemoteState.FAILED),
        ({"status": "failed"}, RemoteState.RUNNING),  # ERROR_CODE is written after the status
        ({"status": "cancelled", "reason": "User request cancel"}, RemoteState.CANCELLED),
        ({"status": "Failed", "ERROR": "boom"}, RemoteState.RUNNING),
        ({"status": "pending"}, RemoteState.QUEUED),
        ({"status": "staging_outputs"}, RemoteState.RUNNING),
        ({"status": "archived"}, RemoteState.UNKNOWN),
    ],
)
def test_state_of_each_word_kotta_writes(fields, state):
    items = {str(i): {k: v} for i, (k, v) in enumerate(fields.items())}
    assert api.state_of(api.job_record({"status": fields["status"], "items": items})).state is state


def test_fail_answers_and_which_of_them_are_refused_tokens():
    assert api.fail_reason({"status": "Success", "job_id": "x"}) is None
    assert api.fail_reason({"status": "Fail", "reason": "Queue : [x] is not valid"}) == "Queue : [x] is not valid"
    for reason in (
        "Failed to authenticate",
        "access_token missing",
        "'user_id'",
        json.dumps({"error": "invalid_grant", "error_description": "..."}),
    ):
        assert api.is_auth_reason(reason), reason
    assert not api.is_auth_reason("Queue : [x] is not valid")
    assert not api.is_auth_reason("invalid literal for int() with base 10: '1.5'")


@pytest.mark.parametrize(
    "url, uri",
    [
        (
            "https://klab-jobs.s3.amazonaws.com/uploads/amzn1.account.X/python/pkl/syncd/k/in-1.dat?Signature=a%2Fb",
            "s3://klab-jobs/uploads/amzn1.account.X/python/pkl/syncd/k/in-1.dat",
        ),
        (
            "https://s3.amazonaws.com/klab-jobs/uploads/u/python/pkl/f.dat?X-Amz-Signature=1",
            "s3://klab-jobs/uploads/u/python/pkl/f.dat",
        ),
        (
            "http://127.0.0.1:8333/klab-jobs/uploads/u/python/pkl/syncd/k/syncd-control.tar?X-Amz-Date=1",
            "s3://klab-jobs/uploads/u/python/pkl/syncd/k/syncd-control.tar",
        ),
    ],
)
def test_s3_uri_of_an_upload_url_virtual_hosted_or_path_style(url, uri):
    assert api.s3_uri(url) == uri


@pytest.mark.parametrize(
    "text",
    [
        "Atza|abc123",
        "Atza|abc123\n",
        json.dumps({"access_token": "Atza|abc123", "refresh_token": "Atzr|r", "token_type": "bearer"}),
        "https://kotta.example.org/handle_login?access_token=Atza%7Cabc123&token_type=bearer&expires_in=3600\n",
        "access_token=Atza%7Cabc123&expires_in=3600",
    ],
)
def test_access_token_from_a_bare_token_the_credentials_json_or_the_login_url(text):
    assert api.token_in(text, "access_token") == "Atza|abc123"


def test_submit_form_declares_the_archive_and_logs_and_numbers_the_inputs():
    form = api.submit_form(
        jobname="syncd-1",
        queue="Test",
        walltime_minutes=3,
        executable=bundle.EXECUTABLE,
        script=bundle.SCRIPT,
        script_name=bundle.SCRIPT_NAME,
        outputs=[bundle.OUTPUTS],
        stdout=bundle.STDOUT,
        stderr=bundle.STDERR,
        input_urls=["s3://a/b", "s3://a/c"],
    )
    assert form["walltime"] == "3" and form["jobtype"] == "script" and form["outputs"] == "syncd-outputs.tar"
    assert [form["input_url_0000"], form["input_url_0001"]] == ["s3://a/b", "s3://a/c"]
    assert (form["output_file_stdout"], form["output_file_stderr"]) == ("STDOUT.txt", "STDERR.txt")


def test_the_job_script_is_constant_and_names_no_job(tmp_path):
    command = "echo $(rm -rf /) `id` 'quoted' \"$HOME\""
    for name in ("c.tar", "d.tar"):
        bundle.control_archive(
            tmp_path / name,
            command=command,
            env={"A": "x y\n"},
            links={"data/in put.txt": "in-1.dat"},
            carried={},
            fetch={},
        )
    assert (tmp_path / "c.tar").read_bytes() == (tmp_path / "d.tar").read_bytes(), (
        "the same job gives the same archive: an unchanged one is not uploaded again"
    )
    with tarfile.open(tmp_path / "c.tar") as tar:
        members = {m.name: m for m in tar}
        assert tar.extractfile("work/.syncd/command").read().decode() == command
        assert tar.extractfile("control/env/A").read() == b"x y\n"
    assert members["control/inputs/data/in put.txt"].linkname == "in-1.dat"
    assert command not in bundle.SCRIPT and "in put" not in bundle.SCRIPT


def _tar(entries) -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, content, kind in entries:
            info = tarfile.TarInfo(name)
            if kind == "link":
                info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
                tar.addfile(info)
            else:
                info.size = len(content)
                tar.addfile(info, io.BytesIO(content))
    return raw.getvalue()


def test_unpack_writes_regular_files_only_and_refuses_names_that_leave_the_folder(tmp_path):
    archive = tmp_path / "out.tar"
    archive.write_bytes(
        _tar(
            [
                ("./ok/x.txt", b"x", "file"),
                ("../escape.txt", b"e", "file"),
                ("/abs.txt", b"a", "file"),
                ("a//b", b"b", "file"),
                ("link", b"", "link"),
                ("./Übersicht café.txt", b"u", "file"),
            ]
        )
    )
    found = bundle.unpack(archive, tmp_path / "out")
    assert found == [
        ("../escape.txt", 1, False),
        ("/abs.txt", 1, False),
        ("a//b", 1, False),
        ("ok/x.txt", 1, True),
        ("Übersicht café.txt", 1, True),
    ]
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file()) == [
        "out.tar",
        "out/ok/x.txt",
        "out/Übersicht café.txt",
    ]


def test_options_take_two_token_sources_and_refuse_an_unknown_queue():
    options = KottaOptions.model_validate(
        {
            "type": "kotta",
            "url": "https://kotta.example.org",
            "access_token": {"token_file": "/run/kotta/credentials.json"},
            "refresh_token": {"token_env": "KOTTA_REFRESH"},
        }
    )
    assert options.queue == "Test" and options.default_walltime == 5 * 3600
    with pytest.raises(ValueError, match="queue"):
        KottaOptions.model_validate(
            {"type": "kotta", "url": "https://k", "access_token": {"token": "a"}, "queue": "test"}
        )
