"""The status page in a real browser (headless Chromium from Debian, driven by Playwright) against a real
``syncd run``: states appear live without a reload, filters work, a hostile name is only text, actions need
the token and a confirmation. Also renders a page with a job in every state and keeps its screenshot
(``SYNCD_UPDATE_SCREENSHOT=1`` writes it to docs/statuspage.png)."""

from __future__ import annotations

import base64
import json
import os
import shutil
import urllib.request
from pathlib import Path

import pytest

from syncd.service.daemon import load
from syncd.state.store import Store
from tests.support.browser import chromium  # noqa: F401  (one browser per session)
from tests.support.harness import SyncdProcess, drop_job, http_port, make_config, wait_for
from tests.support.statuspage import populate, serve

pytestmark = pytest.mark.e2e

TOKEN = "page-token-7f3a9c"
HOSTILE = '<img src=x onerror="window.pwned=1">'
DOCS = Path(__file__).resolve().parents[2] / "docs"


@pytest.fixture(scope="module")
def site_daemon(tmp_path_factory):
    root = tmp_path_factory.mktemp("statuspage")
    token = root / "page-token"
    token.write_text(TOKEN + "\n")
    token.chmod(0o600)
    http = {"listen": "127.0.0.1:0", "auth_file": str(token), "actions": True}
    process = SyncdProcess(make_config(root / "site", extra={"http": http})).start()
    yield process, f"http://127.0.0.1:{http_port(process)}"
    process.stop()


def job_state(base: str, name: str) -> str | None:
    request = urllib.request.Request(f"{base}/jobs", headers={"Authorization": f"Bearer {TOKEN}"})
    with urllib.request.urlopen(request, timeout=5) as response:
        jobs = [j for j in json.loads(response.read()) if j["name"] == name]
    return jobs[-1]["state"] if jobs else None


@pytest.fixture
def authorised(chromium):  # noqa: F811
    context = chromium.new_context(
        http_credentials={"username": "admin", "password": TOKEN}, viewport={"width": 1400, "height": 900}
    )
    yield context.new_page()
    context.close()


def row(page, name: str, state: str):
    return page.locator(f'table.jobs tr[data-state="{state}"]', has=page.get_by_text(name, exact=True))


def test_page_needs_the_token(site_daemon, chromium):  # noqa: F811
    _daemon, base = site_daemon
    context = chromium.new_context()
    try:
        page = context.new_page()
        with pytest.raises(Exception, match="ERR_INVALID_AUTH_CREDENTIALS"):
            page.goto(base + "/")  # Chromium gives up on the login prompt it cannot show headless
        assert page.request.get(base + "/").status == 401
        assert page.request.post(base + "/job/any/cancel", form={"confirm": "yes"}).status == 401
        wrong = base64.b64encode(b"admin:wrong").decode()
        assert page.request.get(base + "/", headers={"Authorization": f"Basic {wrong}"}).status == 401
        assert page.request.get(base + "/healthz").status == 200
    finally:
        context.close()


def test_states_appear_live_and_a_hostile_name_is_text(site_daemon, authorised):
    daemon, base = site_daemon
    page = authorised
    assert page.goto(base + "/").status == 200
    page.evaluate("window.keptSinceLoad = true")
    drop_job(daemon.inbox, "quick", {"command": "sleep 1.5"})
    for state in ("running", "succeeded"):
        wait_for(lambda s=state: job_state(base, "quick") == s, timeout=30, interval=0.05, what=f"quick {state}")
        # the daemon has it: the page shows it within a second, without a reload
        row(page, "quick", state).wait_for(timeout=1000)
    drop_job(daemon.inbox, HOSTILE, {"command": "true"})
    wait_for(lambda: job_state(base, HOSTILE) in ("succeeded", "rejected"), timeout=30, what="the hostile job")
    page.get_by_text(HOSTILE, exact=True).first.wait_for(timeout=2000)
    assert page.locator("main img").count() == 0
    assert page.evaluate("window.pwned") is None
    assert page.evaluate("window.keptSinceLoad") is True


def test_filters_narrow_the_list(site_daemon, authorised):
    daemon, base = site_daemon
    for name in ("filter-a", "filter-b"):
        drop_job(daemon.inbox, name, {"command": "true"})
    wait_for(lambda: job_state(base, "filter-b") == "succeeded", timeout=30, what="filter-b to succeed")
    page = authorised
    page.goto(base + "/")
    page.locator("select[name=state]").select_option("succeeded")
    page.wait_for_function(
        "() => { const rows = [...document.querySelectorAll('table.jobs tbody tr')];"
        " return rows.length > 0 && rows.every(r => r.dataset.state === 'succeeded'); }",
        timeout=3000,
    )
    page.locator("input[name=name]").fill("filter-b")
    page.wait_for_function("() => document.querySelectorAll('table.jobs tbody tr').length === 1", timeout=3000)
    assert row(page, "filter-b", "succeeded").count() == 1
    assert "name=filter-b" in page.url and "state=succeeded" in page.url
    page.reload()  # the filter is in the address: a reload or a shared link shows the same list
    assert page.locator("table.jobs tbody tr").count() == 1


def test_cancel_needs_a_confirmation(site_daemon, authorised):
    daemon, base = site_daemon
    drop_job(daemon.inbox, "long", {"command": "sleep 60"})
    wait_for(lambda: job_state(base, "long") == "running", timeout=30, what="long to run")
    page = authorised
    page.goto(base + "/?name=long")
    page.get_by_role("link", name="long", exact=True).click()
    page.get_by_role("button", name="cancel…").click()
    page.get_by_text("yes, cancel it").wait_for(timeout=2000)
    assert job_state(base, "long") == "running"  # nothing happens before the confirmation
    page.get_by_role("button", name="yes, cancel it").click()
    page.locator('section.job[data-state="cancelled"]').wait_for(timeout=15000)
    assert "cancel requested" in page.locator("table.timeline").inner_text()


def test_every_state_on_one_page_and_its_screenshot(chromium, tmp_path):  # noqa: F811
    config = load(make_config(tmp_path / "site"))
    store = Store(config.db_path, durable=False)
    ids = populate(store, config.inboxes[0].outbox)
    endpoint = serve(store, config)
    context = chromium.new_context(viewport={"width": 1400, "height": 900}, device_scale_factor=1)
    try:
        page = context.new_page()
        page.goto(f"http://127.0.0.1:{endpoint.address[1]}/?name=analysis-")
        for state in ids:
            assert page.locator(f'table.jobs tr[data-state="{state}"] .badge').count() == 1, state
        assert page.locator("svg.chart").count() == 3
        shot = tmp_path / "statuspage.png"
        page.screenshot(path=str(shot), full_page=True)
        assert shot.stat().st_size > 10_000
        if os.environ.get("SYNCD_UPDATE_SCREENSHOT") == "1":
            DOCS.mkdir(exist_ok=True)
            shutil.copyfile(shot, DOCS / "statuspage.png")
    finally:
        context.close()
        endpoint.stop()
        store.close()


def test_endpoint_stays_off_when_its_auth_file_cannot_be_read(tmp_path):
    http = {"listen": "127.0.0.1:0", "auth_file": str(tmp_path / "missing-token")}
    daemon = SyncdProcess(make_config(tmp_path / "site", extra={"http": http})).start()
    try:
        assert "cannot read http.auth_file" in daemon.log()
        assert "http endpoint on" not in daemon.log()  # fail closed: no page without its credentials
    finally:
        daemon.stop()
