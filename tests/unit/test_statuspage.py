"""The status page: rendering, escaping of hostile names, filters, auth, actions, charts and the live version."""

from __future__ import annotations

import base64
import json
import os
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from html.parser import HTMLParser

import pytest

from syncd.config import HttpConfig
from syncd.service.daemon import load
from syncd.service.web import model
from syncd.service.web.app import InboxView, PageSources, StatusPage, parse_request
from syncd.service.web.auth import AuthFileError, Credentials
from syncd.state.store import TERMINAL, Store
from tests.support.harness import make_config
from tests.support.statuspage import hostile_names, populate, serve


@pytest.fixture
def site(tmp_path):
    config = load(make_config(tmp_path / "site"))
    return config


@pytest.fixture
def store(tmp_path):
    """Without an fsync per write: the fixtures write dozens of jobs, and a power cut is not under test."""
    s = Store(tmp_path / "state" / "syncd.db", durable=False)
    yield s
    s.close()


@pytest.fixture
def filled(site, store):
    ids = populate(store, site.inboxes[0].outbox)
    return site, store, ids


def get(page: StatusPage, path: str, **headers: str):
    response = page.handle(parse_request("GET", path, {k.lower(): v for k, v in headers.items()}))
    assert response is not None, path
    return response


class _Text(HTMLParser):
    """The text and the tags a browser would see."""

    def __init__(self):
        super().__init__()
        self.text: list[str] = []
        self.tags: list[str] = []
        self.attrs: list[tuple[str, str | None]] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.attrs += attrs

    def handle_data(self, data):
        self.text.append(data)


def parsed(html: str) -> _Text:
    parser = _Text()
    parser.feed(html)
    return parser


def test_page_lists_jobs_newest_first_with_every_state(filled):
    config, store, ids = filled
    body = get(StatusPage(PageSources(store, lambda: config)), "/?name=analysis-").body.decode()
    listed = re.findall(r'<tr data-job="([^"]+)" data-state="([^"]+)"', body)
    assert [state for _, state in listed] == list(reversed(model.ORDER))
    assert {job_id for job_id, _ in listed} == set(ids.values())


@pytest.mark.parametrize("name", hostile_names())
def test_hostile_names_render_as_text(site, store, name):
    now = time.time()
    store.create_job(
        id="h1",
        name=name,
        dir_name=name,
        inbox="default",
        backend="local",
        storage="local",
        bucket="results",
        folder=name,
        remote_id=name,
        error=name,
        state="failed",
        spool_path="/s",
        created=now,
        updated=now,
    )
    page = StatusPage(PageSources(store, lambda: site))
    for path in ("/", "/job/h1", "/?name=" + urllib.parse.quote(name, errors="surrogateescape")):
        html = get(page, path).body.decode()
        seen = parsed(html)
        # no tag, attribute or script the name could have brought: only the page's own
        assert "img" not in seen.tags and seen.tags.count("script") == 1
        assert not any(attr.startswith("on") for attr, _ in seen.attrs)
        links = [value or "" for attr, value in seen.attrs if attr in ("href", "src", "action", "formaction")]
        assert all(link.startswith(("/", "?")) for link in links)
        # nothing invisible or reordering reaches the reader; the name is there, escaped into view
        assert not re.search("[\u202a-\u202e\u2066-\u2069\x00-\x08\x0b-\x1f\x7f-\x9f]", "".join(seen.text))
    assert "pwned-html" not in get(page, "/job/h1").body.decode().replace("&#x27;pwned-html&#x27;", "")


def test_filters_by_state_inbox_backend_and_name(filled):
    config, store, ids = filled
    page = StatusPage(PageSources(store, lambda: config))

    def listed(query: str) -> set[str]:
        return set(re.findall(r'<tr data-job="([^"]+)"', get(page, "/?" + query).body.decode()))

    assert listed("state=held") == {ids["held"]}
    assert listed("state=running&name=analysis") == {ids["running"]}
    assert listed("name=analysis-timed") == {ids["timed_out"]}
    assert listed("backend=nope") == set()
    assert listed("inbox=default&name=analysis-") == set(ids.values())
    active = listed("state=active&name=analysis-")
    assert ids["running"] in active and ids["succeeded"] not in active
    assert listed("name=%25") == set()  # a wildcard in the search is a literal character


def test_job_page_shows_timeline_reason_logs_and_results_folder(filled):
    config, store, ids = filled
    job_id = ids["held"]
    store.transition(job_id, "held", "running", "retry requested by the admin")
    store.transition(job_id, "running", "held", "credentials refused again", error="token expired")
    page = StatusPage(PageSources(store, lambda: config))
    html = get(page, f"/job/{job_id}").body.decode()
    assert "token expired" in html and "4100" not in html or "remote id" in html
    states = re.findall(r'<tr class="change"><td>[^<]*</td><td><span class="badge st-([a-z_]+)"', html)
    assert states == ["held", "running", "held"]
    folder = config.inboxes[0].outbox / "results" / "analysis-held"
    assert str(folder) in html
    assert f'href="/job/{job_id}/stdout"' in html
    response = get(page, f"/job/{job_id}/stdout")
    assert response.body == b"output of held\n"
    assert response.content_type.startswith("text/plain") and "sandbox" in response.headers["Content-Security-Policy"]
    assert get(page, "/job/nope").code == 404


def test_timeline_durations_run_until_the_next_change():
    from syncd.state.store import Event

    events = [
        Event(1, "j", 100.0, None, "claimed", "found"),
        Event(2, "j", 110.0, None, None, "a note"),
        Event(3, "j", 130.0, "claimed", "running", "started"),
        Event(4, "j", 190.0, "running", "succeeded", "done"),
    ]
    steps = model.timeline(events, now=500.0)
    assert [s.seconds for s in steps] == [30.0, None, 60.0, None]
    assert model.timeline(events[:3], now=500.0)[-1].seconds == 370.0  # still running: until now


def test_version_changes_with_every_transition(filled):
    _config, store, ids = filled
    before = model.version(store)
    assert model.version(store) == before
    store.transition(ids["queued"], "queued", "running", "started")
    assert model.version(store) != before


def test_charts_count_outcomes_and_durations(filled):
    config, store, _ids = filled
    data = model.chart_data(store, "day")
    ended = sum(sum(bar.values()) for bar in data.outcomes)
    marks = ", ".join("?" for _ in TERMINAL)
    expected = store.reader().execute(
        f"SELECT COUNT(*) FROM jobs WHERE state IN ({marks}) AND COALESCE(ended_at, updated) >= ?",
        (*TERMINAL, data.start),
    )
    assert ended == expected.fetchone()[0] > 0
    assert sum(data.runs) > 0 and sum(data.waits) > 0
    html = get(StatusPage(PageSources(store, lambda: config)), "/?range=week").body.decode()
    assert html.count("<svg") == 3 and "jobs ended per 6 hours" in html


def test_health_shows_paused_backend_open_circuit_and_disk(filled):
    config, store, _ids = filled
    store.pause_backend("local", time.time() + 60, "token <refused>")
    store.circuit_opened("storage local", time.time(), time.time() + 30, "connection refused")
    html = get(StatusPage(PageSources(store, lambda: config)), "/").body.decode()
    assert 'data-kind="backend" data-name="local"><div class="kind">backend</div>' in html
    assert "paused until" in html and "token &lt;refused&gt;" in html
    assert "not answering; next probe" in html and "connection refused" in html
    assert "free of" in html and "writable" in html
    assert 'data-kind="storage" data-name="local"' in html and "file: answering, 1 waiting" not in html


def test_credentials_token_and_basic(tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text("s3cret-token\n")
    token = Credentials.load(token_file)
    basic = lambda user, pw: "Basic " + base64.b64encode(f"{user}:{pw}".encode()).decode()  # noqa: E731
    assert token.allows("Bearer s3cret-token") and token.allows(basic("anyone", "s3cret-token"))
    assert not token.allows("Bearer wrong") and not token.allows(None) and not token.allows("Basic !!!")
    pair_file = tmp_path / "pair"
    pair_file.write_text("admin:pa:ss\n")
    pair = Credentials.load(pair_file)
    assert pair.allows(basic("admin", "pa:ss")) and not pair.allows(basic("root", "pa:ss"))
    assert not pair.allows("Bearer pa:ss")
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(AuthFileError, match="exactly one line"):
        Credentials.load(tmp_path / "empty")
    with pytest.raises(AuthFileError, match="cannot read"):
        Credentials.load(tmp_path / "missing")


def test_config_requires_auth_when_exposed_or_acting(tmp_path):
    with pytest.raises(ValueError, match="reachable from other machines"):
        HttpConfig(listen="0.0.0.0:9847")
    with pytest.raises(ValueError, match="actions: true needs auth_file"):
        HttpConfig(actions=True)
    assert HttpConfig(listen="0.0.0.0:9847", auth_file=tmp_path / "t").auth_file is not None
    assert HttpConfig(listen="localhost:1").actions is False


def _fetch(port: int, path: str, data: bytes | None = None, headers: dict | None = None):
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data, headers=headers or {})

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args, **kwargs):
            return None

    try:
        with urllib.request.build_opener(NoRedirect).open(request, timeout=5) as response:
            return response.status, response.read().decode(), dict(response.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(), dict(exc.headers)


def test_endpoint_asks_for_credentials_except_on_probes(filled, tmp_path):
    config, store, _ids = filled
    (tmp_path / "token").write_text("Zq7-secret\n")
    endpoint = serve(store, config, credentials=Credentials.load(tmp_path / "token"))
    try:
        port = endpoint.address[1]
        for path in ("/", "/jobs", "/metrics", "/api/version", "/job/demo00", "/static/page.js"):
            code, body, headers = _fetch(port, path)
            assert code == 401 and "Basic" in headers["WWW-Authenticate"] and "Zq7" not in body, path
        assert _fetch(port, "/healthz")[0] == 200
        code, body, headers = _fetch(port, "/", headers={"Authorization": "Bearer Zq7-secret"})
        assert code == 200 and "analysis-running" in body and "Zq7" not in body
        assert "frame-ancestors 'none'" in headers["Content-Security-Policy"]
    finally:
        endpoint.stop()


def test_actions_are_off_by_default_and_need_confirmation(filled, tmp_path):
    config, store, ids = filled
    (tmp_path / "token").write_text("Zq7-secret\n")
    credentials = Credentials.load(tmp_path / "token")
    auth = {"Authorization": "Bearer Zq7-secret"}
    running = ids["running"]

    off = serve(store, config, credentials=credentials)
    try:
        assert "cancel…" not in _fetch(off.address[1], f"/job/{running}", headers=auth)[1]
        assert _fetch(off.address[1], f"/job/{running}/cancel", b"confirm=yes", auth)[0] == 403
    finally:
        off.stop()

    on = serve(store, config, credentials=credentials, actions=True)
    try:
        port = on.address[1]
        html = _fetch(port, f"/job/{running}", headers=auth)[1]
        csrf = re.search(r'name="csrf" value="([^"]+)"', html).group(1)
        assert _fetch(port, f"/job/{running}/cancel", f"csrf={csrf}&confirm=yes".encode())[0] == 401
        assert _fetch(port, f"/job/{running}/cancel", b"confirm=yes", auth)[0] == 403  # no form token
        foreign = {**auth, "Origin": "http://evil.example"}
        assert _fetch(port, f"/job/{running}/cancel", f"csrf={csrf}&confirm=yes".encode(), foreign)[0] == 403
        code, body, _ = _fetch(port, f"/job/{running}/cancel", f"csrf={csrf}".encode(), auth)
        assert code == 200 and "yes, cancel it" in body
        assert store.get(running).cancel_requested == 0
        code, _body, headers = _fetch(port, f"/job/{running}/cancel", f"csrf={csrf}&confirm=yes".encode(), auth)
        assert code == 303 and headers["Location"] == f"/job/{running}"
        assert store.get(running).cancel_requested == 1
        assert _fetch(port, f"/job/{ids['succeeded']}/cancel", f"csrf={csrf}&confirm=yes".encode(), auth)[0] == 409
    finally:
        on.stop()


def test_deliveries_show_files_and_bytes_and_move_the_version(filled):
    config, store, ids = filled
    transfers: dict[str, tuple[int, int, int, int]] = {}
    page = StatusPage(PageSources(store, lambda: config, transfers=lambda: dict(transfers)))
    before = page.version()
    transfers[ids["collecting"]] = (1, 3, 500, 1500)
    assert page.version() != before
    row = re.search(rf'<tr data-job="{ids["collecting"]}".*?</tr>', get(page, "/").body.decode()).group()
    assert "delivering: 1 of 3 file(s), 500 B of 1.5 KB" in row
    transfers[ids["collecting"]] = (2, 3, 1000, 1500)
    assert "2 of 3 file(s), 1.0 KB of 1.5 KB" in get(page, f"/job/{ids['collecting']}").body.decode()
    folder = config.inboxes[0].outbox / "results" / "analysis-succeeded"
    record = {"outputs": [{"path": "a.txt", "size": 1200}, {"path": "b.txt", "size": 34}]}
    (folder / "syncd-result.json").write_text(json.dumps(record))
    assert "2 file(s), 1.2 KB" in get(page, f"/job/{ids['succeeded']}").body.decode()


def test_live_address_stays_on_this_site(filled):
    config, store, _ids = filled
    page = StatusPage(PageSources(store, lambda: config))
    assert page.handle(parse_request("GET", "//evil.example/", {})) is None
    html = get(page, "//?state=held").body.decode()
    assert 'data-url="/?state=held"' in html
    assert get(page, "/job/%2F%2Fevil.example").code == 404


def test_polling_does_not_open_a_database_connection_per_request(filled):
    config, store, _ids = filled
    endpoint = serve(store, config)
    try:
        port = endpoint.address[1]
        _fetch(port, "/api/version")
        before = len(os.listdir("/proc/self/fd"))
        for _ in range(60):  # half a minute of one open page
            assert _fetch(port, "/api/version")[0] == 200
        assert len(os.listdir("/proc/self/fd")) - before < 20
    finally:
        endpoint.stop()


def test_health_shows_a_paused_inbox_and_a_stalled_loop(filled):
    config, store, _ids = filled
    views = [InboxView("default", "polling", True, 0)]
    page = StatusPage(PageSources(store, lambda: config, inboxes=lambda: views, alive=lambda: False))
    html = get(page, "/").body.decode()
    assert 'class="card lvl-bad" data-kind="inbox" data-name="default"' in html
    assert "paused: folder not reachable" in html and "stalled" in html
    views[0] = InboxView("default", "polling", False, 3)
    assert "polling observer, 3 pending" in get(page, "/").body.decode()
