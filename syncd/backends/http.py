"""How every REST backend turns an HTTP answer, or a request that got none, into syncd's errors.

One classifier, so that Slurm and each job service behind a REST API fail alike:

=====================================  ==========================================
401, 403                               :class:`~syncd.errors.AuthError`
404, 410                               :class:`~syncd.errors.NotFoundError`
408, 425, 429, 5xx                     :class:`~syncd.errors.TransientError`, with
                                       ``retry_after`` from ``Retry-After``
501, 505                               :class:`~syncd.errors.PermanentError` (the
                                       server lacks the feature: asking again is moot)
other 4xx, 1xx, 3xx                    :class:`~syncd.errors.PermanentError`
no connection, timeout, broken body    :class:`~syncd.errors.TransientError`
bad URL, untrusted TLS certificate     :class:`~syncd.errors.PermanentError`
=====================================  ==========================================

Every message names the service, what was being done, the status, how long the
answer took and a short excerpt of its body (a JSON ``message``/``detail``/``error``
when there is one). Values of the request's credential headers are blanked out of
the excerpt, and no message quotes a URL (whose query may hold a secret).

A backend method is then one line::

    response = http.request(self.session, "GET", url, service=self.service, what=f"reading job {id}",
                            timeout=(5, 60))
"""

from __future__ import annotations

import email.utils
import html
import json
import re
import ssl
import time
from datetime import UTC
from http.client import HTTPException
from typing import Any

import requests
from urllib3.exceptions import HTTPError

from syncd.errors import AuthError, NotFoundError, PermanentError, SyncdError, TransientError

#: a longer Retry-After is taken as this: a day-long hint would only park the job out of sight
MAX_RETRY_AFTER = 3600.0
#: characters of a response body quoted in a message
EXCERPT_CHARS = 200
AUTH_STATUSES = frozenset({401, 403})
NOT_FOUND_STATUSES = frozenset({404, 410})
TRANSIENT_4XX = frozenset({408, 425, 429})
#: 5xx answers that will not change: the server does not implement the method, or the HTTP version
PERMANENT_5XX = frozenset({501, 505})
_JSON_KEYS = ("message", "detail", "error_description", "error", "description", "title", "msg", "reason")
_SECRET_HEADER = re.compile(r"authorization|cookie|token|secret|key|password|auth", re.IGNORECASE)
_REDACTED = "**********"


def classify_response(response: requests.Response, *, service: str, what: str) -> SyncdError | None:
    """None for a 2xx answer, else the error it means (not raised). ``service`` names the server, e.g.
    ``"Qarnot at https://api.qarnot.com"``; ``what`` says what was being done, e.g. ``"submitting job x"``."""
    status = response.status_code
    if 200 <= status < 300:
        return None
    how = f" while {what} ({status_text(response)} after {_seconds(elapsed(response))})" + _said(response)
    if status in AUTH_STATUSES:
        return AuthError(f"{service} refused the credentials{how}; check the credentials configured for it")
    if status in NOT_FOUND_STATUSES:
        return NotFoundError(f"{service} does not know what was asked for{how}")
    if status in TRANSIENT_4XX or (500 <= status < 600 and status not in PERMANENT_5XX):
        retry_after = parse_retry_after(response.headers.get("Retry-After"), now=_server_time(response))
        verdict = {
            408: "timed out the request",
            425: "found the request too early",
            429: "asks for fewer requests",
        }.get(status, "failed")
        hint = f"; it asks to retry in {_seconds(retry_after)}" if retry_after is not None else ""
        return TransientError(f"{service} {verdict}{how}{hint}", retry_after=retry_after)
    if 400 <= status < 600:
        return PermanentError(f"{service} refused the request{how}")
    return PermanentError(f"{service} gave an unexpected answer{how}")


def classify_exception(
    exc: requests.RequestException, *, service: str, what: str, timeout: Any = None, elapsed: float | None = None
) -> SyncdError:
    """The error a request that got no (complete) answer means; ``timeout`` and ``elapsed`` (seconds), when
    known, are named in the message."""
    took = f" after {_seconds(elapsed)}" if elapsed is not None else ""
    cause = _cause(exc)
    if isinstance(exc, requests.ConnectTimeout):
        return TransientError(
            f"cannot reach {service} while {what}: no connection{_within(timeout, 0)}{took}; is it up and reachable?"
        )
    if isinstance(exc, requests.Timeout):
        return TransientError(f"{service} did not answer{_within(timeout, 1)} while {what}{took}")
    if isinstance(exc, requests.exceptions.SSLError):
        if any(isinstance(e, ssl.SSLCertVerificationError) for e in _chain(exc)):
            return PermanentError(
                f"cannot trust the TLS certificate of {service} while {what} ({cause}); "
                f"check the URL, or configure the CA that signed it"
            )
        return TransientError(f"the TLS handshake with {service} failed while {what} ({cause}){took}")
    if isinstance(
        exc,
        (
            requests.exceptions.InvalidURL,
            requests.exceptions.MissingSchema,
            requests.exceptions.InvalidSchema,
            requests.exceptions.URLRequired,
            requests.exceptions.InvalidHeader,
            requests.exceptions.InvalidJSONError,
        ),
    ):
        return PermanentError(
            f"cannot send a request to {service} while {what} ({type(exc).__name__}: {cause}); "
            f"check the URL in the config"
        )
    if isinstance(exc, requests.TooManyRedirects):
        return PermanentError(f"{service} redirected too many times while {what}{took}; check the URL in the config")
    if isinstance(exc, requests.ConnectionError):
        return TransientError(f"cannot reach {service} while {what} ({cause}){took}; is it up and reachable?")
    if isinstance(exc, (requests.exceptions.ChunkedEncodingError, requests.exceptions.ContentDecodingError)):
        return TransientError(f"the answer of {service} broke off while {what} ({cause}){took}")
    return TransientError(f"a request to {service} failed while {what} ({type(exc).__name__}: {cause}){took}")


def request(
    session: requests.Session,
    method: str,
    url: str,
    *,
    service: str,
    what: str,
    timeout: float | tuple[float, float],
    **kw: Any,
) -> requests.Response:
    """``session.request(method, url, timeout=timeout, **kw)``, raising the classified error unless it
    answered 2xx."""
    started = time.monotonic()
    try:
        response = session.request(method, url, timeout=timeout, **kw)
    except requests.RequestException as exc:
        raise classify_exception(
            exc, service=service, what=what, timeout=timeout, elapsed=time.monotonic() - started
        ) from None
    error = classify_response(response, service=service, what=what)
    if error is not None:
        response.close()
        raise error
    return response


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` value, delta-seconds or an HTTP-date (relative to ``now``,
    a Unix time, default the clock); between 0 and :data:`MAX_RETRY_AFTER`; None if absent or unreadable."""
    if value is None:
        return None
    value = value.strip()
    if re.fullmatch(r"\d+", value):
        return float(min(int(value), int(MAX_RETRY_AFTER)))
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when is None:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    seconds = when.timestamp() - (time.time() if now is None else now)
    return min(max(seconds, 0.0), MAX_RETRY_AFTER)


def status_text(response: requests.Response) -> str:
    """``HTTP 503 Service Unavailable``."""
    reason = (response.reason or "").strip()
    return f"HTTP {response.status_code}" + (f" {reason}" if reason else "")


def elapsed(response: requests.Response) -> float:
    """Seconds from sending the request to reading the answer's headers."""
    value = getattr(response, "elapsed", None)
    return value.total_seconds() if value is not None else 0.0


def body_excerpt(response: requests.Response, limit: int = EXCERPT_CHARS) -> str:
    """At most ``limit`` characters saying what the body says: a JSON message field when there is one,
    else its text (tags stripped from HTML), whitespace collapsed; credential header values blanked."""
    try:
        raw = response.content or b""
    except (RuntimeError, requests.RequestException):  # streamed and consumed already, or broken off
        return ""
    text = raw[:65536].decode(response.encoding or "utf-8", errors="replace")
    detail = None
    if text.lstrip()[:1] in ("{", "["):
        try:
            detail = _json_detail(json.loads(text))
        except ValueError:
            pass
    if detail is None:
        if "html" in response.headers.get("Content-Type", "") or text.lstrip()[:1] == "<":
            text = re.sub(r"(?is)<(script|style)\b.*?</\1\s*>", " ", text)
            text = html.unescape(re.sub(r"<[^>]*>", " ", text))
        detail = text
    detail = redact_credentials(" ".join(detail.split()), response)
    return detail if len(detail) <= limit else detail[: limit - 1].rstrip() + "…"


def _said(response: requests.Response) -> str:
    excerpt = body_excerpt(response)
    return f'; the service said "{excerpt}"' if excerpt else ""


def _json_detail(data: Any, depth: int = 0) -> str | None:
    if depth > 4:
        return None
    if isinstance(data, str):
        return data.strip() or None
    if isinstance(data, dict):
        for key in _JSON_KEYS:
            if (found := _json_detail(data.get(key), depth + 1)) is not None:
                return found
        data = data.get("errors")
    if isinstance(data, list):  # {"errors": [{...}, ...]} (JSON:API, GraphQL, slurmrestd) or a bare list
        parts = [found for item in data[:3] if (found := _json_detail(item, depth + 1)) is not None]
        return "; ".join(parts) or None
    return None


def redact_credentials(text: str, response: requests.Response) -> str:
    """``text`` without any credential the request of ``response`` carried in a header (a server may echo
    them): for backends that quote more of an answer than :func:`body_excerpt` does."""
    request = getattr(response, "request", None)
    headers = getattr(request, "headers", None) or {}
    for name, value in headers.items():
        if not _SECRET_HEADER.search(str(name)) or not isinstance(value, (str, bytes)):
            continue
        value = value.decode("latin-1") if isinstance(value, bytes) else value
        for secret in sorted({value, *value.split()}, key=len, reverse=True):
            if len(secret) >= 6:
                text = text.replace(secret, _REDACTED)
    return text


def _server_time(response: requests.Response) -> float | None:
    """The server's clock from its ``Date`` header, so that an HTTP-date Retry-After ignores clock skew."""
    try:
        when = email.utils.parsedate_to_datetime(response.headers.get("Date", ""))
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when is None:
        return None
    return (when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp()


def _chain(exc: BaseException) -> list[BaseException]:
    """``exc`` and what it wraps: causes, contexts, urllib3's ``reason`` and exception arguments."""
    found: list[BaseException] = []
    todo = [exc]
    while todo and len(found) < 20:
        current = todo.pop(0)
        if any(current is seen for seen in found):
            continue
        found.append(current)
        wrapped = [getattr(current, "reason", None), current.__cause__, current.__context__, *current.args]
        todo += [w for w in wrapped if isinstance(w, BaseException)]
    return found


def _cause(exc: BaseException) -> str:
    """The innermost reason in a few words (``Connection refused``), never a URL or a path."""
    chain = _chain(exc)
    for inner in chain:
        if isinstance(inner, ssl.SSLCertVerificationError):
            return inner.verify_message or "certificate verify failed"
        if isinstance(inner, ssl.SSLError):
            return inner.reason or type(inner).__name__
        if isinstance(inner, OSError) and not isinstance(inner, (requests.RequestException, HTTPError)):
            if _plain(text := inner.strerror or str(inner)):
                return text
    for inner in reversed(chain):  # innermost first
        if isinstance(inner, (HTTPError, HTTPException)) and _plain(text := str(inner)):
            return text
    return type(exc).__name__


def _plain(text: str) -> bool:
    return bool(text) and len(text) <= 120 and "/" not in text and " at 0x" not in text and "Pool(" not in text


def _within(timeout: Any, index: int) -> str:
    if isinstance(timeout, (tuple, list)):
        timeout = timeout[index] if len(timeout) > index else None
    return f" within {_seconds(timeout)}" if isinstance(timeout, (int, float)) else ""


def _seconds(value: float | None) -> str:
    if value is None:
        return "?"
    return f"{value:.2f}s" if value < 10 else f"{value:.0f}s"
