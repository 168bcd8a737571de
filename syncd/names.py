"""Names: the rules every name syncd writes into the outbox must pass, and the names syncd keeps for itself.

One place for them, so the check at claim time (a job's name becomes its results folder) and the
check at delivery (each output's path) can never disagree.
"""

from __future__ import annotations

import os
import re

from syncd.fsutil import TMP_DIR

RESULT_RECORD = "syncd-result.json"
STDOUT_NAME = "syncd-stdout.txt"
STDERR_NAME = "syncd-stderr.txt"
VALIDATION_REPORT = "syncd-validation.txt"
ERROR_JSON = "syncd-error.json"
#: the files syncd itself puts at the top of a job's results folder
OWN_FILES = frozenset({RESULT_RECORD, STDOUT_NAME, STDERR_NAME, VALIDATION_REPORT})
#: names no output may have at any depth, in any letter case (a reader that searches the outbox for
#: result records must only ever find syncd's), nor a job (its results folder)
RESERVED_NAMES = frozenset({*OWN_FILES, ERROR_JSON, TMP_DIR})
_RESERVED_FOLDED = frozenset(name.casefold() for name in RESERVED_NAMES)
_RESERVED_SMB = re.compile(r"^(CON|PRN|AUX|NUL|COM[0-9]|LPT[0-9])(\..*)?$", re.IGNORECASE)
_SMB_FORBIDDEN = set('<>:"|?*')
_BIDI = set("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def reserved(part: str) -> bool:
    """Whether one path segment is a name syncd keeps for itself (any letter case)."""
    return part.casefold() in _RESERVED_FOLDED


def check_segment(part: str) -> str | None:
    """Why one path segment can't be a name in the outbox (a Windows/SMB share included), or None."""
    if part in ("", ".", ".."):
        return f"has a '{part or '//'}' path segment that could leave the outbox"
    if any(ord(ch) < 32 or 0x7F <= ord(ch) <= 0x9F or ch in "\u2028\u2029" for ch in part):
        return "contains control characters"
    if _BIDI & set(part):
        return (
            "contains bidirectional control characters (U+202A–U+202E, U+2066–U+2069), which make a name "
            "read as another, e.g. 'gnp.exe' as 'exe.png'"
        )
    if _RESERVED_SMB.match(part):
        return f"'{part}' is a reserved device name on Windows/SMB shares"
    if _SMB_FORBIDDEN & set(part) or part.endswith((".", " ")):
        return f"'{part}' cannot be stored on a Windows/SMB share (no <>:\"|?*, no trailing dot or space)"
    if part == TMP_DIR:
        return f"'{TMP_DIR}' is reserved for syncd's temporary files"
    return None


def check_outbox_key(key: str) -> str | None:
    """Why ``key`` must not be written into the outbox, or None when it is safe."""
    if not key or key.startswith("/") or "\\" in key or "\x00" in key:
        return "empty, absolute, or contains a backslash or NUL"
    try:
        key.encode("utf-8")
    except UnicodeEncodeError:  # undecodable bytes carried as surrogates: no SMB share or index can hold them
        return "is not valid UTF-8"
    for part in key.rstrip("/").split("/"):
        if problem := check_segment(part):
            return problem
    return None


def check_output_path(relpath: str) -> str | None:
    """Why a job's output at ``relpath`` (inside its results folder) must not be delivered, or None."""
    if problem := check_outbox_key(relpath):
        return problem
    for part in relpath.rstrip("/").split("/"):
        if reserved(part):
            return f"'{part}' is a name syncd reserves for its own files (at any depth, in any letter case)"
    return None


def job_key_check(folder: str):
    """The key check of a job's results mirror: syncd's own files at the top of ``folder``, outputs anywhere
    below it by :func:`check_output_path`."""
    top = folder.rstrip("/") + "/"

    def check(key: str) -> str | None:
        if not key.startswith(top):
            return check_outbox_key(key)
        rel = key[len(top) :]
        if rel in OWN_FILES:
            return check_outbox_key(key)
        return check_outbox_key(key) or check_output_path(rel)

    return check


#: the longest name (in bytes) of one file or folder on the filesystems syncd writes to (Linux, SMB)
NAME_MAX = 255


def fit_name(stem: str, suffix: str = "", *, tag: str, limit: int = NAME_MAX) -> str:
    """``stem + suffix`` when it fits in ``limit`` bytes; else ``stem`` cut at a character boundary plus
    ``~<tag>`` and ``suffix``, so that every name syncd derives from a user's name (of up to ``limit`` bytes)
    fits. ``tag`` (e.g. a job id) keeps two cut names apart. Undecodable bytes (surrogate escapes) are kept."""
    whole = os.fsencode(stem + suffix)
    if len(whole) <= limit:
        return stem + suffix
    tail = os.fsencode(f"~{tag}{suffix}")
    if len(tail) >= limit:
        raise ValueError(f"no name fits: the suffix {suffix!r} with tag {tag!r} is {len(tail)} bytes")
    raw = os.fsencode(stem)
    cut = limit - len(tail)
    while 0 < cut < len(raw) and raw[cut] & 0xC0 == 0x80:  # never split a UTF-8 character
        cut -= 1
    return os.fsdecode(raw[:cut] + tail)
