"""Where a backend's secret token comes from, for every backend that needs one (Slurm's JWT, a REST API key).

A backend's options inherit :class:`TokenOptions` and so take exactly one of:

``token``          the token itself (a secret: shown as ``**********``); write ``${VAR}``
``token_file``     a file, read afresh each time the token is used
``token_env``      an environment variable, read each time the token is used
``token_command``  a program (argv, no shell) that prints a token; its output is reused for
                   ``token_ttl``, and a JWT is minted anew once it expires within ``token_ttl``

The backend asks a :class:`TokenSource` for the current token before each request.
Every failure to get one says which source and what to do, never the token, and is an
:class:`~syncd.errors.AuthError` (the backend is paused until it is fixed) except a
command that hangs, which is transient.

Slurm's older form, ``token: {file|env|command: …, refresh_before: …}``, is read as
``token_file``/``token_env``/``token_command`` and ``token_ttl``.
"""

from __future__ import annotations

import base64
import json
import os
import shlex
import subprocess
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from pydantic import ConfigDict, Field, SecretStr, field_validator, model_validator

from syncd.config import ConfigPath, Duration, StrictModel
from syncd.errors import AuthError, TransientError
from syncd.fsutil import open_regular

#: seconds a token command may take
COMMAND_TIMEOUT = 30.0
SOURCES = ("token", "token_file", "token_env", "token_command")
#: Slurm's nested form, ``token: {file: …}``: its keys and the fields they are
NESTED_KEYS = {"file": "token_file", "env": "token_env", "command": "token_command", "refresh_before": "token_ttl"}
_EXCERPT = 200


class TokenOptions(StrictModel):
    """A secret token's source: exactly one of ``token``, ``token_file``, ``token_env``, ``token_command``."""

    # A validation error never quotes what it was given: that may be the token.
    model_config = ConfigDict(**StrictModel.model_config, hide_input_in_errors=True)

    token: SecretStr | None = Field(None, description="the token itself; write ${VAR} to take it from the environment")
    token_file: ConfigPath | None = Field(
        None, description="read the token from this file, afresh each time it is used"
    )
    token_env: str | None = Field(
        None,
        pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
        description="read the token from this environment variable (its name, not ${...})",
    )
    token_command: list[str] | None = Field(
        None,
        min_length=1,
        description="run this (an argument list, or a string split like a shell would, "
        "but no shell runs) to mint a token; it prints the token",
    )
    token_ttl: Duration = Field(
        300.0, description="reuse a minted token this long; a JWT is minted anew when it expires sooner"
    )

    @model_validator(mode="before")
    @classmethod
    def _nested_form(cls, data: Any) -> Any:
        """``token: {file: …}`` (Slurm's form) → ``token_file: …``."""
        if not isinstance(data, Mapping) or not isinstance(data.get("token"), Mapping):
            return data
        flat = {key: value for key, value in data.items() if key != "token"}
        for key, value in data["token"].items():
            field = NESTED_KEYS.get(key)
            if field is None:
                raise ValueError(
                    f"token.{key}: unknown key; token: takes one of file, env, command (and refresh_before)"
                )
            if field in flat:
                raise ValueError(f"token.{key} and {field} say the same; keep one")
            flat[field] = value
        return flat

    @field_validator("token_command", mode="before")
    @classmethod
    def _split_command(cls, value: Any) -> Any:
        return shlex.split(value) if isinstance(value, str) else value

    @model_validator(mode="after")
    def _exactly_one_source(self):
        given = [key for key in SOURCES if getattr(self, key) is not None]
        if len(given) != 1:
            also = f" (given: {', '.join(given)})" if given else ""
            raise ValueError(f"give exactly one of token, token_file, token_env or token_command{also}")
        return self


def jwt_expiry(token: str) -> float | None:
    """The ``exp`` claim (Unix time) of a JWT, None if ``token`` is not one or has none. Not verified."""
    try:
        payload = token.split(".")[1]
        data = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        return float(data["exp"])
    except (IndexError, ValueError, KeyError, TypeError):
        return None


class TokenSource:
    """The current token of a :class:`TokenOptions`; thread-safe.

    ``owner`` starts every error message (e.g. ``backend 'hpc'``); ``environ`` replaces ``os.environ``;
    ``extract`` picks the token out of what the source holds (after stripping), e.g. from ``NAME=<token>``.
    """

    def __init__(
        self,
        options: TokenOptions,
        *,
        owner: str = "",
        environ: Mapping[str, str] | None = None,
        extract: Callable[[str], str] | None = None,
        command_timeout: float = COMMAND_TIMEOUT,
    ):
        self.options = options
        self._owner = f"{owner}: " if owner else ""
        self._environ = environ
        self._extract = extract
        self._command_timeout = command_timeout
        self._minted: tuple[str, float, float | None] | None = None  # token, when (monotonic), JWT expiry
        self._lock = threading.Lock()
        self._warned_open = False

    @property
    def can_refresh(self) -> bool:
        """Whether asking again may give another token (a file or a command), so a refusal is worth one retry."""
        return self.options.token_file is not None or self.options.token_command is not None

    def get(self) -> str:
        opts = self.options
        if opts.token is not None:
            return self._checked(opts.token.get_secret_value(), "the inline token")
        if opts.token_file is not None:
            return self._checked(self._read_file(opts.token_file), f"token_file {opts.token_file}")
        if opts.token_env is not None:
            environ = os.environ if self._environ is None else self._environ
            value = environ.get(opts.token_env)
            if value is None:
                raise AuthError(
                    f"{self._owner}environment variable {opts.token_env} (token_env) is not set; "
                    f"set it in the daemon's environment"
                )
            return self._checked(value, f"environment variable {opts.token_env} (token_env)")
        with self._lock:
            if self._minted is not None and self._fresh(*self._minted):
                return self._minted[0]
            token = self._mint(opts.token_command or [])
            self._minted = (token, time.monotonic(), jwt_expiry(token))
            return token

    def invalidate(self) -> None:
        """Forget a minted token: the next :meth:`get` runs the command again."""
        with self._lock:
            self._minted = None

    def _fresh(self, token: str, minted: float, expires: float | None) -> bool:
        ttl = self.options.token_ttl
        return time.monotonic() - minted < ttl and (expires is None or expires - time.time() > ttl)

    def _checked(self, raw: str, where: str) -> str:
        token = raw.strip()
        if token and self._extract is not None:
            token = self._extract(token).strip()
        if not token:
            raise AuthError(f"{self._owner}{where} is empty; put the token there")
        return token

    def _read_file(self, path: Path) -> str:
        try:
            with open(open_regular(path), "rb") as handle:  # a FIFO or device: refused, never read
                mode = os.fstat(handle.fileno()).st_mode
                data = handle.read()
        except FileNotFoundError:
            raise AuthError(
                f"{self._owner}token_file {path}: no such file; write the token there or fix the path"
            ) from None
        except OSError as exc:
            raise AuthError(f"{self._owner}token_file {path}: cannot read it ({exc.strerror})") from None
        if mode & 0o077 and not self._warned_open:
            self._warned_open = True
            from syncd.log import logger

            logger.warning(
                "{}token_file {} can be read by other users (mode {:04o}); chmod 600 it",
                self._owner,
                path,
                mode & 0o7777,
            )
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            raise AuthError(f"{self._owner}token_file {path} is not UTF-8 text") from None

    def _mint(self, argv: list[str]) -> str:
        name = Path(argv[0]).name if argv else "?"
        try:
            done = subprocess.run(
                argv,
                capture_output=True,
                text=True,
                errors="replace",
                stdin=subprocess.DEVNULL,
                timeout=self._command_timeout,
            )
        except subprocess.TimeoutExpired:
            raise TransientError(
                f"{self._owner}token_command '{name}' did not finish within {self._command_timeout:.0f}s"
            ) from None
        except (FileNotFoundError, PermissionError, NotADirectoryError) as exc:
            raise AuthError(
                f"{self._owner}token_command '{argv[0]}' cannot run ({exc.strerror}); fix the command in the config"
            ) from None
        except OSError as exc:
            raise TransientError(f"{self._owner}token_command '{name}' cannot run now ({exc.strerror})") from None
        if done.returncode != 0:
            said = " ".join(done.stderr.split())
            said = said if len(said) <= _EXCERPT else said[: _EXCERPT - 1] + "…"
            raise AuthError(
                f"{self._owner}token_command '{name}' exited {done.returncode}" + (f": {said}" if said else "")
            )
        return self._checked(done.stdout, f"the output of token_command '{name}'")
