"""The hostile input corpus (tests/data/hostile) through ONE real daemon.

Every case is built outside the inbox and dropped with one rename. Each case then
gets the outcome documented in tests/data/hostile/README.md: rejected with a clear
error and every user file kept byte-identical in ``failed/<name>/``, or run and
handled safely, or ignored. The daemon must survive all of it and still run a
normal job afterwards.
"""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.data.hostile.cases import (
    CASES,
    MANY_FILES,
    PWNED,
    Case,
    Outcome,
    build,
    fingerprint,
    prepare_outside,
)
from tests.support.harness import SyncdProcess, drop_job, http_get, http_port, make_config, wait_for

pytestmark = pytest.mark.e2e

SYNCD_REPORTS = {b"ERROR.txt", b"syncd-error.json", b"ERROR-syncd.txt"}
CORPUS_DEADLINE = 60.0


@dataclass
class Corpus:
    daemon: SyncdProcess
    site: Path
    outside: Path
    before: dict[str, dict] = field(default_factory=dict)
    entry_before: dict[str, object] = field(default_factory=dict)
    settle_seconds: float = 0.0


def _bytes(path: Path | bytes) -> bytes:
    return os.fsencode(path)


def failed_dir(corpus: Corpus, case: Case) -> bytes:
    return os.path.join(_bytes(corpus.site / "failed"), case.fsname)


def outbox_dir(corpus: Corpus, case: Case) -> Path:
    return corpus.site / "outbox" / "results" / case.outbox_folder


def _decided(corpus: Corpus, case: Case) -> bool:
    return (
        os.path.exists(os.path.join(failed_dir(corpus, case), b"syncd-error.json"))
        or (outbox_dir(corpus, case) / "syncd-result.json").exists()
    )


def _site_config(root: Path, **overrides) -> Path:
    return make_config(
        root,
        settle="0.3s",
        rescan="1s",
        extra={
            "backends": {"local": {"type": "local", "max_parallel": 4, "keep_workdir": True}},
        },
        **overrides,
    )


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    site = tmp_path_factory.mktemp("hostile") / "site"
    config = _site_config(site, max_input_files=10_000)
    outside = site / "outside"  # same filesystem as the inbox, outside it
    prepare_outside(outside)
    staging = site / "staging"
    staging.mkdir()
    built = {case.key: build(case, staging, outside) for case in CASES}
    result = Corpus(daemon=SyncdProcess(config), site=site, outside=outside)
    for case in CASES:
        path = built[case.key]
        if os.path.isdir(path) and not os.path.islink(path):
            result.before[case.key] = fingerprint(path)
        result.entry_before[case.key] = (
            os.readlink(path) if os.path.islink(path) else open(path, "rb").read() if os.path.isfile(path) else None
        )
    daemon = result.daemon.start()
    inbox = _bytes(daemon.inbox)
    started = time.monotonic()
    for case in CASES:
        os.rename(built[case.key], os.path.join(inbox, case.fsname))
    pending = [c for c in CASES if c.outcome != "ignored"]
    deadline = time.monotonic() + CORPUS_DEADLINE
    while pending and time.monotonic() < deadline and daemon.proc.poll() is None:
        pending = [c for c in pending if not _decided(result, c)]
        time.sleep(0.2)
    result.settle_seconds = time.monotonic() - started
    time.sleep(2.5)  # two more rescans: an ignored entry had every chance to be picked up
    yield result
    if daemon.proc.poll() is None:
        daemon.stop()


def _is_report_name(rel: bytes) -> bool:
    return (
        rel in SYNCD_REPORTS
        or (rel.startswith(b"syncd-error-") and rel.endswith(b".json"))
        or (rel.startswith(b"ERROR-syncd-") and rel.endswith(b".txt"))
    )


def _after_without_reports(path: bytes, before: dict) -> dict:
    after = fingerprint(path)
    return {rel: v for rel, v in after.items() if not (_is_report_name(rel) and rel not in before)}


def _report_path(folder: bytes, before: dict) -> bytes:
    """syncd's report: syncd-error.json, or syncd-error-<id>.json when the user has a file of that name."""
    if b"syncd-error.json" not in before:
        return os.path.join(folder, b"syncd-error.json")
    ours = [n for n in os.listdir(folder) if n.startswith(b"syncd-error-") and n.endswith(b".json") and n not in before]
    return os.path.join(folder, ours[0]) if len(ours) == 1 else os.path.join(folder, b"(no report of syncd's)")


def _text_report_name(folder: bytes, before: dict) -> bytes:
    """syncd's ERROR.txt: beside the user's ERROR.txt (and ERROR-syncd.txt) under the next free name."""
    for name in (b"ERROR.txt", b"ERROR-syncd.txt"):
        if name not in before:
            return name
    ours = [n for n in os.listdir(folder) if n.startswith(b"ERROR-syncd-") and n.endswith(b".txt") and n not in before]
    return ours[0] if len(ours) == 1 else b"(no text report of syncd's)"


def _check_rejected(corpus: Corpus, case: Case) -> None:
    folder = failed_dir(corpus, case)
    report_path = (
        _report_path(folder, corpus.before[case.key])
        if os.path.isdir(folder)
        else os.path.join(folder, b"syncd-error.json")
    )
    assert os.path.exists(report_path), (
        f"{case.key}: not rejected; result record: "
        f"{(outbox_dir(corpus, case) / 'syncd-result.json').exists()}; inbox still has it: "
        f"{os.path.lexists(os.path.join(_bytes(corpus.daemon.inbox), case.fsname))}"
    )
    with open(report_path, "rb") as handle:
        report = json.loads(handle.read())
    assert report["state"] == "rejected" and report.get("id"), report
    for expected in case.expect:
        assert any(expected in problem for problem in report["problems"]), (expected, report["problems"])
    before = corpus.before[case.key]
    text_name = _text_report_name(folder, before)
    with open(os.path.join(folder, text_name), encoding="utf-8") as handle:
        text = handle.read()
    assert all(expected in text for expected in case.expect) and "move this folder back into the inbox" in text
    assert _after_without_reports(folder, before) == before, "every user file is kept byte-identical"
    assert not outbox_dir(corpus, case).exists(), "a rejected job is never run"


def _check_ran(corpus: Corpus, case: Case) -> None:
    folder = outbox_dir(corpus, case)
    assert (folder / "syncd-result.json").exists(), (
        f"{case.key}: no result record; rejected instead: "
        f"{os.path.exists(os.path.join(failed_dir(corpus, case), b'syncd-error.json'))}"
    )
    result = json.loads((folder / "syncd-result.json").read_text())
    assert result["state"] == case.outcome, result
    if case.check is not None:
        case.check(Outcome(result=result, folder=folder), folder)
    kept = _bytes(corpus.daemon.inbox / ".syncd" / "done" / result["id"])
    wait_for(lambda: os.path.isdir(kept), timeout=10, what="the claimed folder to be archived")
    assert fingerprint(kept) == corpus.before[case.key], "the user's files are archived unchanged"


def _check_ignored(corpus: Corpus, case: Case) -> None:
    entry = os.path.join(_bytes(corpus.daemon.inbox), case.fsname)
    assert os.path.lexists(entry), f"{case.key}: was taken out of the inbox"
    if os.path.islink(entry):
        assert os.readlink(entry) == corpus.entry_before[case.key], "the link is unchanged"
    elif os.path.isfile(entry):
        with open(entry, "rb") as handle:
            assert handle.read() == corpus.entry_before[case.key]
    else:
        assert fingerprint(entry) == corpus.before[case.key]
    assert not os.path.lexists(failed_dir(corpus, case)) and not outbox_dir(corpus, case).exists()


@pytest.mark.parametrize("case", CASES, ids=[c.key for c in CASES])
def test_corpus_case_gets_its_documented_outcome(corpus, case):
    {
        "rejected": _check_rejected,
        "succeeded": _check_ran,
        "failed": _check_ran,
        "validated": _check_ran,
        "ignored": _check_ignored,
    }[case.outcome](corpus, case)


def test_corpus_has_at_least_forty_cases_with_unique_names():
    assert len(CASES) >= 40
    assert len({c.key for c in CASES}) == len(CASES)
    assert len({c.fsname for c in CASES}) == len(CASES)


def test_corpus_daemon_survives_and_still_runs_a_normal_job(corpus):
    daemon = corpus.daemon
    assert daemon.proc.poll() is None, f"syncd died during the corpus:\n{daemon.log()[-5000:]}"
    drop_job(daemon.inbox, "after-the-corpus", {"command": "tr a-z A-Z < in.txt > out.txt"}, {"in.txt": "fine\n"})
    result = daemon.result("after-the-corpus", timeout=30)
    assert result["state"] == "succeeded"
    assert (daemon.outbox / "results" / "after-the-corpus" / "out.txt").read_text() == "FINE\n"
    status = json.loads(daemon.cli("status", "--json", "--all").stdout)
    assert [j["state"] for j in status if j["name"] == "after-the-corpus"] == ["succeeded"]
    on_disk = sum(1 for c in CASES if os.path.exists(os.path.join(failed_dir(corpus, c), b"syncd-error.json")))
    assert sum(1 for job in status if job["state"] == "rejected") == on_disk, "status agrees with failed/"
    assert daemon.proc.poll() is None


def test_corpus_never_executes_text_spliced_from_names_or_values(corpus):
    """Names and values like ``$(touch pwned-…)`` are data: no file named pwned-* may appear anywhere."""
    places = [_bytes(corpus.site), _bytes(Path.cwd()), b"/tmp", _bytes(Path.home())]
    shallow = {b"/tmp", _bytes(Path.cwd()), _bytes(Path.home())}
    wanted = {os.fsencode(n) for n in PWNED if n != "pwned-yaml-tag"} | {b"pwned-linked"}
    found = []
    for place in places:
        walker = [(place, [], os.listdir(place))] if place in shallow else os.walk(place)
        for dirpath, _dirs, files in walker:
            found += [os.path.join(dirpath, f) for f in files if f in wanted]
    assert not found, f"injected commands were executed: {found}"


INVISIBLE = ("\u202e", "\u202d", "\u2066", "\u200b", "\u2028", "\x9b", "\x1b")
LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d (DEBUG|INFO|WARNING|ERROR|CRITICAL) ")


def test_corpus_forges_no_log_line_and_hides_no_character_in_the_log(corpus):
    """Names with newlines and fake log lines went through the daemon: each record is still one line."""
    lines = corpus.daemon.log().splitlines()
    forged = [line for line in lines if not LOG_LINE.match(line)]
    assert not forged, forged[:10]
    assert not [line for line in lines if any(ch in line for ch in INVISIBLE)]
    assert any("h-forge\\n2026-01-01 00:00:00 INFO" in line for line in lines), "the name is shown escaped"


def test_corpus_error_txt_has_one_line_per_problem(corpus):
    for case in CASES:
        folder = failed_dir(corpus, case)
        if case.outcome != "rejected" or not os.path.isdir(folder):
            continue
        before = corpus.before[case.key]
        report = json.loads(open(_report_path(folder, before), "rb").read())
        with open(os.path.join(folder, _text_report_name(folder, before)), encoding="utf-8") as handle:
            text = handle.read()
        problems = [line for line in text.splitlines() if line.startswith("  - ")]
        assert len(problems) == len(report["problems"]), (case.key, text)
        assert not any(ch in text for ch in INVISIBLE), case.key
    text = open(
        os.path.join(failed_dir(corpus, next(c for c in CASES if c.key == "problem-forged")), b"ERROR.txt"),
        encoding="utf-8",
    ).read()
    assert "\n  - forged" not in text and "p\\n  - forged" in text


def test_corpus_status_and_jobs_show_every_name_on_one_visible_line(corpus):
    daemon = corpus.daemon
    table = daemon.cli("status", "--all").stdout
    assert "h-new\\nline" in table and not any(ch in table for ch in INVISIBLE)
    assert not any(line.startswith("line") for line in table.splitlines()), "a name broke a row"
    raw = daemon.cli("status", "--json", "--all").stdout
    assert not any(ch in raw for ch in INVISIBLE) and "h-new\nline" in {j["name"] for j in json.loads(raw)}
    code, body = http_get(http_port(daemon), "/jobs")
    assert code == 200 and not any(ch in body for ch in INVISIBLE)
    assert "h-new\nline" in {j["name"] for j in json.loads(body)}


def test_corpus_logs_no_unexpected_errors(corpus):
    log = corpus.daemon.log()
    for marker in ("Traceback", "unexpected error", "failed unexpectedly", "claiming '"):
        assert marker not in log, (
            f"{marker!r} in the daemon log:\n" + "\n".join(line for line in log.splitlines() if marker in line)[:3000]
        )


@pytest.mark.slow
def test_many_files_job_is_rejected_by_max_input_files_and_kept_whole(tmp_path):
    """100,000 one-byte files: over ``max_input_files: 10000`` → rejected, all 100,000 files kept."""
    site = tmp_path / "site"
    config = _site_config(site, max_input_files=10_000)
    outside = site / "outside"
    prepare_outside(outside)
    path = build(MANY_FILES, site, outside)
    before = fingerprint(path)
    assert sum(1 for v in before.values() if v[0] == "file") == 100_001
    daemon = SyncdProcess(config).start()
    try:
        os.rename(path, os.path.join(_bytes(daemon.inbox), MANY_FILES.fsname))
        failed = site / "failed" / "h-many-files"
        wait_for(
            lambda: (failed / "syncd-error.json").exists() or daemon.proc.poll() is not None,
            timeout=120,
            what="the 100,000-file job to be rejected",
        )
        report = json.loads((failed / "syncd-error.json").read_text())
        assert any("more than 10000 files" in p for p in report["problems"]), report
        assert _after_without_reports(_bytes(failed), before) == before
        drop_job(daemon.inbox, "small", {"command": "echo ok > ok.txt"})
        assert daemon.result("small", timeout=30)["state"] == "succeeded"
    finally:
        daemon.stop()
