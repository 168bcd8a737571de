"""Which access token to send to frb-master, and when to exchange the refresh token for a new one.

The access token is a JWT: its ``exp`` says when it expires, so it is refreshed ahead of time (``refresh_before``),
not after a refusal. A token read from a file or minted by a command that is fresher than the last refreshed one
wins, so an operator can always hand in new tokens without a restart. A refused refresh token cannot be fixed by
retrying: it is an :class:`~syncd.errors.AccountError`, and the engine pauses every job of the backend until the
user logs in again.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from syncd.backends.tokens import TokenSource, jwt_expiry
from syncd.errors import AccountError, AuthError, PermanentError


class RefreshRefused(AccountError):
    """frb-master refused the refresh token: the user must log in again (new tokens)."""


#: (refresh token, current access token) → a new access token; raises the classified HTTP error
Exchange = Callable[[str, str], str]


class SwarmTokens:
    def __init__(
        self,
        access: TokenSource,
        refresh: TokenSource | None,
        *,
        refresh_before: float,
        exchange: Exchange,
        owner: str,
    ):
        self.access = access
        self.refresh = refresh
        self.refresh_before = refresh_before
        self._exchange = exchange
        self._owner = owner
        self._minted: str | None = None
        self._refused: str | None = None  # a token the service refused: not sent again
        self._lock = threading.Lock()

    def current(self) -> str:
        """The token to send now, refreshed first if it expires within ``refresh_before``."""
        with self._lock:
            token = self._best()
            expires = jwt_expiry(token)
            due = token == self._refused or (expires is not None and expires - time.time() < self.refresh_before)
            if not due:
                return token
            if self.refresh is not None:
                return self._renew(token)
            if expires is not None and expires <= time.time():
                raise AuthError(
                    f"{self._owner}: the access token expired at {time.ctime(expires)}; configure "
                    f"refresh_token, or a token_file or token_command that is kept fresh"
                )
            # Nothing can renew it: sent while it lasts (a refusal may have been a passing fault; the service
            # decides again).
            return token

    def refused(self, token: str) -> bool:
        """The service refused ``token``: whether another one may be had (then the request is worth repeating).
        With a refresh token, a refused token is refreshed before it is sent again."""
        with self._lock:
            self._refused = token
            if self._minted == token:
                self._minted = None
            self.access.invalidate()
            return self.refresh is not None or self.access.can_refresh

    def _best(self) -> str:
        """The configured token, or the last refreshed one when it lives longer."""
        configured = self.access.get()
        if self._minted is None or configured == self._refused:
            return self._minted or configured
        ours, theirs = jwt_expiry(self._minted), jwt_expiry(configured)
        if theirs is not None and (ours is None or theirs > ours):
            return configured
        return self._minted

    def _renew(self, token: str) -> str:
        assert self.refresh is not None
        for last in (False, True):
            try:
                new = self._exchange(self.refresh.get(), token)
                break
            except PermanentError as exc:  # refused (401/403) or a body it will not take
                if last or not self.refresh.can_refresh:
                    raise RefreshRefused(
                        f"{self._owner}: frb-master refused the refresh token ({exc}); log in again "
                        f"and put the new tokens where access_token and refresh_token read them"
                    ) from None
                self.refresh.invalidate()  # a file or command may hold a new one by now
        if not new:
            raise RefreshRefused(f"{self._owner}: frb-master's /auth/refresh gave no access token; log in again")
        self._minted = new
        if self._refused == new:
            self._refused = None
        return new
