"""The hostile and malformed input corpus: every case builds one job directory.

Many cases cannot live in git as files (FIFOs, sockets, device files, symlinks to
absolute paths, names that are not UTF-8, 50 MB manifests, 100,000 files), so each
case is a small builder. Static manifests that git can hold are in ``static/``.
``README.md`` beside this file has the table of cases and their documented outcome.

A case says what syncd must do with it:

- ``rejected``: moved to ``failed/<dir name>/`` with ERROR.txt and syncd-error.json;
  every problem substring in ``expect`` appears in the report; every user file is
  kept byte-identical (links stay links, FIFOs stay FIFOs).
- ``succeeded`` / ``failed``: the job runs and its result record says so; ``check``
  asserts what "handled safely" means for the case.
- ``ignored``: syncd leaves the entry in the inbox untouched (never claimed).
"""

from __future__ import annotations

import json
import os
import socket
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

STATIC = Path(__file__).resolve().parent / "static"
PWNED = (
    "pwned-dollar",
    "pwned-backtick",
    "pwned-semicolon",
    "pwned-name",
    "pwned-file",
    "pwned-out",
    "pwned-yaml-tag",
    "pwned-env",
)


@dataclass
class Outcome:
    """What the daemon did with a case, as the test found it."""

    result: dict | None = None  # syncd-result.json for run cases
    report: dict | None = None  # syncd-error.json for rejected cases
    folder: Path | None = None  # outbox folder (run cases) or failed folder (rejected)
    kept: Path | None = None  # where the user's files are now (failed/ or spool done/)


@dataclass
class Case:
    key: str  # short id, used in test ids and the README
    title: str
    build: Callable[[Path, Path], None]  # build(job_dir, outside_dir): job_dir exists and is empty
    outcome: str  # rejected | succeeded | failed | ignored
    expect: tuple[str, ...] = ()  # substrings of the report's problems (or the result message)
    check: Callable[[Outcome, Path], None] | None = None  # check(outcome, job_dir_before) for handled cases
    dir_name: str | bytes | None = None  # the job directory's name (default: "h-<key>")
    folder: str | None = None  # outbox folder of a run case (default: the dir name)
    slow: bool = False

    @property
    def fsname(self) -> bytes:
        name = self.dir_name if self.dir_name is not None else f"h-{self.key}"
        return name if isinstance(name, bytes) else os.fsencode(name)

    @property
    def outbox_folder(self) -> str:
        return self.folder or os.fsdecode(self.fsname)


# -- builders ----------------------------------------------------------------------------------------
def manifest(text: str | bytes, **files: str | bytes) -> Callable[[Path, Path], None]:
    def build(job: Path, outside: Path) -> None:
        data = text.encode() if isinstance(text, str) else text
        (job / "job.yaml").write_bytes(data)
        for rel, content in files.items():
            path = job / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(content.encode() if isinstance(content, str) else content)
        (job / "input.dat").write_bytes(b"\x00\x01user data, keep me\xff")

    return build


def static(name: str) -> Callable[[Path, Path], None]:
    return manifest((STATIC / name).read_bytes())


def yaml_dump(data: object) -> str:
    return json.dumps(data)  # JSON is YAML: exact control over types


OK = 'command: "echo ok > ok.txt"\n'


def build_fifo(job: Path, outside: Path) -> None:
    (job / "job.yaml").write_text('command: "cat pipe > out.txt"\n')
    os.mkfifo(job / "pipe")


def build_socket(job: Path, outside: Path) -> None:
    (job / "job.yaml").write_text('command: "echo ok > ok.txt"\n')
    here = os.getcwd()
    os.chdir(job)  # AF_UNIX paths are limited to 108 bytes: bind by a short relative name
    try:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind("sock")
        sock.close()
    finally:
        os.chdir(here)


def build_device(job: Path, outside: Path) -> None:
    (job / "job.yaml").write_text('command: "cat null > out.txt"\n')
    os.mknod(job / "null", 0o600 | stat.S_IFCHR, os.makedev(1, 3))  # like /dev/null; needs root


def build_manifest_fifo(job: Path, outside: Path) -> None:
    os.mkfifo(job / "job.yaml")  # opening it would block a reader forever
    (job / "input.dat").write_text("data\n")


def build_manifest_dir(job: Path, outside: Path) -> None:
    (job / "job.yaml").mkdir()
    (job / "job.yaml" / "command").write_text("echo hi\n")


def build_manifest_link(job: Path, outside: Path) -> None:
    os.symlink(outside / "outside-job.yaml", job / "job.yaml")


def build_link(target: Callable[[Path, Path], str], command: str = "cat link.txt > out.txt") -> Callable:
    def build(job: Path, outside: Path) -> None:
        (job / "job.yaml").write_text(f'command: "{command}"\n')
        (job / "real.txt").write_text("inside\n")
        (job / "sub").mkdir()
        os.symlink(target(job, outside), job / "link.txt")

    return build


def build_link_loop(job: Path, outside: Path) -> None:
    (job / "job.yaml").write_text(OK)
    os.symlink("b", job / "a")
    os.symlink("a", job / "b")


def build_hardlink(job: Path, outside: Path) -> None:
    (job / "job.yaml").write_text('command: "cat hard.txt > out.txt"\n')
    os.link(outside / "hardlink-source.txt", job / "hard.txt")


def build_nested(job: Path, outside: Path) -> None:
    deep = job.joinpath(*[f"d{i:02d}" for i in range(1, 21)])
    deep.mkdir(parents=True)
    (deep / "leaf.txt").write_text("twenty levels down\n")
    rel = "/".join(f"d{i:02d}" for i in range(1, 21))
    (job / "job.yaml").write_text(
        f'command: "cat {rel}/leaf.txt > out.txt && mkdir -p o/{rel} && cp {rel}/leaf.txt o/{rel}/copy.txt"\n'
    )


def build_many_files(count: int) -> Callable[[Path, Path], None]:
    def build(job: Path, outside: Path) -> None:
        (job / "job.yaml").write_text('command: "ls -R | wc -l > count.txt"\n')
        for i in range(0, count, 1000):
            folder = job / f"f{i // 1000:03d}"
            folder.mkdir()
            for j in range(i, min(i + 1000, count)):
                (folder / f"{j}.txt").write_bytes(b"x")

    return build


def build_big_manifest(job: Path, outside: Path) -> None:
    with open(job / "job.yaml", "wb") as out:
        out.write(b'command: "echo big"\ntags:\n')
        line = b"  - " + b"x" * 60 + b"\n"
        out.write(line * (50 * 1024 * 1024 // len(line)))


def build_names(job: Path, outside: Path) -> None:
    """Input files with hostile names; the job reads them by glob, syncd copies them by name."""
    (job / "job.yaml").write_text('command: "cat ./-rf ./--help ./*line*break* ./*bell* > out.txt"\n')
    (job / "-rf").write_text("dash\n")
    (job / "--help").write_text("help\n")
    (job / "line\nbreak.txt").write_text("newline\n")
    (job / "\x07bell\x1b[31m.txt").write_text("bell\n")


def build_invalid_utf8_input(job: Path, outside: Path) -> None:
    (job / "job.yaml").write_text('command: "cat data* > out.txt"\n')
    with open(os.path.join(os.fsencode(job), b"data\xff\xfe.bin"), "wb") as out:
        out.write(b"latin-1 name\n")


def build_injection_files(job: Path, outside: Path) -> None:
    (job / "job.yaml").write_text(
        'command: ["python3", "-c", "open(\\"$(touch pwned-out)\\", \\"w\\").write(\\"x\\"); '
        'open(\\"ok.txt\\", \\"w\\").write(\\"ok\\")"]\n'
    )
    (job / "$(touch pwned-file)").write_text("a\n")
    (job / "; touch pwned-semicolon").write_text("b\n")
    (job / "`touch pwned-backtick`").write_text("c\n")


def build_reserved_outputs(job: Path, outside: Path) -> None:
    (job / "job.yaml").write_text(
        'command: "echo fake > syncd-result.json; echo fake > syncd-stdout.txt; mkdir -p .syncd-tmp; '
        'echo t > .syncd-tmp/x; echo real > real.txt"\n'
    )


def build_bad_output_names(job: Path, outside: Path) -> None:
    code = (
        "import os; open('good.txt','w').write('good'); open('new\\nline.txt','w').write('n'); "
        "open(os.fsdecode(b'bad\\xff.txt'),'w').write('b'); open('CON','w').write('c')"
    )
    (job / "job.yaml").write_text(json.dumps({"command": ["python3", "-c", code]}))


def build_user_error_files(both: bool) -> Callable[[Path, Path], None]:
    def build(job: Path, outside: Path) -> None:
        (job / "job.yaml").write_text("command: [unclosed\n")
        (job / "syncd-error.json").write_text('{"my": "own data, not a syncd report"}\n')
        if both:
            (job / "ERROR.txt").write_text("my own notes about errors\n")

    return build


def build_huge_env(job: Path, outside: Path) -> None:
    env = {f"V{i:04d}": "v" * 80 for i in range(2000)}  # 2000 variables, ~190 KB of environment
    (job / "job.yaml").write_text(json.dumps({"command": "env | grep -c '^V[0-9]' > count.txt", "env": env}))


def build_huge_env_value(job: Path, outside: Path) -> None:
    # one value over the kernel's 128 KiB per-string limit (MAX_ARG_STRLEN): exec fails with E2BIG
    (job / "job.yaml").write_text(json.dumps({"command": "echo never", "env": {"BIG": "x" * 200_000}}))


def build_inside_link(job: Path, outside: Path) -> None:
    (job / "job.yaml").write_text('command: "cat link.txt > out.txt"\n')
    (job / "sub").mkdir()
    (job / "sub" / "real.txt").write_text("linked content\n")
    os.symlink("sub/real.txt", job / "link.txt")


# -- checks for handled cases -----------------------------------------------------------------------------
def out_is(rel: str, content: bytes) -> Callable[[Outcome, Path], None]:
    def check(outcome: Outcome, job: Path) -> None:
        got = (outcome.folder / rel).read_bytes()
        assert got == content, f"{rel}: {got!r} != {content!r}"

    return check


def check_reserved(outcome: Outcome, job: Path) -> None:
    result = outcome.result
    assert result["id"] and result["state"] == "failed" and result["exit_code"] == 0, result
    assert "could not be delivered" in result["message"], result
    refused = {r["path"] for r in result["refused"]}
    assert {"syncd-result.json", "syncd-stdout.txt"} <= refused, refused
    assert any(".syncd-tmp" in p for p in refused), refused
    assert (outcome.folder / "real.txt").read_text() == "real\n"
    assert (outcome.folder / "syncd-stdout.txt").read_text() == "", "the job's fake stdout file replaced syncd's"


def check_bad_output_names(outcome: Outcome, job: Path) -> None:
    result = outcome.result
    assert result["state"] == "failed" and result["exit_code"] == 0, "refused files: not a plain success"
    assert "the command succeeded, but 3 file(s) could not be delivered" in result["message"], result
    assert [o["path"] for o in result["outputs"]] == ["good.txt"], "outputs lists only files in the folder"
    assert (outcome.folder / "good.txt").read_text() == "good"
    refused = " ".join(r["path"] for r in result["refused"])
    assert "line" in refused and "CON" in refused, result["refused"]
    assert len(result["refused"]) == 3, "the name that is not UTF-8 is refused too"
    assert not (outcome.folder / "new\nline.txt").exists() and not (outcome.folder / "CON").exists()


def check_injection(outcome: Outcome, job: Path) -> None:
    assert outcome.result["state"] == "succeeded", outcome.result
    assert (outcome.folder / "$(touch pwned-out)").read_text() == "x"


def check_huge_env(outcome: Outcome, job: Path) -> None:
    assert outcome.result["state"] == "succeeded", outcome.result
    assert (outcome.folder / "count.txt").read_text().strip() == "2000"


def check_e2big(outcome: Outcome, job: Path) -> None:
    result = outcome.result
    assert result["state"] == "failed" and result["exit_code"] == 127, result
    assert "Argument list too long" in (result["message"] or ""), result


def check_hardlink(outcome: Outcome, job: Path) -> None:
    assert outcome.result["state"] == "succeeded", outcome.result
    assert (outcome.folder / "out.txt").read_text() == "hardlinked by the user\n"


# -- round two (issue 16) ---------------------------------------------------------------------------------
def python_job(code: str, **files: str) -> Callable[[Path, Path], None]:
    """A job whose command is ``python3 -c code`` (no shell quoting in between)."""

    def build(job: Path, outside: Path) -> None:
        (job / "job.yaml").write_text(json.dumps({"command": ["python3", "-c", code]}))
        for rel, content in files.items():
            (job / rel).write_text(content)

    return build


def _writes(*paths: str) -> str:
    """Python that writes each path (making its folders) with a forged record's content, then keep.txt."""
    return (
        "import os\n"
        f"for p in {list(paths)!r}:\n"
        "    d = os.path.dirname(p)\n"
        "    d and os.makedirs(d, exist_ok=True)\n"
        '    open(p, \'w\').write(\'{"state": "succeeded", "forged": true}\')\n'
        "open('keep.txt', 'w').write('kept')\n"
    )


RESERVED_DEEP = ("sub/syncd-result.json", "a/b/syncd-stdout.txt", "deep/.syncd-tmp/x", "c/syncd-stderr.txt")
RESERVED_CASE = ("SYNCD-RESULT.JSON", "Syncd-Stdout.txt", "x/Syncd-Result.Json", "y/SYNCD-ERROR.JSON")
RESERVED_FOLDERS = ("syncd-result.json/inner.txt", "z/syncd-validation.txt", "q/syncd-error.json/r.txt")


def check_reserved_nowhere_below(*refused: str) -> Callable[[Outcome, Path], None]:
    """Only syncd's own three files carry reserved names, only at the top; each forged path is refused."""

    def check(outcome: Outcome, job: Path) -> None:
        from syncd.names import reserved

        assert (outcome.folder / "keep.txt").read_text() == "kept"
        found = []
        for dirpath, dirnames, filenames in os.walk(outcome.folder):
            rel = os.path.relpath(dirpath, outcome.folder)
            found += [os.path.join(rel, n) for n in dirnames + filenames if reserved(n)]
        assert sorted(found) == ["./syncd-result.json", "./syncd-stderr.txt", "./syncd-stdout.txt"], found
        listed = {r["path"] for r in outcome.result["refused"]}
        assert set(refused) <= listed, (refused, listed)
        assert all("keep.txt" != o["path"] for o in outcome.result["refused"])
        assert json.loads((outcome.folder / "syncd-result.json").read_text())["id"] == outcome.result["id"]
        assert [o["path"] for o in outcome.result["outputs"]] == ["keep.txt"], outcome.result["outputs"]
        assert outcome.result["exit_code"] == 0 and "could not be delivered" in outcome.result["message"]

    return check


def check_one_way(delivered: list[str], refused: dict[str, str], message: str) -> Callable[[Outcome, Path], None]:
    """Refused files are no plain success; ``outputs`` is exactly what is in the folder; paths written one way."""

    def check(outcome: Outcome, job: Path) -> None:
        result = outcome.result
        assert sorted(o["path"] for o in result["outputs"]) == sorted(delivered), result["outputs"]
        got = {r["path"]: r["reason"] for r in result["refused"]}
        assert set(got) == set(refused), got
        assert all(fragment in got[path] for path, fragment in refused.items()), got
        in_folder = sorted(
            os.path.relpath(os.path.join(d, f), outcome.folder)
            for d, _, fs in os.walk(outcome.folder)
            for f in fs
            if f not in ("syncd-result.json", "syncd-stdout.txt", "syncd-stderr.txt")
        )
        assert in_folder == sorted(delivered), in_folder
        assert message in result["message"], result["message"]

    return check


def special(kind: str, at: str) -> Callable[[Path, Path], None]:
    """Make a FIFO, socket or character device (like /dev/zero) named ``at`` inside the job."""

    def make(job: Path) -> None:
        if kind == "fifo":
            os.mkfifo(job / at)
        elif kind == "socket":
            here = os.getcwd()
            os.chdir(job)
            try:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                sock.bind(at)
                sock.close()
            finally:
                os.chdir(here)
        else:
            os.mknod(job / at, 0o600 | stat.S_IFCHR, os.makedev(1, 5))

    return make


def with_specials(manifest_text: str | None, *made: Callable[[Path], None]) -> Callable[[Path, Path], None]:
    def build(job: Path, outside: Path) -> None:
        if manifest_text is not None:
            (job / "job.yaml").write_text(manifest_text)
        (job / "input.dat").write_text("user data\n")
        for make in made:
            make(job)

    return build


FORGED_LINE = "2026-01-01 00:00:00 INFO    [payroll 20260101-000000-aaaaaa] succeeded: results in outbox-payroll"


def build_forged_problem(job: Path, outside: Path) -> None:
    """A FIFO whose name carries a newline and a fake problem line: ERROR.txt must still show one problem."""
    (job / "job.yaml").write_text(OK)
    os.mkfifo(job / "p\n  - forged: nothing is wrong, ignore this report")


def build_dry_run_names(job: Path, outside: Path) -> None:
    (job / "job.yaml").write_text('command: "true"\ndry_run: true\n')
    (job / ("in\n  forged-input.txt  (1 bytes)")).write_text("a")
    (job / "invoice\u202etxt.exe").write_text("b")


def check_validation_report(outcome: Outcome, job: Path) -> None:
    lines = (outcome.folder / "syncd-validation.txt").read_text().splitlines()
    listed = [line for line in lines if line.startswith("  ")]
    assert len(listed) == 2, lines
    assert "  in\\n  forged-input.txt  (1 bytes)  (1 bytes)" in listed and "\u202e" not in "".join(lines)


def wrong(field_yaml: str, *expect: str, key: str) -> Case:
    return Case(key, f"wrong type: {field_yaml.strip()}", manifest(OK + field_yaml), "rejected", expect)


CASES: list[Case] = [
    # --- YAML bombs and parser traps
    Case(
        "billion-laughs",
        "billion laughs: 9 levels of 10 aliases",
        static("billion-laughs.yaml"),
        "rejected",
        ("anchors and aliases",),
    ),
    Case(
        "recursive-alias",
        "an anchor that contains an alias to itself",
        static("recursive-alias.yaml"),
        "rejected",
        ("job.yaml",),
    ),
    Case(
        "deep-nesting",
        "10,000 nested flow sequences",
        manifest("command: " + "[" * 10_000 + "]" * 10_000 + "\n"),
        "rejected",
        ("nested too deeply",),
    ),
    Case(
        "python-tag",
        "!!python/object/apply:os.system tag on a list",
        static("python-tag.yaml"),
        "rejected",
        ("python/object/apply",),
    ),
    Case(
        "python-scalar-tag",
        "!!python/name:os.system tag on a scalar",
        manifest("command: !!python/name:os.system 'touch pwned-yaml-tag'\n"),
        "rejected",
        ("python/name",),
    ),
    Case(
        "merge-key",
        "<<: *base merge key (needs an alias)",
        static("merge-key.yaml"),
        "rejected",
        ("anchors and aliases",),
    ),
    Case(
        "multi-document",
        "two YAML documents in one file",
        static("multi-document.yaml"),
        "rejected",
        ("not valid YAML",),
    ),
    Case("big-manifest", "a 50 MB job.yaml", build_big_manifest, "rejected", ("the limit is 262144 bytes",)),
    Case(
        "duplicate-keys",
        "command: given twice",
        static("duplicate-keys.yaml"),
        "rejected",
        ("duplicate key 'command'",),
    ),
    Case(
        "invalid-utf8-yaml",
        "job.yaml with bytes that are not UTF-8",
        manifest(b'command: "echo \xff\xfe"\n'),
        "rejected",
        ("not valid UTF-8",),
    ),
    Case(
        "control-chars-yaml",
        "a raw BEL/ESC control character in job.yaml",
        manifest('command: "echo \x07\x1b[2J"\n'),
        "rejected",
        ("not valid YAML",),
    ),
    Case("tab-indent", "tabs used for indentation", static("tab-indent.yaml"), "rejected", ("not valid YAML",)),
    Case("empty-manifest", "an empty job.yaml", manifest(""), "rejected", ("must be a mapping",)),
    Case("top-level-list", "top level is a list", manifest("- echo\n- hi\n"), "rejected", ("must be a mapping",)),
    Case("top-level-scalar", "top level is a string", manifest('"echo hi"\n'), "rejected", ("must be a mapping",)),
    Case(
        "bom",
        "UTF-8 byte order mark before the first key (accepted)",
        manifest('\ufeffcommand: "echo bom > out.txt"\n'),
        "succeeded",
        check=out_is("out.txt", b"bom\n"),
    ),
    Case(
        "crlf",
        "CRLF line endings (accepted)",
        manifest('command: "echo crlf > out.txt"\r\nname: h-crlf\r\n'),
        "succeeded",
        check=out_is("out.txt", b"crlf\n"),
    ),
    # --- the manifest itself is not a file
    Case("manifest-dir", "job.yaml is a directory", build_manifest_dir, "rejected", ("must be a regular file",)),
    Case(
        "manifest-fifo",
        "job.yaml is a FIFO (reading it would block)",
        build_manifest_fifo,
        "rejected",
        ("must be a regular file",),
    ),
    Case(
        "manifest-symlink",
        "job.yaml is a symlink to a file outside",
        build_manifest_link,
        "rejected",
        ("must be a regular file",),
    ),
    # --- wrong types and values, field by field
    Case("command-null", "command: null", manifest("command: null\n"), "rejected", ("command",)),
    Case("command-empty", "command: ''", manifest("command: ''\n"), "rejected", ("command is empty",)),
    Case("command-empty-list", "command: []", manifest("command: []\n"), "rejected", ("command list is empty",)),
    Case(
        "command-list-nonstrings",
        "command: [echo, 1, {a: b}, null]",
        manifest("command: [echo, 1, {a: b}, null]\n"),
        "rejected",
        ("command.1", "command.2"),
    ),
    Case("command-mapping", "command: {run: x}", manifest("command: {run: x}\n"), "rejected", ("command",)),
    Case("command-nul", "NUL inside the command", manifest('command: "echo a\\0b"\n'), "rejected", ("NUL",)),
    wrong("name: 12345\n", "name", key="name-int"),
    wrong("inputs: data.txt\n", "inputs", key="inputs-string"),
    wrong("outputs: 5\n", "outputs", key="outputs-int"),
    wrong("env: [A, B]\n", "env", key="env-list"),
    wrong("timeout: forever\n", "timeout", key="timeout-word"),
    wrong("timeout: -5\n", "timeout", key="timeout-negative"),
    wrong("retries: many\n", "retries", key="retries-word"),
    wrong("retries: 1000000000000000000000000000000\n", "retries", key="retries-huge"),
    wrong("resources: big\n", "resources", key="resources-string"),
    wrong("resources: {cpus: lots, memory: plenty}\n", "resources.cpus", "resources.memory", key="resources-fields"),
    wrong("tags: urgent\n", "tags", key="tags-string"),
    wrong("priority: 1000\n", "priority", key="priority-range"),
    wrong("priority: high\n", "priority", key="priority-word"),
    wrong("unknown_key: 1\n", "unknown key 'unknown_key'", key="unknown-key"),
    wrong("1: one\n", "Keys should be strings", key="int-key"),
    Case(
        "resources-on-local",
        "resources: {cpus: 4} on a backend that honours none",
        manifest(OK + "resources: {cpus: 4}\n"),
        "rejected",
        ("cpus",),
    ),
    # --- env
    Case(
        "env-name-equals",
        "env name with '='",
        manifest(OK + 'env: {"A=B": x}\n'),
        "rejected",
        ("not a valid variable name",),
    ),
    Case(
        "env-name-nul",
        "env name with NUL",
        manifest(OK + 'env: {"A\\0B": x}\n'),
        "rejected",
        ("not a valid variable name",),
    ),
    Case("env-value-nul", "env value with NUL", manifest(OK + 'env: {A: "x\\0y"}\n'), "rejected", ("NUL",)),
    Case(
        "env-injection",
        "env value with shell syntax is passed verbatim, never evaluated by syncd",
        manifest('command: ["sh", "-c", "printf %s \\"$V\\" > v.txt"]\nenv: {V: "$(touch pwned-env)"}\n'),
        "succeeded",
        check=out_is("v.txt", b"$(touch pwned-env)"),
    ),
    Case("huge-env", "2,000 env variables (~190 KB)", build_huge_env, "succeeded", check=check_huge_env),
    Case(
        "huge-env-value",
        "one 200 KB env value (over the kernel's per-string limit)",
        build_huge_env_value,
        "failed",
        check=check_e2big,
    ),
    # --- globs and paths
    Case(
        "glob-dotdot",
        "inputs: ['../*']",
        manifest(OK + "inputs: ['../*']\n"),
        "rejected",
        ("'..' would leave the job directory",),
    ),
    Case(
        "glob-dotdot-middle",
        "inputs: ['data/../../x']",
        manifest(OK + "inputs: ['data/../../x']\n"),
        "rejected",
        ("'..' would leave the job directory",),
    ),
    Case(
        "glob-absolute",
        "inputs: ['/etc/passwd']",
        manifest(OK + "inputs: ['/etc/passwd']\n"),
        "rejected",
        ("absolute paths are not allowed",),
    ),
    Case(
        "glob-backslash",
        "inputs: ['..\\\\secret']",
        manifest(OK + "inputs: ['..\\\\secret']\n"),
        "rejected",
        ("backslashes",),
    ),
    Case(
        "outputs-dotdot",
        "outputs: ['../../**']",
        manifest(OK + "outputs: ['../../**']\n"),
        "rejected",
        ("'..' would leave the job directory",),
    ),
    Case(
        "outputs-absolute",
        "outputs: ['/etc/*']",
        manifest(OK + "outputs: ['/etc/*']\n"),
        "rejected",
        ("absolute paths are not allowed",),
    ),
    Case(
        "inputs-match-nothing",
        "inputs: ['nothing-*.csv']",
        manifest(OK + "inputs: ['nothing-*.csv']\n"),
        "rejected",
        ("matched no file",),
    ),
    # --- links and special files
    Case(
        "symlink-absolute",
        "symlink to /etc/passwd",
        build_link(lambda j, o: "/etc/passwd"),
        "rejected",
        ("leads outside the job directory",),
    ),
    Case(
        "symlink-relative-escape",
        "symlink ../../../../etc/hostname",
        build_link(lambda j, o: "../../../../../../../../etc/hostname"),
        "rejected",
        ("link.txt",),
    ),
    Case(
        "symlink-outside-secret",
        "symlink to a secret file beside the inbox",
        build_link(lambda j, o: str(o / "secret.txt")),
        "rejected",
        ("leads outside the job directory",),
    ),
    Case(
        "symlink-dangling",
        "symlink to nothing",
        build_link(lambda j, o: "missing.txt"),
        "rejected",
        ("points nowhere",),
    ),
    Case(
        "symlink-dir-inside",
        "symlink to a folder inside",
        build_link(lambda j, o: "sub"),
        "rejected",
        ("symbolic link to a folder",),
    ),
    Case(
        "symlink-dir-outside",
        "symlink to /etc",
        build_link(lambda j, o: "/etc"),
        "rejected",
        ("leads outside the job directory",),
    ),
    Case("symlink-loop", "two symlinks pointing at each other", build_link_loop, "rejected", ("points nowhere",)),
    Case(
        "symlink-inside",
        "symlink to a regular file inside (accepted; the target's content is staged)",
        build_inside_link,
        "succeeded",
        check=out_is("out.txt", b"linked content\n"),
    ),
    Case(
        "hardlink-outside",
        "hard link to a file outside (accepted: it is the user's own file)",
        build_hardlink,
        "succeeded",
        check=check_hardlink,
    ),
    Case("fifo", "a FIFO among the inputs", build_fifo, "rejected", ("pipe: is a special file",)),
    Case("socket", "a UNIX socket among the inputs", build_socket, "rejected", ("sock: is a special file",)),
    Case("device", "a character device (1,3) among the inputs", build_device, "rejected", ("null: is a special file",)),
    # --- names
    Case(
        "dirname-newline",
        "directory name with a newline",
        manifest(OK),
        "rejected",
        ("control characters",),
        dir_name="h-new\nline",
    ),
    Case(
        "dirname-escape",
        "directory name with ESC (terminal escape sequence)",
        manifest(OK),
        "rejected",
        ("control characters",),
        dir_name="h-\x1b[31mred",
    ),
    Case(
        "dirname-dash",
        "directory name starting with '-'",
        manifest(OK),
        "rejected",
        ("must not start with '-'",),
        dir_name="-rf h-dash",
    ),
    Case(
        "dirname-invalid-utf8",
        "directory name that is not UTF-8",
        manifest(OK),
        "rejected",
        ("UTF-8",),
        dir_name=b"h-bad\xff\xfename",
    ),
    Case(
        "dirname-dollar",
        "directory name $(touch pwned-dollar) (accepted; never evaluated)",
        manifest(OK),
        "succeeded",
        check=out_is("ok.txt", b"ok\n"),
        dir_name="$(touch pwned-dollar)",
    ),
    Case(
        "dirname-backtick",
        "directory name `touch pwned-backtick`; rm -rf x (accepted; never evaluated)",
        manifest(OK),
        "succeeded",
        check=out_is("ok.txt", b"ok\n"),
        dir_name="`touch pwned-backtick`; rm -rf x",
    ),
    Case(
        "name-injection",
        "name: '$(touch pwned-name)' (accepted; never evaluated)",
        manifest('command: "echo $SYNCD_JOB_NAME > n.txt"\nname: "$(touch pwned-name)"\n'),
        "succeeded",
        check=out_is("n.txt", b"$(touch pwned-name)\n"),
        folder="$(touch pwned-name)",
    ),
    Case(
        "name-slash",
        "name: a/../../escape",
        manifest(OK + "name: a/../../escape\n"),
        "rejected",
        ("must not contain '/'",),
    ),
    Case(
        "name-hidden", "name: .syncd-tmp", manifest(OK + "name: .syncd-tmp\n"), "rejected", ("must not start with '.'",)
    ),
    Case(
        "name-too-long", "name of 300 bytes", manifest(OK + f"name: {'n' * 300}\n"), "rejected", ("at most 200 bytes",)
    ),
    Case(
        "file-names",
        "input files named -rf, --help, with a newline and with BEL/ESC (accepted)",
        build_names,
        "succeeded",
        check=out_is("out.txt", b"dash\nhelp\nnewline\nbell\n"),
    ),
    Case(
        "file-name-invalid-utf8",
        "an input file whose name is not UTF-8 (accepted)",
        build_invalid_utf8_input,
        "succeeded",
        check=out_is("out.txt", b"latin-1 name\n"),
    ),
    Case(
        "file-name-injection",
        "input and output files named $(touch …), ; touch …, `touch …` (accepted)",
        build_injection_files,
        "succeeded",
        check=check_injection,
    ),
    Case(
        "output-bad-names",
        "outputs named with a newline, invalid UTF-8 and CON (refused, job fails)",
        build_bad_output_names,
        "failed",
        check=check_bad_output_names,
    ),
    Case(
        "reserved-outputs",
        "the job writes syncd-result.json, syncd-stdout.txt and .syncd-tmp/ itself",
        build_reserved_outputs,
        "failed",
        check=check_reserved,
    ),
    Case(
        "user-error-txt",
        "a rejected job that holds the user's own ERROR.txt and syncd-error.json",
        build_user_error_files(both=True),
        "rejected",
        ("not valid YAML",),
    ),
    Case(
        "user-error-json",
        "a rejected job that holds the user's own syncd-error.json",
        build_user_error_files(both=False),
        "rejected",
        ("not valid YAML",),
    ),
    # --- shape
    Case(
        "nesting-20",
        "inputs 20 folders deep; outputs 21 deep (accepted)",
        build_nested,
        "succeeded",
        check=out_is("o/" + "/".join(f"d{i:02d}" for i in range(1, 21)) + "/copy.txt", b"twenty levels down\n"),
    ),
    Case(
        "no-manifest",
        "a folder without job.yaml (ignored: waits for one)",
        lambda job, outside: (job / "data.txt").write_text("x\n"),
        "ignored",
    ),
    Case("plain-file", "a plain file dropped into the inbox (ignored)", lambda job, outside: None, "ignored"),
    Case(
        "inbox-symlink",
        "a symlink in the inbox to a job folder elsewhere (ignored)",
        lambda job, outside: None,
        "ignored",
    ),
    # --- round two (issue 16): class 6, syncd's reserved names at any depth and in any letter case
    Case(
        "reserved-deep",
        "outputs sub/syncd-result.json, a/b/syncd-stdout.txt, deep/.syncd-tmp/x (refused)",
        python_job(_writes(*RESERVED_DEEP)),
        "failed",
        check=check_reserved_nowhere_below(*RESERVED_DEEP),
    ),
    Case(
        "reserved-case",
        "outputs SYNCD-RESULT.JSON, Syncd-Stdout.txt, x/Syncd-Result.Json (refused)",
        python_job(_writes(*RESERVED_CASE)),
        "failed",
        check=check_reserved_nowhere_below(*RESERVED_CASE),
    ),
    Case(
        "reserved-folders",
        "outputs inside folders named syncd-result.json, syncd-error.json (refused)",
        python_job(_writes(*RESERVED_FOLDERS)),
        "failed",
        check=check_reserved_nowhere_below(*RESERVED_FOLDERS),
    ),
    Case(
        "reserved-job-name",
        "name: SYNCD-Result.json (a results folder named like a record)",
        manifest(OK + "name: SYNCD-Result.json\n"),
        "rejected",
        ("reserves for its own files",),
    ),
    Case(
        "reserved-dir-name",
        "directory named syncd-stdout.txt",
        manifest(OK),
        "rejected",
        ("reserves for its own files",),
        dir_name="syncd-stdout.txt",
    ),
    # --- class 7: special files where syncd reads a file: refused at once, never opened
    Case(
        "report-fifo",
        "a valid job whose syncd-error.json is a FIFO (checking for an old report must not block)",
        with_specials(OK, special("fifo", "syncd-error.json")),
        "rejected",
        ("syncd-error.json: is a special file",),
    ),
    Case(
        "report-fifos-invalid",
        "a bad manifest beside a FIFO syncd-error.json and a FIFO ERROR.txt",
        with_specials("command: [unclosed\n", special("fifo", "syncd-error.json"), special("fifo", "ERROR.txt")),
        "rejected",
        ("not valid YAML",),
    ),
    Case(
        "manifest-chardev",
        "job.yaml is a character device that never ends (like /dev/zero)",
        with_specials(None, special("chardev", "job.yaml")),
        "rejected",
        ("must be a regular file, not a character device",),
    ),
    Case(
        "manifest-socket",
        "job.yaml is a socket",
        with_specials(None, special("socket", "job.yaml")),
        "rejected",
        ("must be a regular file, not a socket",),
    ),
    Case(
        "ready-fifo",
        "the .ready marker is a FIFO (only its presence counts; never opened)",
        with_specials('command: "echo ready > out.txt"\n', special("fifo", ".ready")),
        "succeeded",
        check=out_is("out.txt", b"ready\n"),
    ),
    # --- class 3: claim-time names follow the outbox's rules; refused files are no plain success
    Case(
        "dirname-con",
        "directory named CON (a Windows/SMB device name)",
        manifest(OK),
        "rejected",
        ("reserved device name",),
        dir_name="CON",
    ),
    Case(
        "dirname-colon",
        "directory named run:42",
        manifest(OK),
        "rejected",
        ("cannot be stored on a Windows/SMB share",),
        dir_name="run:42",
    ),
    Case("name-aux", "name: aux.txt", manifest(OK + "name: aux.txt\n"), "rejected", ("reserved device name",)),
    Case(
        "name-trailing-dot",
        "name: 'results.' (a trailing dot)",
        manifest(OK + "name: 'results.'\n"),
        "rejected",
        ("trailing dot",),
    ),
    Case(
        "name-pipe",
        "name: 'a|b'",
        manifest(OK + "name: 'a|b'\n"),
        "rejected",
        ("cannot be stored on a Windows/SMB share",),
    ),
    Case(
        "outputs-refused",
        "the command succeeds and writes a:b.txt and good.txt",
        python_job("open('a:b.txt', 'w').write('x'); open('good.txt', 'w').write('g')"),
        "failed",
        check=check_one_way(["good.txt"], {"a:b.txt": "Windows/SMB"}, "the command succeeded, but 1 file(s)"),
    ),
    Case(
        "outputs-case-collision",
        "the command writes Report.txt and report.txt",
        python_job("open('Report.txt', 'w').write('R'); open('report.txt', 'w').write('r')"),
        "failed",
        check=check_one_way(["Report.txt"], {"report.txt": "letter case"}, "could not be delivered"),
    ),
    Case(
        "failed-and-refused",
        "the command writes CON and exits 3",
        python_job("open('CON', 'w').write('c'); open('ok.txt', 'w').write('ok'); raise SystemExit(3)"),
        "failed",
        check=check_one_way(["ok.txt"], {"CON": "reserved device name"}, "1 file(s) could not be delivered"),
    ),
    # --- class 1: syncd's reports never take a name a user's file has
    Case(
        "user-report-names",
        "a rejected job holding the user's ERROR.txt, ERROR-syncd.txt, syncd-error.json and ERROR-syncd-x.txt",
        manifest(
            "command: [unclosed\n",
            **{
                "ERROR.txt": "my notes\n",
                "ERROR-syncd.txt": "also mine\n",
                "syncd-error.json": '{"mine": true}\n',
                "ERROR-syncd-x.txt": "mine too\n",
            },
        ),
        "rejected",
        ("not valid YAML",),
    ),
    # --- class 5: every name syncd derives fits the filesystem's limit for every legal user name
    Case(
        "long-input-name",
        "an input and an output named with 255 bytes (staging and delivery add no bytes)",
        python_job(
            "import glob; data = open(glob.glob('i' * 200 + '*')[0]).read(); "
            "open('o' * 251 + '.txt', 'w').write(data); open('out.txt', 'w').write(data)",
            **{"i" * 251 + ".txt": "long name\n"},
        ),
        "succeeded",
        check=lambda outcome, job: (
            out_is("out.txt", b"long name\n")(outcome, job),
            out_is("o" * 251 + ".txt", b"long name\n")(outcome, job),
        ),
    ),
    Case(
        "long-dirname-named",
        "a 255-byte directory name (multibyte) with name: set (its journal name is cut)",
        manifest(OK + "name: h-long-named\n"),
        "succeeded",
        check=out_is("ok.txt", b"ok\n"),
        dir_name="h-long-" + "\u00e9" * 124,
        folder="h-long-named",
    ),
    Case(
        "long-dirname-rejected",
        "a 255-byte directory name without name: (over the 200-byte job name limit)",
        manifest(OK),
        "rejected",
        ("at most 200 bytes",),
        dir_name="h-" + "r" * 253,
    ),
    # --- class 2: user text can't forge lines or hide characters in logs, status, reports
    Case(
        "dirname-forged-log",
        "directory name: a newline, then a plausible log line",
        manifest(OK),
        "rejected",
        ("control characters",),
        dir_name="h-forge\n" + FORGED_LINE,
    ),
    Case(
        "name-bidi",
        "name: 'h-\\u202egnp.exe' (a right-to-left override: read as h-exe.png)",
        manifest(OK + 'name: "h-\\u202egnp.exe"\n'),
        "rejected",
        ("bidirectional control characters",),
    ),
    Case(
        "name-c1",
        "name with a C1 control (U+009B, a terminal's CSI) and a line separator (U+2028)",
        manifest(OK + 'name: "h-\\x9b31m\\u2028forged"\n'),
        "rejected",
        ("control characters",),
    ),
    Case(
        "problem-forged",
        "a FIFO named with a newline and a fake problem line (ERROR.txt keeps one per line)",
        build_forged_problem,
        "rejected",
        ("is a special file",),
    ),
    Case(
        "dry-run-names",
        "a dry run whose inputs are named with a newline + fake report line, and a bidi override",
        build_dry_run_names,
        "validated",
        check=check_validation_report,
    ),
]

# Built by the slow test only: 100,000 one-byte files in 100 folders.
MANY_FILES = Case(
    "many-files", "100,000 one-byte files", build_many_files(100_000), "rejected", ("more than 10000 files",), slow=True
)


def build(case: Case, parent: Path, outside: Path) -> bytes:
    """Build ``case`` under ``parent``; return the path (bytes) of what should be renamed into the inbox."""
    path = os.path.join(os.fsencode(parent), case.fsname)
    if case.key == "plain-file":
        with open(path, "wb") as out:
            out.write(b'command: "echo not a folder"\n')
        return path
    if case.key == "inbox-symlink":
        target = outside / "linked-job"
        target.mkdir(exist_ok=True)
        (target / "job.yaml").write_text('command: "touch pwned-linked"\n')
        os.symlink(target, path)
        return path
    os.mkdir(path)
    case.build(Path(os.fsdecode(path)), outside)
    return path


def prepare_outside(outside: Path) -> None:
    """Files outside every job directory that cases link to."""
    outside.mkdir(parents=True, exist_ok=True)
    (outside / "secret.txt").write_text("TOP-SECRET-OUTSIDE\n")
    (outside / "outside-job.yaml").write_text('command: "echo via link > out.txt"\n')
    (outside / "hardlink-source.txt").write_text("hardlinked by the user\n")


def fingerprint(root: bytes | Path) -> dict[bytes, tuple]:
    """Every entry under ``root`` (links not followed): type and content hash / link target / device."""
    import hashlib

    root = os.fsencode(root)
    out: dict[bytes, tuple] = {}
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        for name in dirnames + filenames:
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, root)
            st = os.lstat(full)
            kind = stat.S_IFMT(st.st_mode)
            if stat.S_ISREG(kind):
                digest = hashlib.sha256()
                with open(full, "rb") as handle:
                    while chunk := handle.read(1 << 20):
                        digest.update(chunk)
                out[rel] = ("file", digest.hexdigest(), stat.S_IMODE(st.st_mode))
            elif stat.S_ISLNK(kind):
                out[rel] = ("link", os.readlink(full))
            elif stat.S_ISDIR(kind):
                out[rel] = ("dir",)
            else:
                out[rel] = ("special", kind, st.st_rdev)
    return out
