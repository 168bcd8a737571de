"""Text from users made safe to show: one line, nothing invisible.

Job names, file names, problems and messages come from users. Where a person reads them (log lines,
``syncd status``, ERROR.txt, the journal, reports), :func:`shown` writes control characters as
``\\n``, ``\\t``, ``\\x1b``…, and bidirectional overrides and other invisible characters as
``\\u202e``…, so a name can neither start a forged line nor hide or reorder what follows it. Where
programs read JSON, :func:`visible_json` keeps the data exact (JSON escapes decode to the same text)
while a person looking at it sees the same escapes.
"""

from __future__ import annotations

import json
import re
from typing import Any

#: C0 and C1 controls and DEL, line/paragraph separators, bidirectional controls (embeddings, overrides,
#: isolates, marks), zero-width and other invisible format characters, the byte order mark, interlinear
#: annotations, tag characters, and the surrogates that carry undecodable bytes of file names
_HIDDEN = re.compile(
    "[\x00-\x1f\x7f-\x9f\u00ad\u034f\u061c\u115f\u1160\u17b4\u17b5\u180b-\u180f\u200b-\u200f\u2028-\u202e"
    "\u2060-\u206f\u3164\ufe00-\ufe0f\ufeff\uffa0\ufff9-\ufffb\udc80-\udcff\U000e0000-\U000e0fff]"
)
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(match: re.Match) -> str:
    ch = match.group()
    code = ord(ch)
    if ch in _NAMED:
        return _NAMED[ch]
    if code < 0x100:
        return f"\\x{code:02x}"
    if 0xDC80 <= code <= 0xDCFF:  # an undecodable byte of a file name (surrogateescape)
        return f"\\x{code - 0xDC00:02x}"
    return f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}"


def shown(text: object) -> str:
    """``text`` on one line with every control and invisible character written as an escape."""
    value = text if isinstance(text, str) else str(text)
    if value.isascii() and value.isprintable():
        return value
    return _HIDDEN.sub(_escape, value)


_JSON_HIDDEN = re.compile(
    "[\x7f-\x9f\u00ad\u034f\u061c\u115f\u1160\u17b4\u17b5\u180b-\u180f\u200b-\u200f\u2028-\u202e"
    "\u2060-\u206f\u3164\ufe00-\ufe0f\ufeff\uffa0\ufff9-\ufffb\ud800-\udfff\U000e0000-\U000e0fff]"
)


def _json_escape(match: re.Match) -> str:
    code = ord(match.group())
    if code > 0xFFFF:  # JSON writes a character beyond the BMP as a surrogate pair
        code -= 0x10000
        return f"\\u{0xD800 + (code >> 10):04x}\\u{0xDC00 + (code & 0x3FF):04x}"
    return f"\\u{code:04x}"


def visible_json(data: Any, **options: Any) -> str:
    """``json.dumps(data, ensure_ascii=False)``, with every invisible or control character (bidi overrides,
    zero-width characters, C1 controls…) written as a ``\\uXXXX`` escape: the same data for a parser, visible
    to a person. (JSON escapes the C0 controls itself.)"""
    return _JSON_HIDDEN.sub(_json_escape, json.dumps(data, ensure_ascii=False, **options))
