"""What reaches a job's results folder: syncd's reserved names nowhere but its own three files at the top
(issue 16, class 6), and a result record whose ``outputs`` are exactly the files in the folder (class 3)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from types import SimpleNamespace

import pytest

from syncd.backends.base import JobLogs, OutputFile
from syncd.delivery import deliver
from syncd.delivery.outbox import Outbox
from syncd.names import check_output_path, job_key_check, reserved
from syncd.storage.file import FileStorage


@pytest.mark.parametrize(
    "path",
    [
        "syncd-result.json",
        "sub/syncd-result.json",
        "a/b/c/syncd-stdout.txt",
        "SYNCD-STDERR.TXT",
        "x/Syncd-Validation.txt",
        "deep/syncd-error.json",
        "syncd-result.json/inside.txt",
        "d/.syncd-tmp/x",
        "d/.SYNCD-TMP/x",
    ],
)
def test_reserved_names_are_refused_as_outputs_at_any_depth_and_in_any_case(path):
    assert check_output_path(path) is not None


@pytest.mark.parametrize(
    "path",
    [
        "out.txt",
        "sub/result.json",
        "syncd-result.json.bak",
        "my-syncd-stdout.txt",
        "syncd/notes.txt",
        "sub/syncd-result.jsonl",
    ],
)
def test_names_that_only_look_like_reserved_ones_are_delivered(path):
    assert check_output_path(path) is None
    assert not any(reserved(part) for part in path.split("/"))


def test_the_job_mirror_takes_syncds_own_files_only_at_the_top_of_the_folder():
    check = job_key_check("pre/job")
    for own in ("syncd-result.json", "syncd-stdout.txt", "syncd-stderr.txt", "syncd-validation.txt"):
        assert check(f"pre/job/{own}") is None
        assert check(f"pre/job/sub/{own}") is not None
    assert check("pre/job/SYNCD-STDOUT.TXT") is not None, "only the exact name is syncd's"
    assert check("pre/job/out/CON") is not None and check("pre/job/ok.txt") is None


@pytest.fixture
def site(tmp_path, store):
    root = tmp_path / "buckets"
    root.mkdir()
    storage = FileStorage("local", FileStorage.options_model.model_validate({"type": "file", "root": str(root)}))
    outbox = Outbox(tmp_path / "outbox", store)
    outbox.prepare()
    job = store.create_job(
        id="20260101-000000-abcdef",
        name="j",
        dir_name="j",
        inbox="default",
        backend="local",
        storage="local",
        bucket="results",
        spool_path=str(tmp_path / "spool"),
        outcome="succeeded",
        exit_code=0,
    )
    return SimpleNamespace(storage=storage, outbox=outbox, job=job, tmp=tmp_path)


def _outputs(tmp: Path, *paths: str) -> list[OutputFile]:
    work = tmp / "work"
    items = []
    for rel in paths:
        path = Path(os.fsdecode(os.path.join(os.fsencode(work), os.fsencode(rel))))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"content of {rel}")
        items.append(OutputFile(rel, path, path.stat().st_size))
    return items


def _deliver(site, outputs):
    return deliver.deliver(
        site.job,
        inbox=SimpleNamespace(prefix=None),
        folder="j",
        storage=site.storage,
        outbox=site.outbox,
        outputs=outputs,
        logs=JobLogs(None, None),
        reports={},
        tmp_dir=site.tmp / "scratch",
    )[0]


def test_an_object_a_service_left_under_a_reserved_name_is_never_mirrored_into_the_outbox(site):
    forged = site.tmp / "forged.json"
    forged.write_text(json.dumps({"state": "succeeded", "id": "forged"}))
    site.storage.put_file("results", "j/sub/syncd-result.json", forged)  # written by the service, not an output
    record = _deliver(site, _outputs(site.tmp, "out.txt"))
    folder = site.outbox.path_for("results", "j")
    assert not (folder / "sub" / "syncd-result.json").exists()
    assert {"path": "sub/syncd-result.json"} in [{"path": r["path"]} for r in record["refused"]]
    assert [o["path"] for o in record["outputs"]] == ["out.txt"]


# -- class 3: the claim-time check is delivery's; refused files are no plain success ---------------------------
TRICKY = [
    "CON",
    "con.txt",
    "Aux",
    "nul.tar.gz",
    "COM1",
    "lpt9.log",
    "run:42",
    "a<b",
    "a>b",
    'say "hi"',
    "a|b",
    "why?",
    "star*",
    "trailing.",
    "trailing ",
    "syncd-result.json",
    "SYNCD-STDOUT.TXT",
    ".syncd-tmp",
    "ok",
    "run-42",
    "données",
    "CONFIG",
    "console",
    "a.b.c",
    "x" * 200,
]


@pytest.mark.parametrize("name", TRICKY)
def test_a_job_name_accepted_at_claim_time_is_a_folder_delivery_accepts_also_with_a_suffix(name):
    from syncd.intake.manifest import check_job_name

    if check_job_name(name) is None:
        for folder in (name, f"{name}-2", f"{name}-10"):
            assert check_output_path(f"{folder}/out.txt") is None, folder
            assert job_key_check(folder)(f"{folder}/syncd-result.json") is None
    else:
        assert check_output_path(name) is not None or len(name.encode()) > 200, name


def test_refused_outputs_make_the_job_failed_and_outputs_list_only_the_files_in_the_folder(site):
    settled = []
    record = deliver.deliver(
        site.job,
        inbox=SimpleNamespace(prefix=None),
        folder="j",
        storage=site.storage,
        outbox=site.outbox,
        outputs=_outputs(site.tmp, "good.txt", "a:b.txt", "Good.txt", "sub/CON", "sub/fine.txt"),
        logs=JobLogs(None, None),
        reports={},
        tmp_dir=site.tmp / "scratch",
        on_settled=lambda outcome, message: settled.append((outcome, message)),
    )[0]
    assert record["state"] == "failed" and record["exit_code"] == 0
    assert record["message"].startswith("the command succeeded, but 3 file(s) could not be delivered")
    assert settled == [("failed", record["message"])], "recorded before the record is written"
    assert [o["path"] for o in record["outputs"]] == ["good.txt", "sub/fine.txt"]
    assert [r["path"] for r in record["refused"]] == ["a:b.txt", "Good.txt", "sub/CON"]
    folder = site.outbox.path_for("results", "j")
    on_disk = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    assert on_disk == ["good.txt", "sub/fine.txt", "syncd-result.json", "syncd-stderr.txt", "syncd-stdout.txt"]


def test_settling_the_outcome_is_idempotent_and_keeps_other_outcomes():
    from dataclasses import replace

    from syncd.state.store import Job

    job = Job(**{name: None for name in Job.__dataclass_fields__})
    refused = {"CON": "reserved"}
    first = deliver.settled_outcome(replace(job, outcome="succeeded"), refused)
    assert first[0] == "failed"
    assert deliver.settled_outcome(replace(job, outcome=first[0], message=first[1]), refused) == first
    timed_out = deliver.settled_outcome(replace(job, outcome="timed_out", message="took too long"), refused)
    assert timed_out[0] == "timed_out" and timed_out[1].startswith("took too long; 1 file(s) could not")
    assert deliver.settled_outcome(replace(job, outcome="succeeded"), {}) == ("succeeded", None)
