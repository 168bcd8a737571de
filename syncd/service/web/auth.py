"""Who may see the status page: a token or ``user:password`` read from the admin's file.

The file holds one line. With a colon it is ``user:password`` for HTTP basic auth; without one it is a
token, accepted as ``Authorization: Bearer <token>`` or as the password of basic auth (any user name),
so a browser's login prompt works with either. Comparisons take constant time.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import stat
from dataclasses import dataclass
from pathlib import Path

from syncd.fsutil import read_regular
from syncd.log import logger

MAX_AUTH_FILE = 4096
REALM = 'Basic realm="syncd", charset="UTF-8"'


class AuthFileError(Exception):
    pass


@dataclass(frozen=True)
class Credentials:
    user: str | None  # None: a token, any user name goes with it
    secret: str

    @classmethod
    def load(cls, path: Path) -> Credentials:
        try:
            text = read_regular(path, MAX_AUTH_FILE).decode("utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise AuthFileError(
                f"cannot read http.auth_file {path}: {exc}; write one line (a token or user:password) into it"
            ) from None
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        if len(lines) != 1:
            raise AuthFileError(f"http.auth_file {path} must hold exactly one line: a token or user:password")
        if path.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            logger.warning("http.auth_file {} can be read by other users; chmod 600 {}", path, path)
        user, colon, password = lines[0].partition(":")
        if colon and (not user or not password):
            raise AuthFileError(f"http.auth_file {path}: user:password needs both a user and a password")
        return cls(user, password) if colon else cls(None, lines[0])

    def allows(self, authorization: str | None) -> bool:
        """Whether an ``Authorization`` header carries these credentials."""
        if not authorization:
            return False
        scheme, _, value = authorization.strip().partition(" ")
        scheme = scheme.lower()
        if scheme == "bearer":
            return self.user is None and _same(value.strip(), self.secret)
        if scheme != "basic":
            return False
        try:
            user, colon, password = base64.b64decode(value.strip(), validate=True).decode("utf-8").partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return False
        if not colon:
            return False
        user_ok = True if self.user is None else _same(user, self.user)
        return _same(password, self.secret) and user_ok


def _same(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode("utf-8"), expected.encode("utf-8"))
