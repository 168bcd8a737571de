"""``job.yaml`` → typed manifest, input selection and path safety.

Everything here is pure checking: nothing in the job directory is modified.
"""

from __future__ import annotations

import errno
import json
import os
import pwd
import re
import stat
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
)

from syncd.errors import ManifestError
from syncd.fsutil import file_kind, read_regular
from syncd.names import check_segment, reserved
from syncd.units import parse_duration, parse_size
from syncd.yamlfile import YamlProblem, load_file

MANIFEST_NAME = "job.yaml"
READY_MARKER = ".ready"
CONTROL_FILES = frozenset({MANIFEST_NAME, READY_MARKER})
ERROR_TEXT = "ERROR.txt"
ERROR_JSON = "syncd-error.json"
REPORT_FILES = frozenset({ERROR_TEXT, ERROR_JSON})
MAX_MANIFEST_BYTES = 256 * 1024
REPORT_LIMIT = 4 * 1024 * 1024  # a syncd-error.json larger than this is not one of syncd's
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

Duration = Annotated[float, BeforeValidator(parse_duration), Field(gt=0)]
Size = Annotated[int, BeforeValidator(parse_size), Field(gt=0)]


def check_job_name(name: str) -> str | None:
    """Why ``name`` can't be a folder name in the outbox, or None if it can."""
    if not name or name in (".", ".."):
        return "a job name must not be empty, '.' or '..'"
    if name.startswith("."):
        return "a job name must not start with '.' (hidden folders are reserved for syncd)"
    if name.startswith("-"):
        return "a job name must not start with '-' (it would read as an option to command-line tools)"
    if re.search(r"\\x[0-9a-f]{2}", name):
        return "the name is not valid UTF-8 text (shown here with \\x escapes); save it as UTF-8"
    if "/" in name or "\\" in name:
        return "a job name must not contain '/' or '\\'"
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in name):
        return "a job name must not contain control characters (newlines, tabs, NUL)"
    if name != name.strip():
        return "a job name must not start or end with spaces"
    if len(name.encode("utf-8")) > 200:
        return "a job name must be at most 200 bytes long"
    if reserved(name):
        return f"'{name}' is a name syncd reserves for its own files (in any letter case)"
    if problem := check_segment(name):  # the results folder is named after the job: the outbox's own rules
        return f"the results folder can't have this name: {problem}"
    return None


class Resources(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    cpus: int | None = Field(None, gt=0, description="CPU cores")
    memory: Size | None = Field(None, description="memory, e.g. 4GiB")
    walltime: Duration | None = Field(None, description="scheduler time limit, e.g. 2h")
    gpus: int | None = Field(None, ge=0, description="GPUs")


class Manifest(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    command: str | list[str] = Field(description="a string runs under /bin/sh -c; a list is exec'd")
    name: str | None = Field(None, description="job name (default: the directory name)")
    inputs: list[str] | None = Field(None, description="globs relative to the job directory")
    outputs: list[str] | None = Field(None, description="globs of files to deliver")
    env: dict[str, str] = Field(default_factory=dict, description="extra environment variables")
    timeout: Duration | None = Field(None, description="kill the job after this long")
    retries: int = Field(0, ge=0, le=10, description="re-run a failed job this many times")
    resources: Resources = Resources()
    tags: list[str] = Field(default_factory=list)
    priority: int = Field(0, ge=-100, le=100)
    dry_run: bool = Field(False, description="only validate: a report comes back, nothing runs")

    @field_validator("command")
    @classmethod
    def _command_not_empty(cls, value):
        if isinstance(value, str) and not value.strip():
            raise ValueError("command is empty; write the shell command to run")
        if isinstance(value, list) and (not value or not value[0]):
            raise ValueError("command list is empty; write e.g. [python, run.py]")
        if "\x00" in (value if isinstance(value, str) else "".join(value)):
            raise ValueError("command must not contain NUL characters")
        return value

    @field_validator("name")
    @classmethod
    def _name_is_safe(cls, value):
        if value is not None and (problem := check_job_name(value)):
            raise ValueError(problem)
        return value

    @field_validator("env", mode="before")
    @classmethod
    def _env_values_as_text(cls, value):
        if not isinstance(value, dict):
            return value
        result = {}
        for key, item in value.items():
            if not isinstance(key, str) or not _ENV_NAME.match(key):
                raise ValueError(f"env key {key!r} is not a valid variable name (letters, digits, _)")
            if isinstance(item, bool) or not isinstance(item, (str, int, float)):
                raise ValueError(f"env.{key} must be text or a number, not {type(item).__name__}")
            if "\x00" in str(item):
                raise ValueError(f"env.{key} must not contain NUL characters")
            result[key] = str(item)
        return result

    @field_validator("inputs", "outputs")
    @classmethod
    def _globs_stay_inside(cls, value):
        for pattern in value or []:
            if problem := check_glob(pattern):
                raise ValueError(f"{pattern!r}: {problem}")
        return value


@dataclass(frozen=True)
class InputFile:
    """One file to stage: ``relpath`` inside the job, ``source`` the file to read."""

    relpath: str
    source: Path
    size: int


@dataclass(frozen=True)
class JobDirectory:
    """A validated job directory: its manifest, effective name and inputs."""

    path: Path
    manifest: Manifest
    name: str
    inputs: tuple[InputFile, ...]


def check_glob(pattern: str) -> str | None:
    if not isinstance(pattern, str) or not pattern:
        return "a pattern must be non-empty text"
    if pattern.startswith("/") or re.match(r"^[A-Za-z]:", pattern):
        return "absolute paths are not allowed; write a path relative to the job directory"
    if "\\" in pattern or "\x00" in pattern:
        return "use '/' between folders; backslashes and NUL are not allowed"
    if ".." in PurePosixPath(pattern).parts:
        return "'..' would leave the job directory; list files inside it"
    return None


def glob_to_regex(pattern: str) -> re.Pattern:
    """Translate a glob with ``*``, ``?``, ``[..]`` and ``**`` (any depth) to a regex on posix paths."""
    out, i, n = [], 0, len(pattern)
    while i < n:
        ch = pattern[i]
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif ch == "*":
            out.append("[^/]*")
            i += 1
        elif ch == "?":
            out.append("[^/]")
            i += 1
        elif ch == "[":
            end = pattern.find("]", i + 2 if pattern[i + 1 : i + 2] in ("!", "]") else i + 1)
            if end == -1:
                out.append(re.escape(ch))
                i += 1
            else:
                body = pattern[i + 1 : end]
                if body.startswith("!"):
                    body = "^" + body[1:]
                out.append("[" + body.replace("\\", "\\\\") + "]")
                i = end + 1
        else:
            out.append(re.escape(ch))
            i += 1
    return re.compile("".join(out) + r"\Z", re.DOTALL)


def match_any(relpath: str, patterns: list[re.Pattern]) -> bool:
    return any(p.match(relpath) for p in patterns)


def parse_manifest(path: Path) -> Manifest:
    """Read and validate ``job.yaml``; raise ManifestError naming line and field."""
    shown = path.name
    try:
        if not path.exists() and not path.is_symlink():
            raise ManifestError(
                str(path), [f'{shown}: missing; every job folder needs one, e.g. command: "python run.py"']
            )
        kind = file_kind(path.lstat().st_mode)
        if kind != "a regular file":  # never opened: a FIFO would block, a device never end
            what = "a folder or a link" if kind in ("a folder", "a symbolic link") else kind
            raise ManifestError(str(path), [f"{shown}: must be a regular file, not {what}"])
        loaded = load_file(path, max_bytes=MAX_MANIFEST_BYTES, allow_aliases=False)
    except YamlProblem as exc:
        where = f"{shown}:{exc.line}" if exc.line else shown
        raise ManifestError(str(path), [f"{where}: {exc.message}"]) from None
    except OSError as exc:
        raise ManifestError(str(path), [f"{shown}: cannot be read ({exc.strerror}); check its permissions"]) from None
    if not isinstance(loaded.data, dict):
        raise ManifestError(
            str(path), [f"{shown}: must be a mapping with at least a 'command' key, e.g. command: \"python run.py\""]
        )
    try:
        return Manifest.model_validate(loaded.data)
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            loc = tuple(error["loc"])
            # pydantic appends the union member (str / list[str]) to the location
            loc = tuple(p for p in loc if p not in ("str", "list[str]")) or loc
            line = loaded.line_of(loc)
            field = ".".join(str(p) for p in loc)
            msg = error["msg"].removeprefix("Value error, ")
            if error["type"] == "extra_forbidden":
                model = Resources if loc[0] == "resources" else Manifest
                msg = f"unknown key '{loc[-1]}'; known keys: {', '.join(model.model_fields)}"
            elif error["type"] in ("greater_than", "greater_than_equal", "less_than_equal"):
                limit = error.get("ctx", {})
                bound = next(iter(limit.values()), "")
                relation = {
                    "greater_than": "more than",
                    "greater_than_equal": "at least",
                    "less_than_equal": "at most",
                }[error["type"]]
                example = ", e.g. 30s or 2h" if field in ("timeout", "resources.walltime") else ""
                msg = f"must be {relation} {bound}{example}"
            elif error["type"] == "missing":
                msg = "required but missing; add it" + (', e.g. command: "python run.py"' if field == "command" else "")
            problems.append(f"{shown}:{line}: {field}: {msg}" if line else f"{shown}: {field}: {msg}")
        # A union error reports each member; keep one line per field/message.
        raise ManifestError(str(path), list(dict.fromkeys(problems))) from None


def is_syncd_report(path: Path) -> bool:
    """True when ``path`` is a rejection report syncd wrote (not a user's file of the same name)."""
    try:
        data = json.loads(read_regular(path, REPORT_LIMIT, follow=False).decode("utf-8"))
    except (OSError, ValueError):  # also a FIFO, device or link of that name: refused unopened, never ours
        return False
    return isinstance(data, dict) and data.get("state") == "rejected" and "syncd_version" in data


def _not_readable(exc: OSError) -> str:
    if exc.errno not in (errno.EACCES, errno.EPERM):
        return f"cannot be read ({exc.strerror}); check its permissions"
    try:
        user = pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        user = f"uid {os.getuid()}"
    return f"cannot be read by the user syncd runs as ({user}); make it readable for that user (e.g. chmod a+r)"


def scan_inputs(job_dir: Path, manifest: Manifest, *, max_files: int, max_bytes: int | None) -> tuple[InputFile, ...]:
    """Every input file of the job, checked for escapes, links and special files."""
    root: Path | None = None  # resolved at the first symbolic link (each folder of the path is a stat)
    # A rejected job moved back into the inbox still holds syncd's report: not an input.
    has_report = is_syncd_report(job_dir / ERROR_JSON)
    problems: list[str] = []
    files: list[InputFile] = []
    total = 0

    def unreadable_folder(exc: OSError) -> None:  # os.walk would otherwise skip the folder's files silently
        rel = Path(exc.filename).relative_to(job_dir).as_posix() if exc.filename else "a folder"
        problems.append(f"{rel}/: {_not_readable(exc)}")

    for dirpath, dirnames, filenames in os.walk(job_dir, followlinks=False, onerror=unreadable_folder):
        here = Path(dirpath)
        for entry in sorted(dirnames + filenames):
            path = here / entry
            rel = path.relative_to(job_dir).as_posix()
            try:
                st = path.lstat()
            except OSError as exc:
                problems.append(f"{rel}: {_not_readable(exc)}")
                continue
            if stat.S_ISDIR(st.st_mode):
                continue
            if rel in CONTROL_FILES or (rel in REPORT_FILES and has_report):
                continue
            source = path
            if stat.S_ISLNK(st.st_mode):
                target = os.readlink(path)
                try:
                    resolved = path.resolve(strict=True)
                except (OSError, RuntimeError):
                    problems.append(f"{rel}: symbolic link to '{target}' points nowhere; replace it with the file")
                    continue
                root = root or job_dir.resolve()
                if resolved != root and root not in resolved.parents:
                    problems.append(
                        f"{rel}: symbolic link to '{target}' leads outside the job directory; "
                        f"copy the file into the job directory instead"
                    )
                    continue
                if resolved.is_dir():
                    problems.append(f"{rel}: symbolic link to a folder; copy the folder instead")
                    continue
                source, st = resolved, resolved.stat()
            if not stat.S_ISREG(st.st_mode):
                problems.append(f"{rel}: is a special file (FIFO, socket or device); only regular files are staged")
                continue
            if not os.access(source, os.R_OK):
                problems.append(f"{rel}: {_not_readable(PermissionError(errno.EACCES, 'Permission denied'))}")
                continue
            files.append(InputFile(rel, source, st.st_size))
            total += st.st_size
        if len(files) > max_files:
            break
    if len(files) > max_files:
        problems.append(f"the job has more than {max_files} files; split it or ask the admin to raise max_input_files")
    if manifest.inputs is not None:
        selected = []
        for pattern in manifest.inputs:
            regex = glob_to_regex(pattern)
            hits = [f for f in files if regex.match(f.relpath)]
            if not hits and not problems:
                problems.append(f"inputs: pattern {pattern!r} matched no file; fix the pattern or add the file")
            selected.extend(hits)
        files = list({f.relpath: f for f in selected}.values())
        total = sum(f.size for f in files)
    if max_bytes is not None and total > max_bytes:
        problems.append(
            f"inputs total {total} bytes, over the limit of {max_bytes}; ask the admin to raise max_input_bytes"
        )
    if problems:
        raise ManifestError(str(job_dir), problems)
    return tuple(sorted(files, key=lambda f: f.relpath))


def load_job_directory(
    job_dir: Path, *, max_files: int = 100_000, max_bytes: int | None = None, default_name: str | None = None
) -> JobDirectory:
    """Validate a job directory completely; ManifestError lists every problem found."""
    problems: list[str] = []
    manifest: Manifest | None = None
    try:
        manifest = parse_manifest(job_dir / MANIFEST_NAME)
    except ManifestError as exc:
        problems += exc.problems
    name = (manifest.name if manifest and manifest.name else None) or default_name or job_dir.name
    if manifest is None or manifest.name is None:
        if problem := check_job_name(name):
            problems.append(f"directory name {name!r}: {problem}; rename the folder or set 'name:' in job.yaml")
    inputs: tuple[InputFile, ...] = ()
    try:
        inputs = scan_inputs(job_dir, manifest or Manifest(command="true"), max_files=max_files, max_bytes=max_bytes)
    except ManifestError as exc:
        problems += exc.problems
    if problems:
        raise ManifestError(str(job_dir), problems)
    assert manifest is not None
    return JobDirectory(job_dir, manifest, name, inputs)


def manifest_as_dict(manifest: Manifest) -> dict[str, Any]:
    return manifest.model_dump(mode="json")
