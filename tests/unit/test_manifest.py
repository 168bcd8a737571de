"""syncd.intake.manifest: job.yaml schema, input selection, path safety; every rejection says where and why."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from syncd.errors import ManifestError
from syncd.intake.manifest import (
    MAX_MANIFEST_BYTES,
    Manifest,
    check_job_name,
    glob_to_regex,
    load_job_directory,
    parse_manifest,
    scan_inputs,
)


def make_job(
    tmp_path: Path,
    manifest: str | None = "command: python run.py\n",
    files: dict[str, bytes | str] | None = None,
    name: str = "job1",
) -> Path:
    job = tmp_path / name
    job.mkdir()
    if manifest is not None:
        (job / "job.yaml").write_text(manifest, encoding="utf-8")
    for rel, content in (files or {}).items():
        path = job / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content.encode() if isinstance(content, str) else content)
    return job


def manifest_problems(job: Path) -> list[str]:
    with pytest.raises(ManifestError) as info:
        parse_manifest(job / "job.yaml")
    assert info.value.path == str(job / "job.yaml")
    return info.value.problems


def job_problems(job: Path, **limits) -> list[str]:
    with pytest.raises(ManifestError) as info:
        load_job_directory(job, **limits)
    assert info.value.problems
    return info.value.problems


def relpaths(directory) -> list[str]:
    return [f.relpath for f in directory.inputs]


# -- manifest rejections ------------------------------------------------------------


def test_parse_manifest_invalid_yaml_names_line(tmp_path):
    job = make_job(tmp_path, "command: run\ninputs: [a, b\nretries: 1\n")
    problems = manifest_problems(job)
    assert len(problems) == 1
    assert problems[0].startswith("job.yaml:")
    assert "not valid YAML" in problems[0]


@pytest.mark.parametrize("text", ["", "- a\n- b\n", "just text\n", "42\n"])
def test_parse_manifest_not_a_mapping(tmp_path, text):
    problems = manifest_problems(make_job(tmp_path, text))
    assert problems == ["job.yaml: must be a mapping with at least a 'command' key, e.g. command: \"python run.py\""]


def test_parse_manifest_missing_command(tmp_path):
    problems = manifest_problems(make_job(tmp_path, "name: hello\n"))
    assert problems == ['job.yaml:1: command: required but missing; add it, e.g. command: "python run.py"']


@pytest.mark.parametrize(
    "text, message",
    [
        ("command: ''\n", "command is empty; write the shell command to run"),
        ("command: '   '\n", "command is empty; write the shell command to run"),
        ("command: []\n", "command list is empty; write e.g. [python, run.py]"),
        ("command: ['']\n", "command list is empty; write e.g. [python, run.py]"),
    ],
)
def test_parse_manifest_empty_command(tmp_path, text, message):
    problems = manifest_problems(make_job(tmp_path, text))
    assert problems == [f"job.yaml:1: command: {message}"]


def test_parse_manifest_unknown_key_names_key_and_line(tmp_path):
    problems = manifest_problems(make_job(tmp_path, "command: run\n\ncolour: blue\n"))
    assert len(problems) == 1
    assert problems[0].startswith("job.yaml:3: colour: unknown key 'colour'; known keys: command,")


def test_parse_manifest_unknown_key_in_resources_lists_resources_keys(tmp_path):
    problems = manifest_problems(make_job(tmp_path, "command: run\nresources:\n  cpus: 2\n  mem: 4GiB\n"))
    assert len(problems) == 1
    assert problems[0].startswith("job.yaml:4: resources.mem: unknown key 'mem'")
    # The hint must list the keys valid *here* (cpus, memory, walltime, gpus), not the top-level ones.
    assert "memory" in problems[0]
    assert "walltime" in problems[0]


def test_parse_manifest_wrong_type_names_field_and_line(tmp_path):
    problems = manifest_problems(make_job(tmp_path, 'command: run\nretries: "x"\n'))
    assert len(problems) == 1
    assert problems[0].startswith("job.yaml:2: retries: ")
    assert "integer" in problems[0]


@pytest.mark.parametrize(
    "text, line, field, fragments",
    [
        # Either pydantic's wording or a friendlier rewording; the bound must be named.
        ("command: run\nretries: 11\n", 2, "retries", ("less than or equal to 10", "at most 10")),
        ("command: run\npriority: 500\n", 2, "priority", ("less than or equal to 100", "at most 100")),
        ("command: run\ntimeout: never\n", 2, "timeout", ("'never' is not a duration",)),
        ("command: run\ntimeout: 0\n", 2, "timeout", ("greater than 0", "more than 0")),
        ("command: run\nresources:\n  memory: lots\n", 3, "resources.memory", ("'lots' is not a size",)),
        ("command: run\nresources:\n  cpus: 0\n", 3, "resources.cpus", ("greater than 0", "more than 0")),
        ("command: run\ntags: nope\n", 2, "tags", ("valid list", "list")),
    ],
)
def test_parse_manifest_bad_values_name_field_and_line(tmp_path, text, line, field, fragments):
    problems = manifest_problems(make_job(tmp_path, text))
    assert len(problems) == 1, problems
    assert problems[0].startswith(f"job.yaml:{line}: {field}: "), problems
    assert any(fragment in problems[0] for fragment in fragments), problems


@pytest.mark.parametrize(
    "env, fragment",
    [
        ("A: [1, 2]", "env.A must be text or a number, not list"),
        ("A: {b: 1}", "env.A must be text or a number, not dict"),
        ("A: true", "env.A must be text or a number, not bool"),
        ("A: null", "env.A must be text or a number, not NoneType"),
        ("1A: x", "env key '1A' is not a valid variable name"),
        ("'A-B': x", "env key 'A-B' is not a valid variable name"),
        ("'A B': x", "env key 'A B' is not a valid variable name"),
    ],
)
def test_parse_manifest_env_refuses_bad_names_and_values(tmp_path, env, fragment):
    problems = manifest_problems(make_job(tmp_path, f"command: run\nenv:\n  {env}\n"))
    assert len(problems) == 1
    assert problems[0].startswith("job.yaml:2: env: ")
    assert fragment in problems[0]


def test_parse_manifest_env_numbers_become_text(tmp_path):
    manifest = parse_manifest(make_job(tmp_path, "command: run\nenv:\n  N: 4\n  F: 1.5\n  S: hi\n") / "job.yaml")
    assert manifest.env == {"N": "4", "F": "1.5", "S": "hi"}


@pytest.mark.parametrize(
    "name, fragment",
    [
        ("a/b", "must not contain '/'"),
        ("a\\\\b", "must not contain '/' or '\\'"),
        ("..", "must not be empty, '.' or '..'"),
        (".hidden", "must not start with '.'"),
        ("-rf", "must not start with '-'"),
        ("a\\nb", "control characters"),
        ("a\\tb", "control characters"),
        (" padded", "spaces"),
    ],
)
def test_parse_manifest_refuses_unsafe_name(tmp_path, name, fragment):
    problems = manifest_problems(make_job(tmp_path, f'command: run\nname: "{name}"\n'))
    assert len(problems) == 1
    assert problems[0].startswith("job.yaml:2: name: ")
    assert fragment in problems[0]


@pytest.mark.parametrize(
    "pattern, fragment",
    [
        ("../secret", "'..' would leave the job directory"),
        ("data/../../x", "'..' would leave the job directory"),
        ("/etc/passwd", "absolute paths are not allowed"),
        ("C:/data", "absolute paths are not allowed"),
        ("data\\\\x", "backslashes"),
        ("", "non-empty"),
    ],
)
@pytest.mark.parametrize("field", ["inputs", "outputs"])
def test_parse_manifest_refuses_escaping_globs(tmp_path, pattern, fragment, field):
    problems = manifest_problems(make_job(tmp_path, f'command: run\n{field}: ["ok.txt", "{pattern}"]\n'))
    assert len(problems) == 1
    assert problems[0].startswith(f"job.yaml:2: {field}: ")
    assert fragment in problems[0]


def test_parse_manifest_that_is_a_directory(tmp_path):
    job = make_job(tmp_path, None)
    (job / "job.yaml").mkdir()
    assert manifest_problems(job) == ["job.yaml: must be a regular file, not a folder or a link"]


def test_parse_manifest_that_is_a_symlink(tmp_path):
    job = make_job(tmp_path, None)
    (tmp_path / "real.yaml").write_text("command: run\n")
    (job / "job.yaml").symlink_to(tmp_path / "real.yaml")
    assert manifest_problems(job) == ["job.yaml: must be a regular file, not a folder or a link"]


def test_parse_manifest_too_large(tmp_path):
    text = "command: run\n# " + "x" * MAX_MANIFEST_BYTES + "\n"
    problems = manifest_problems(make_job(tmp_path, text))
    assert len(problems) == 1
    assert f"the limit is {MAX_MANIFEST_BYTES} bytes" in problems[0]
    assert MAX_MANIFEST_BYTES == 256 * 1024


def test_parse_manifest_duplicate_keys(tmp_path):
    problems = manifest_problems(make_job(tmp_path, "command: a\nretries: 1\ncommand: b\n"))
    assert problems == ["job.yaml:3: duplicate key 'command' (first at line 1); keep only one"]


def test_parse_manifest_refuses_aliases(tmp_path):
    problems = manifest_problems(make_job(tmp_path, "command: &c run\nname: *c\n"))
    assert len(problems) == 1
    assert problems[0].startswith("job.yaml: ")
    assert "anchors and aliases" in problems[0]


def test_parse_manifest_invalid_utf8_names_line(tmp_path):
    job = make_job(tmp_path, None)
    (job / "job.yaml").write_bytes(b"command: run\nname: caf\xe9\n")
    assert manifest_problems(job) == ["job.yaml:2: file is not valid UTF-8; save it as UTF-8 text"]


def test_parse_manifest_deeply_nested_is_rejected_not_crashed(tmp_path):
    job = make_job(tmp_path, "command: run\ntags: " + "[" * 2000 + "]" * 2000 + "\n")
    problems = manifest_problems(job)
    assert len(problems) == 1 and problems[0].startswith("job.yaml")


def test_parse_manifest_accepts_full_manifest(tmp_path):
    text = """\
command: [python, run.py, --fast]
name: sample-7
inputs: ["data/**", "run.py"]
outputs: ["out/*.csv"]
env: {MODE: fast}
timeout: 1h30m
retries: 2
resources: {cpus: 4, memory: 2GiB, walltime: "2:00:00", gpus: 0}
tags: [a, b]
priority: -5
"""
    manifest = parse_manifest(make_job(tmp_path, text) / "job.yaml")
    assert manifest.command == ["python", "run.py", "--fast"]
    assert manifest.name == "sample-7"
    assert manifest.timeout == 5400.0
    assert manifest.resources.memory == 2 * 1024**3
    assert manifest.resources.walltime == 7200.0
    assert manifest.priority == -5


# -- the job directory: names, inputs, links, special files, limits ------------------------


def test_load_job_directory_reports_every_problem(tmp_path):
    job = make_job(tmp_path, "name: x\n", files={"a.txt": "a"})
    os.symlink("/etc/hostname", job / "link")
    problems = job_problems(job)
    assert any("command: required but missing" in p for p in problems)
    assert any(p.startswith("link: ") and "leads outside" in p for p in problems)


def test_load_job_directory_missing_manifest(tmp_path):
    job = make_job(tmp_path, None, files={"a.txt": "a"})
    problems = job_problems(job)
    assert any(p.startswith("job.yaml: ") for p in problems), problems


def test_load_job_directory_unsafe_directory_name_without_name_key(tmp_path):
    job = make_job(tmp_path, name="-rf")
    problems = job_problems(job)
    assert len(problems) == 1
    assert problems[0].startswith("directory name '-rf': a job name must not start with '-'")
    assert "set 'name:' in job.yaml" in problems[0]


def test_load_job_directory_name_key_overrides_directory_name(tmp_path):
    job = make_job(tmp_path, "command: run\nname: good\n", name="-rf")
    assert load_job_directory(job).name == "good"
    assert load_job_directory(make_job(tmp_path, name="plain")).name == "plain"
    assert load_job_directory(make_job(tmp_path, name="x2"), default_name="orig").name == "orig"


def test_load_job_directory_default_inputs_are_every_file_but_control_files(tmp_path):
    job = make_job(
        tmp_path,
        files={
            ".ready": "",
            "run.py": "print(1)",
            "data/a.csv": "1,2",
            "data/deep/b.bin": b"\x00\x01",
            "data/job.yaml": "nested copy",
            ".hidden": "h",
            "empty": "",
        },
    )
    directory = load_job_directory(job)
    assert relpaths(directory) == [".hidden", "data/a.csv", "data/deep/b.bin", "data/job.yaml", "empty", "run.py"]
    by_path = {f.relpath: f for f in directory.inputs}
    assert by_path["data/a.csv"].size == 3
    assert by_path["data/a.csv"].source == job / "data" / "a.csv"
    assert by_path["empty"].size == 0


def test_load_job_directory_inputs_globs_select_files(tmp_path):
    job = make_job(
        tmp_path,
        'command: run\ninputs: ["data/**", "*.py"]\n',
        files={
            "run.py": "",
            "lib/util.py": "",
            "data/a.csv": "",
            "data/x/y/b.csv": "",
            "notes.txt": "",
        },
    )
    assert relpaths(load_job_directory(job)) == ["data/a.csv", "data/x/y/b.csv", "run.py"]


def test_load_job_directory_double_star_slash_matches_any_depth(tmp_path):
    job = make_job(
        tmp_path,
        'command: run\ninputs: ["**/*.csv", "**/*.csv"]\n',
        files={
            "top.csv": "",
            "a/mid.csv": "",
            "a/b/c/low.csv": "",
            "a/b/c/low.txt": "",
        },
    )
    assert relpaths(load_job_directory(job)) == ["a/b/c/low.csv", "a/mid.csv", "top.csv"]


def test_load_job_directory_pattern_matching_nothing(tmp_path):
    job = make_job(tmp_path, 'command: run\ninputs: ["data/*.csv", "missing.txt"]\n', files={"data/a.csv": ""})
    problems = job_problems(job)
    assert problems == ["inputs: pattern 'missing.txt' matched no file; fix the pattern or add the file"]


def test_load_job_directory_symlink_outside_refused(tmp_path):
    (tmp_path / "secret.txt").write_text("secret")
    job = make_job(tmp_path, files={"a.txt": "a"})
    os.symlink(tmp_path / "secret.txt", job / "data.txt")
    problems = job_problems(job)
    assert len(problems) == 1
    assert problems[0].startswith("data.txt: symbolic link to ")
    assert "leads outside the job directory" in problems[0]


def test_load_job_directory_relative_symlink_escaping_refused(tmp_path):
    (tmp_path / "secret.txt").write_text("secret")
    job = make_job(tmp_path, files={"sub/a.txt": "a"})
    os.symlink("../../secret.txt", job / "sub" / "s.txt")
    problems = job_problems(job)
    assert problems == [
        "sub/s.txt: symbolic link to '../../secret.txt' leads outside the job directory; "
        "copy the file into the job directory instead"
    ]


def test_load_job_directory_dangling_symlink_refused(tmp_path):
    job = make_job(tmp_path)
    os.symlink("nowhere.txt", job / "gone.txt")
    problems = job_problems(job)
    assert problems == ["gone.txt: symbolic link to 'nowhere.txt' points nowhere; replace it with the file"]


def test_load_job_directory_symlink_to_directory_refused(tmp_path):
    job = make_job(tmp_path, files={"real/a.txt": "a"})
    os.symlink("real", job / "alias")
    problems = job_problems(job)
    assert problems == ["alias: symbolic link to a folder; copy the folder instead"]


def test_load_job_directory_symlink_inside_is_accepted_with_target_as_source(tmp_path):
    job = make_job(tmp_path, files={"data/real.csv": "1,2,3"})
    os.symlink("data/real.csv", job / "link.csv")
    by_path = {f.relpath: f for f in load_job_directory(job).inputs}
    assert set(by_path) == {"data/real.csv", "link.csv"}
    assert by_path["link.csv"].source == (job / "data" / "real.csv").resolve()
    assert by_path["link.csv"].size == 5


def test_load_job_directory_fifo_refused(tmp_path):
    job = make_job(tmp_path, files={"a.txt": "a"})
    os.mkfifo(job / "pipe")
    problems = job_problems(job)
    assert problems == ["pipe: is a special file (FIFO, socket or device); only regular files are staged"]


def test_load_job_directory_max_files(tmp_path):
    job = make_job(tmp_path, files={f"f{i}.txt": "x" for i in range(5)})
    assert len(load_job_directory(job, max_files=5).inputs) == 5
    problems = job_problems(job, max_files=4)
    assert problems == ["the job has more than 4 files; split it or ask the admin to raise max_input_files"]


def test_load_job_directory_max_bytes(tmp_path):
    job = make_job(tmp_path, files={"a.bin": b"x" * 60, "b.bin": b"y" * 40})
    assert len(load_job_directory(job, max_bytes=100).inputs) == 2
    problems = job_problems(job, max_bytes=99)
    assert problems == ["inputs total 100 bytes, over the limit of 99; ask the admin to raise max_input_bytes"]


def test_load_job_directory_max_bytes_counts_only_selected_inputs(tmp_path):
    job = make_job(tmp_path, 'command: run\ninputs: ["small.bin"]\n', files={"small.bin": b"x", "big.bin": b"y" * 500})
    assert relpaths(load_job_directory(job, max_bytes=10)) == ["small.bin"]


def test_load_job_directory_report_files_excluded_only_with_syncd_error_json(tmp_path):
    job = make_job(tmp_path, files={"ERROR.txt": "user's own notes", "a.txt": "a"})
    assert relpaths(load_job_directory(job)) == ["ERROR.txt", "a.txt"]
    (job / "syncd-error.json").write_text("{}")  # the user's own file of that name: still an input
    assert relpaths(load_job_directory(job)) == ["ERROR.txt", "a.txt", "syncd-error.json"]
    (job / "syncd-error.json").write_text('{"state": "rejected", "syncd_version": "0.1.0", "problems": []}')
    assert relpaths(load_job_directory(job)) == ["a.txt"], "syncd's own report is not an input"


def test_load_job_directory_leaves_files_untouched(tmp_path):
    job = make_job(tmp_path, files={"a.txt": "a", "d/b.txt": "b"})
    before = sorted((p.relative_to(job).as_posix(), p.stat().st_mtime_ns) for p in job.rglob("*"))
    load_job_directory(job)
    after = sorted((p.relative_to(job).as_posix(), p.stat().st_mtime_ns) for p in job.rglob("*"))
    assert before == after


def test_scan_inputs_returns_sorted_tuple(tmp_path):
    job = make_job(tmp_path, files={"b": "", "a/z": "", "a/b": ""})
    inputs = scan_inputs(job, Manifest(command="run"), max_files=100, max_bytes=None)
    assert isinstance(inputs, tuple)
    assert [f.relpath for f in inputs] == ["a/b", "a/z", "b"]


# -- names and globs ---------------------------------------------------------------


@pytest.mark.parametrize("name", ["sample-1", "Run 7", "données", "a.b_c"])
def test_check_job_name_accepts_ordinary_names(name):
    assert check_job_name(name) is None


def test_check_job_name_refuses_overlong_name():
    assert "at most 200 bytes" in check_job_name("é" * 101)
    assert check_job_name("é" * 100) is None


@pytest.mark.parametrize(
    "pattern, matches, misses",
    [
        ("*.csv", ["a.csv", ".x.csv"], ["d/a.csv", "a.csvx", "a.tsv"]),
        ("data/*", ["data/a", "data/.h"], ["data", "data/a/b", "other/a"]),
        ("data/**", ["data/a", "data/a/b/c"], ["data", "datax/a"]),
        ("**/*.txt", ["a.txt", "d/a.txt", "d/e/f/a.txt"], ["a.txt.bak", "d/a.csv"]),
        ("**", ["a", "a/b/c"], []),
        ("a/**/z", ["a/z", "a/b/z", "a/b/c/z"], ["a/bz", "b/z"]),
        ("file?.txt", ["file1.txt", "fileA.txt"], ["file10.txt", "file/.txt", "file.txt"]),
        ("[ab].txt", ["a.txt", "b.txt"], ["c.txt", "ab.txt"]),
        ("[!ab].txt", ["c.txt"], ["a.txt", "b.txt"]),
        ("[a-c]x", ["ax", "bx", "cx"], ["dx"]),
        ("[]]x", ["]x"], ["ax"]),
        ("a+b(1).txt", ["a+b(1).txt"], ["aab1.txt"]),
        ("[unclosed", ["[unclosed"], ["u"]),
        ("exact/name.txt", ["exact/name.txt"], ["exact/name.txt/x", "exact/nameXtxt"]),
    ],
)
def test_glob_to_regex_semantics(pattern, matches, misses):
    regex = glob_to_regex(pattern)
    for path in matches:
        assert regex.match(path), f"{pattern!r} should match {path!r}"
    for path in misses:
        assert not regex.match(path), f"{pattern!r} should not match {path!r}"


def test_glob_to_regex_matches_newlines_and_anchors_at_end():
    assert glob_to_regex("*.txt").match("line\nbreak.txt")
    assert not glob_to_regex("a.txt").match("a.txt\n")
