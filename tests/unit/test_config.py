"""syncd.config via syncd.service.daemon.load: typed config, ${ENV}, errors naming file:line and field."""

from __future__ import annotations

from pathlib import Path

import pytest

from syncd.errors import ConfigError
from syncd.service.daemon import load
from syncd.storage.file import FileStorageOptions
from syncd.templates import INIT_CONFIG

BASE = """\
state_dir: .state
storages:
  local: {type: file, root: buckets}
backends:
  local:
    type: local
    max_parallel: 2
inboxes:
  - name: default
    path: inbox
    outbox: outbox
    failed: failed
    backend: local
    storage: local
    bucket: results
    settle: 2s
"""
# line numbers in BASE
L_STATE, L_STORAGES, L_STORAGE_LOCAL, L_BACKENDS, L_BACKEND_LOCAL, L_BACKEND_TYPE = 1, 2, 3, 4, 5, 6
L_INBOXES, L_NAME, L_PATH, L_OUTBOX, L_FAILED, L_BACKEND, L_STORAGE, L_BUCKET, L_SETTLE = (
    8,
    9,
    10,
    11,
    12,
    13,
    14,
    15,
    16,
)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "site" / "syncd.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def problems_of(path: Path, env: dict | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load(path, env=env or {})
    assert info.value.problems, "a ConfigError must list its problems"
    return info.value.problems


def one_problem(problems: list[str], path: Path, line: int, field: str, *fragments: str) -> str:
    """The single problem that names ``path:line``, the dotted ``field`` and every fragment."""
    prefix = f"{path.resolve()}:{line}: {field}: "
    hits = [p for p in problems if p.startswith(prefix) and all(f in p for f in fragments)]
    assert len(hits) == 1, f"expected one problem starting {prefix!r} containing {fragments}; got {problems}"
    return hits[0]


def test_load_init_template_loads(tmp_path):
    path = write(tmp_path, INIT_CONFIG)
    config = load(path, env={})
    site = path.parent.resolve()
    inbox = config.inbox("default")
    assert inbox.path == site / "inbox"
    assert inbox.outbox == site / "outbox"
    assert inbox.failed == site / "failed"
    assert inbox.settle == 2.0
    assert inbox.observer == "auto"
    assert inbox.spool_dir == site / "inbox" / ".syncd"
    assert config.state_dir == site / ".state"
    assert config.db_path == site / ".state" / "syncd.db"
    assert config.backend_options["local"].max_parallel == 2
    storage = config.storage_options["local"]
    assert isinstance(storage, FileStorageOptions)
    assert storage.root == site / "buckets"
    assert config.source == path.resolve()


def test_load_paths_relative_to_config_file_not_cwd(tmp_path, monkeypatch):
    path = write(
        tmp_path, BASE.replace("path: inbox", "path: ../shared/inbox").replace("failed: failed", "failed: /abs/failed")
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    config = load(path, env={})
    inbox = config.inboxes[0]
    assert inbox.path == (tmp_path / "shared" / "inbox").resolve()
    assert inbox.failed == Path("/abs/failed")
    assert config.storage_options["local"].root == (tmp_path / "site" / "buckets").resolve()


def test_load_interpolates_environment(tmp_path):
    text = (
        BASE.replace("bucket: results", "bucket: ${BUCKET}")
        .replace("settle: 2s", "settle: ${SETTLE:-7s}")
        .replace("path: inbox", "path: ${ROOT}/in")
    )
    config = load(write(tmp_path, text), env={"BUCKET": "lab-results", "ROOT": "/data"})
    inbox = config.inboxes[0]
    assert inbox.bucket == "lab-results"
    assert inbox.settle == 7.0
    assert inbox.path == Path("/data/in")


def test_load_interpolation_env_wins_over_default(tmp_path):
    text = BASE.replace("settle: 2s", "settle: ${SETTLE:-7s}")
    assert load(write(tmp_path, text), env={"SETTLE": "3s"}).inboxes[0].settle == 3.0


def test_load_double_dollar_is_literal_dollar(tmp_path):
    text = BASE.replace("settle: 2s", "settle: 2s\n    prefix: a$$b/$${NOT}")
    config = load(write(tmp_path, text), env={"NOT": "expanded"})
    assert config.inboxes[0].prefix == "a$b/${NOT}"


def test_load_missing_env_var_names_file_line_and_variable(tmp_path):
    path = write(tmp_path, BASE.replace("bucket: results", "bucket: ${LAB_BUCKET}"))
    problem = one_problem(problems_of(path), path, L_BUCKET, "inboxes.0.bucket", "LAB_BUCKET", "is not set")
    assert "${LAB_BUCKET:-default}" in problem


def test_load_unknown_top_level_key(tmp_path):
    path = write(tmp_path, BASE + "workerz: 3\n")
    one_problem(problems_of(path), path, 17, "workerz", "unknown key 'workerz'")


def test_load_unknown_key_inside_inbox(tmp_path):
    path = write(tmp_path, BASE + "    observr: polling\n")
    one_problem(problems_of(path), path, 17, "inboxes.0.observr", "unknown key 'observr'")


def test_load_unknown_key_inside_backend_section(tmp_path):
    path = write(tmp_path, BASE.replace("max_parallel: 2", "max_paralel: 2"))
    one_problem(problems_of(path), path, 7, "backends.local.max_paralel", "unknown key 'max_paralel'")


def test_load_unknown_key_inside_storage_section(tmp_path):
    path = write(tmp_path, BASE.replace("{type: file, root: buckets}", "{type: file, rot: buckets}"))
    problems = problems_of(path)
    one_problem(problems, path, L_STORAGE_LOCAL, "storages.local.rot", "unknown key 'rot'")
    one_problem(problems, path, L_STORAGE_LOCAL, "storages.local.root", "required but missing")


def test_load_unknown_backend_type_lists_valid_types(tmp_path):
    path = write(tmp_path, BASE.replace("type: local", "type: slurmm"))
    one_problem(
        problems_of(path),
        path,
        L_BACKEND_TYPE,
        "backends.local.type",
        "unknown backend type 'slurmm'",
        "valid types:",
        "local",
    )


def test_load_unknown_storage_type_lists_valid_types(tmp_path):
    path = write(tmp_path, BASE.replace("type: file", "type: ftp"))
    one_problem(
        problems_of(path),
        path,
        L_STORAGE_LOCAL,
        "storages.local.type",
        "unknown storage type 'ftp'",
        "valid types:",
        "file",
    )


def test_load_backend_section_without_type(tmp_path):
    path = write(tmp_path, BASE.replace("    type: local\n", ""))
    one_problem(problems_of(path), path, L_BACKEND_LOCAL, "backends.local", "needs a 'type' key")


def test_load_inbox_refers_to_undefined_backend(tmp_path):
    path = write(tmp_path, BASE.replace("backend: local", "backend: hpc"))
    one_problem(problems_of(path), path, L_BACKEND, "inboxes.0.backend", "no backend named 'hpc'", "defined: local")


def test_load_inbox_refers_to_undefined_storage(tmp_path):
    path = write(tmp_path, BASE.replace("storage: local", "storage: s3"))
    one_problem(problems_of(path), path, L_STORAGE, "inboxes.0.storage", "no storage named 's3'", "defined: local")


def test_load_refuses_outbox_inside_inbox(tmp_path):
    path = write(tmp_path, BASE.replace("outbox: outbox", "outbox: inbox/results"))
    one_problem(problems_of(path), path, L_OUTBOX, "inboxes.0.outbox", "must not be inside the inbox")


def test_load_refuses_failed_equal_to_inbox(tmp_path):
    path = write(tmp_path, BASE.replace("failed: failed", "failed: ./inbox"))
    one_problem(problems_of(path), path, L_FAILED, "inboxes.0.failed", "must not be inside the inbox")


def test_load_refuses_duplicate_inbox_names(tmp_path):
    second = """\
  - name: default
    path: inbox2
    outbox: outbox
    failed: failed
    backend: local
    storage: local
    bucket: results
"""
    path = write(tmp_path, BASE + second)
    one_problem(problems_of(path), path, 17, "inboxes.1.name", "inbox name 'default' is used twice")


def test_load_refuses_overlapping_inboxes(tmp_path):
    second = """\
  - name: other
    path: inbox/sub
    outbox: outbox
    failed: failed
    backend: local
    storage: local
    bucket: results
"""
    path = write(tmp_path, BASE + second)
    one_problem(problems_of(path), path, 18, "inboxes.1.path", "overlaps inbox 'default'")


def test_load_bad_duration_names_field_and_line(tmp_path):
    path = write(tmp_path, BASE.replace("settle: 2s", "settle: soon"))
    one_problem(problems_of(path), path, L_SETTLE, "inboxes.0.settle", "'soon' is not a duration")


def test_load_bad_poll_duration_names_field_and_line(tmp_path):
    path = write(tmp_path, BASE + "poll:\n  first: 1s\n  max: forever\n")
    one_problem(problems_of(path), path, 19, "poll.max", "'forever' is not a duration")


def test_load_missing_required_inbox_key(tmp_path):
    path = write(tmp_path, BASE.replace("    bucket: results\n", ""))
    one_problem(problems_of(path), path, L_NAME, "inboxes.0.bucket", "required but missing")


def test_load_bad_inbox_name_pattern(tmp_path):
    path = write(tmp_path, BASE.replace("name: default", "name: 'my inbox/x'"))
    one_problem(problems_of(path), path, L_NAME, "inboxes.0.name", "pattern")


def test_load_reports_every_problem_at_once(tmp_path):
    text = (
        BASE.replace("backend: local", "backend: hpc")
        .replace("storage: local", "storage: s3")
        .replace("max_parallel: 2", "max_paralel: 2")
    )
    path = write(tmp_path, text)
    problems = problems_of(path)
    one_problem(problems, path, L_BACKEND, "inboxes.0.backend", "no backend named 'hpc'")
    one_problem(problems, path, L_STORAGE, "inboxes.0.storage", "no storage named 's3'")
    one_problem(problems, path, 7, "backends.local.max_paralel", "unknown key")


def test_load_duplicate_key_names_file_and_line(tmp_path):
    path = write(tmp_path, BASE.replace("settle: 2s", "settle: 2s\n    bucket: other"))
    problems = problems_of(path)
    assert len(problems) == 1
    assert problems[0].startswith(f"{path.resolve()}:17: ")
    assert "duplicate key 'bucket' (first at line 15)" in problems[0]


def test_load_invalid_yaml_names_file_and_line(tmp_path):
    path = write(tmp_path, BASE.replace("bucket: results", "bucket: [results"))
    problems = problems_of(path)
    assert len(problems) == 1
    assert problems[0].startswith(f"{path.resolve()}:")
    assert "not valid YAML" in problems[0]
    line = int(problems[0][len(str(path.resolve())) + 1 :].split(":", 1)[0])
    assert line >= L_BUCKET


def test_load_not_a_mapping(tmp_path):
    path = write(tmp_path, "- just\n- a list\n")
    problems = problems_of(path)
    assert problems == [f"{path.resolve()}: the config must be a mapping of keys like state_dir, inboxes"]


def test_load_missing_file_says_how_to_create_one(tmp_path):
    path = tmp_path / "absent.yaml"
    problems = problems_of(path)
    assert str(path.resolve()) in problems[0]
    assert "syncd init" in problems[0]


def test_load_env_defaults_to_process_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("SYNCD_TEST_BUCKET", "from-env")
    path = write(tmp_path, BASE.replace("bucket: results", "bucket: ${SYNCD_TEST_BUCKET}"))
    assert load(path).inboxes[0].bucket == "from-env"
