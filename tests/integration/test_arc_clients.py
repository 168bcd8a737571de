"""ARC's own clients see the jobs syncd submitted, in the states syncd sees: ``arcstat`` (the C++ client from
Debian's nordugrid-arc-client) and ``pyarcrest`` (the NorduGrid developers' Python REST client, from PyPI). The
credential is an X.509 proxy made by ``arcproxy``, which the backend takes too (``proxy``)."""

from __future__ import annotations

import os
import re
import subprocess

import pytest
from pyarcrest.arc import ARCRest

from syncd.backends.arc import ArcBackend, ArcOptions
from syncd.backends.base import RemoteState
from tests.conformance.harness import Harness

pytestmark = pytest.mark.arc


def test_arcstat_and_pyarcrest_see_syncds_jobs_in_the_same_states(arc_site, tmp_path):
    proxy = tmp_path / "proxy.pem"
    subprocess.run(
        ["arcproxy", "-C", str(arc_site.cert), "-K", str(arc_site.key), "-P", str(proxy), "-T", str(arc_site.ca_dir)],
        check=True,
        capture_output=True,
        timeout=60,
    )
    options = ArcOptions.model_validate(
        {"type": "arc", "url": arc_site.url, "proxy": str(proxy), "capath": str(arc_site.ca_dir)}
    )
    backend = ArcBackend("arc", options, tmp_path / "work")
    harness = Harness(backend=backend, new_backend=lambda: backend, scratch=tmp_path, poll_interval=0.5, timeout=90)
    refs = [harness.run(harness.spec("true")), harness.run(harness.spec("exit 3"))]
    stopped = harness.run(harness.spec("sleep 60"))
    harness.wait(stopped, until=lambda s: s.state is RemoteState.RUNNING)
    backend.cancel(stopped)
    refs.append(stopped)
    seen = {ref.remote_id: harness.wait(ref) for ref in refs}
    assert [seen[r.remote_id].state for r in refs] == [
        RemoteState.SUCCEEDED,
        RemoteState.FAILED,
        RemoteState.CANCELLED,
    ]
    native = {job_id: status.native for job_id, status in seen.items()}

    client = ARCRest.getClient(url=arc_site.url, proxypath=str(proxy))
    ids = [r.remote_id for r in refs]
    assert set(ids) <= set(client.getJobsList())
    assert dict(zip(ids, (r.value for r in client.getJobsStatus(ids)), strict=True)) == native
    infos = [r.value for r in client.getJobsInfo(ids)]
    assert [i["Name"] for i in infos] == [spec.submit_key for spec in harness.specs]
    assert [i.get("ExitCode") for i in infos[:2]] == [0, 3]

    env = {**os.environ, "X509_USER_PROXY": str(proxy), "X509_CERT_DIR": str(arc_site.ca_dir), "HOME": str(tmp_path)}
    jobs = tmp_path / "jobs.dat"
    run = lambda *argv: subprocess.run(argv, capture_output=True, text=True, env=env, timeout=60, check=True)  # noqa: E731
    run("arcsync", "-C", arc_site.url, "-T", "arcrest", "-j", str(jobs), "-f")
    listed = run("arcstat", "-j", str(jobs), "-a", "-l").stdout
    specific = dict(re.findall(r"^Job: \S+/jobs/(\S+)$.*?^ Specific state: (\S+)$", listed, re.MULTILINE | re.DOTALL))
    assert {job_id: specific.get(job_id) for job_id in ids} == native, listed
