"""The one HTTP classifier of REST backends, against a real HTTP server on loopback."""

from __future__ import annotations

import email.utils
import json
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests

from syncd.backends import http
from syncd.errors import AuthError, NotFoundError, PermanentError, TransientError

SERVICE = "Example at http://127.0.0.1"


class Answer:
    def __init__(
        self,
        status: int,
        body: bytes | str = b"",
        headers: dict[str, str] | None = None,
        delay: float = 0.0,
        broken: bool = False,
        echo_auth: bool = False,
    ):
        self.status, self.delay, self.broken, self.echo_auth = status, delay, broken, echo_auth
        self.body = body.encode() if isinstance(body, str) else body
        self.headers = headers or {}


class Server:
    """Answers each path as told in ``answers``; an unknown path is 200 with ``{}``."""

    def __init__(self) -> None:
        self.answers: dict[str, Answer] = {}
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_GET(self):
                answer = server.answers.get(self.path.split("?")[0], Answer(200, b"{}"))
                time.sleep(answer.delay)
                body = answer.body
                if answer.echo_auth:
                    body = json.dumps({"message": f"bad header {self.headers.get('Authorization')}"}).encode()
                if "Date" in answer.headers:  # this server's clock, not the handler's
                    self.send_response_only(answer.status)
                else:
                    self.send_response(answer.status)
                for name, value in answer.headers.items():
                    self.send_header(name, value)
                if answer.broken:  # promise chunks, send half of one, hang up
                    self.send_header("Transfer-Encoding", "chunked")
                    self.end_headers()
                    self.wfile.write(b"100\r\nonly a little")
                    self.wfile.flush()
                    self.connection.shutdown(socket.SHUT_RDWR)
                    self.close_connection = True
                    return
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_POST = do_DELETE = do_GET

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.02,), daemon=True)

    def answer(self, path: str, *args, **kw) -> str:
        self.answers[path] = Answer(*args, **kw)
        return self.url + path


@pytest.fixture
def server() -> Iterator[Server]:
    srv = Server()
    srv.thread.start()
    yield srv
    srv.httpd.shutdown()
    srv.httpd.server_close()


@pytest.fixture
def session() -> Iterator[requests.Session]:
    with requests.Session() as s:
        yield s


def get(session, url, what="reading job 7", timeout=5.0, **kw):
    return http.request(session, "GET", url, service=SERVICE, what=what, timeout=timeout, **kw)


def classified(session, url, **kw):
    with pytest.raises((TransientError, PermanentError)) as caught:
        get(session, url, **kw)
    return caught.value


@pytest.mark.parametrize("status", [200, 201, 202, 204])
def test_a_2xx_answer_is_no_error_and_request_returns_the_response(server, session, status):
    url = server.answer("/ok", status, b"" if status == 204 else b'{"id": 7}')
    response = session.get(url)
    assert http.classify_response(response, service=SERVICE, what="x") is None
    assert get(session, url).status_code == status


@pytest.mark.parametrize(
    "status, kind",
    [
        (401, AuthError),
        (403, AuthError),
        (404, NotFoundError),
        (410, NotFoundError),
        (408, TransientError),
        (425, TransientError),
        (429, TransientError),
        (500, TransientError),
        (502, TransientError),
        (503, TransientError),
        (504, TransientError),
        (507, TransientError),
        (400, PermanentError),
        (405, PermanentError),
        (409, PermanentError),
        (413, PermanentError),
        (422, PermanentError),
        (501, PermanentError),
        (505, PermanentError),
    ],
)
def test_each_status_is_classified(server, session, status, kind):
    error = classified(session, server.answer("/s", status, "nope"))
    assert type(error) is kind
    assert isinstance(error, PermanentError) != isinstance(error, TransientError)
    text = str(error)
    assert text.startswith(SERVICE) and " while reading job 7 (" in text and f"HTTP {status}" in text
    assert text.endswith('"nope"') or '"nope";' in text


def test_auth_and_not_found_are_permanent_errors_of_their_own_kind():
    assert issubclass(NotFoundError, PermanentError) and not issubclass(NotFoundError, AuthError)


def test_a_message_names_service_action_status_reason_elapsed_and_the_json_message(server, session):
    body = {"message": "no job 7 here", "trace": "x" * 5000}
    error = classified(
        session, server.answer("/gone", 404, json.dumps(body), {"Content-Type": "application/json"}, delay=0.3)
    )
    assert isinstance(error, NotFoundError)
    text = str(error)
    assert text.startswith(
        "Example at http://127.0.0.1 does not know what was asked for while reading job 7 (HTTP 404 Not Found after 0."
    )
    assert float(text.split(" after ")[1].split("s)")[0]) >= 0.3, "the elapsed time of the request"
    assert text.endswith('the service said "no job 7 here"') and "xxx" not in text


@pytest.mark.parametrize(
    "body, expected",
    [
        ({"detail": "quota exceeded"}, "quota exceeded"),
        ({"error": "invalid_request", "code": 12}, "invalid_request"),
        ({"error": {"message": "nested reason"}}, "nested reason"),
        ({"errors": [{"description": "first"}, {"title": "second"}]}, "first; second"),
        ({"message": "", "detail": "empty message skipped"}, "empty message skipped"),
    ],
)
def test_the_excerpt_prefers_a_json_message_field(server, session, body, expected):
    error = classified(session, server.answer("/bad", 400, json.dumps(body)))
    assert str(error).endswith(f'the service said "{expected}"')


def test_the_excerpt_is_short_and_html_is_reduced_to_its_text(server, session):
    long = classified(session, server.answer("/long", 400, "word " * 1000))
    excerpt = str(long).split('the service said "')[1].rstrip('"')
    assert len(excerpt) <= http.EXCERPT_CHARS and excerpt.endswith("…")
    page = (
        "<html><head><title>502 Bad Gateway</title><style>h1{x:y}</style></head><body><h1>Bad&nbsp;Gateway</h1>"
        "</body></html>"
    )
    error = classified(session, server.answer("/html", 502, page, {"Content-Type": "text/html"}))
    assert str(error).endswith('the service said "502 Bad Gateway Bad Gateway"'), str(error)


def test_an_empty_body_says_nothing_more(server, session):
    error = classified(session, server.answer("/empty", 403))
    assert "said" not in str(error) and "refused the credentials" in str(error)


def test_retry_after_in_seconds(server, session):
    error = classified(session, server.answer("/busy", 503, "busy", {"Retry-After": "7"}))
    assert isinstance(error, TransientError) and error.retry_after == 7.0
    assert "retry in 7.00s" in str(error)


def test_retry_after_as_an_http_date_counts_from_the_servers_clock(server, session):
    server_now = time.time() - 1000  # a server whose clock is far behind ours
    headers = {
        "Date": email.utils.formatdate(server_now, usegmt=True),
        "Retry-After": email.utils.formatdate(server_now + 120, usegmt=True),
    }
    error = classified(session, server.answer("/slowdown", 429, "", headers))
    assert isinstance(error, TransientError) and error.retry_after == pytest.approx(120, abs=1)


def test_retry_after_is_capped_and_bad_values_are_ignored(server, session):
    huge = classified(session, server.answer("/huge", 503, "", {"Retry-After": "99999999999999999999999"}))
    assert huge.retry_after == http.MAX_RETRY_AFTER
    later = email.utils.formatdate(time.time() + 10 * 86400, usegmt=True)
    assert classified(session, server.answer("/far", 503, "", {"Retry-After": later})).retry_after == 3600
    assert classified(session, server.answer("/junk", 503, "", {"Retry-After": "soon"})).retry_after is None
    assert classified(session, server.answer("/none", 502)).retry_after is None


@pytest.mark.parametrize(
    "value, expected",
    [
        ("0", 0.0),
        (" 42 ", 42.0),
        ("-5", None),
        ("1.5", None),
        ("", None),
        (None, None),
        ("Wed, 21 Oct 2015 07:28:00 GMT", 60.0),
        ("Wed, 21 Oct 2015 07:26:00 GMT", 0.0),
    ],
)
def test_parse_retry_after(value, expected):
    now = email.utils.parsedate_to_datetime("Wed, 21 Oct 2015 07:27:00 GMT").timestamp()
    assert http.parse_retry_after(value, now=now) == expected


def test_connection_refused_is_transient_and_quotes_no_url(session):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    error = classified(session, f"http://127.0.0.1:{port}/jobs?api_key=SECRET123")
    assert isinstance(error, TransientError)
    assert "SECRET123" not in str(error)
    assert str(error).startswith(f"cannot reach {SERVICE} while reading job 7 (Connection refused) after ")


def test_a_timeout_is_transient_and_names_the_limit(server, session):
    url = server.answer("/slow", 200, "{}", delay=2)
    started = time.monotonic()
    error = classified(session, url, timeout=(5, 0.3))
    assert time.monotonic() - started < 1.5
    assert isinstance(
        error, TransientError
    ) and f"{SERVICE} did not answer within 0.30s while reading job 7 after 0.3" in str(error)


def test_a_body_that_breaks_off_is_transient(server, session):
    url = server.answer("/broken", 200, broken=True)
    error = classified(session, url)
    assert isinstance(error, TransientError) and "broke off while reading job 7" in str(error)


def test_a_connect_timeout_and_other_failures_without_a_server():
    def classify(exc):
        return http.classify_exception(exc, service=SERVICE, what="pinging", timeout=(1.5, 60))

    assert isinstance(timeout := classify(requests.ConnectTimeout()), TransientError)
    assert "no connection within 1.50s" in str(timeout)
    assert isinstance(classify(requests.exceptions.ChunkedEncodingError()), TransientError)
    assert isinstance(classify(requests.exceptions.MissingSchema("no scheme")), PermanentError)
    assert isinstance(classify(requests.TooManyRedirects()), PermanentError)


def test_a_bad_url_is_permanent(session):
    error = classified(session, "htp:/nowhere")
    assert type(error) is PermanentError and "check the URL" in str(error)


def test_a_credential_echoed_by_the_server_is_blanked(server, session):
    url = server.answer("/echo", 401, echo_auth=True)
    error = classified(session, url, headers={"Authorization": "Bearer tok-1234567890"})
    assert "tok-1234567890" not in str(error) and "**********" in str(error)


def test_other_methods_and_arguments_pass_through(server, session):
    server.answer("/submit", 201, b'{"id": "j1"}')
    response = http.request(
        session, "POST", server.url + "/submit", service=SERVICE, what="submitting", timeout=5, json={"a": 1}
    )
    assert response.json() == {"id": "j1"}
