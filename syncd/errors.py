"""Error types shared by every layer.

Backends and storages only *classify* failures; the engine decides what to do
with them (retry with backoff, pause the backend, fail the job).
"""

from __future__ import annotations


class SyncdError(Exception):
    """Base class for errors syncd raises on purpose."""


class TransientError(SyncdError):
    """A failure worth retrying: connection refused/reset, timeout, 5xx, 429.

    ``retry_after`` carries a server's Retry-After hint in seconds, if any.
    """

    def __init__(self, message: str, *, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


class PermanentError(SyncdError):
    """A refusal that will not change by retrying: bad request, quota, not found."""


class InputError(PermanentError):
    """An input file could not be read from the claimed job folder (gone, unreadable): the user's to fix.

    ``problems`` name each file and what to do; a job that was never submitted is rejected with them.
    """

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("; ".join(problems))


class AuthError(PermanentError):
    """Credentials were refused. Retrying with the same credentials is pointless."""


class NotFoundError(PermanentError):
    """The service does not know the thing asked for (a job, a file, a path): asking again will not find it."""


class AccountError(AuthError):
    """The service refuses all work of this account for now (no credits, a quota): like refused credentials,
    every job of the backend pauses and none spends its retries, but the fix is on the account, not the config."""


class ConfigError(SyncdError):
    """The daemon configuration is invalid; ``problems`` lists every finding."""

    def __init__(self, path: str, problems: list[str]):
        self.path = path
        self.problems = problems
        super().__init__(f"{path}: " + "; ".join(problems))


class ManifestError(SyncdError):
    """A job directory cannot be accepted; ``problems`` lists every finding."""

    def __init__(self, path: str, problems: list[str]):
        self.path = path
        self.problems = problems
        super().__init__(f"{path}: " + "; ".join(problems))


class NotReady(SyncdError):
    """The job has ended but the service hands its results over later (an asynchronous transfer).

    Not a failure: the job waits in ``collecting`` for ``retry_after`` seconds, spends none of its retries and
    opens no circuit breaker; after the inbox's ``results_deadline`` it is held with this message.
    """

    def __init__(self, message: str, *, retry_after: float = 30.0):
        super().__init__(message)
        self.retry_after = retry_after
