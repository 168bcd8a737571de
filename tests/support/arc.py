"""A real ARC-CE (A-REX from Debian's packages) for the session, started and stopped by scripts/arc-site."""

from __future__ import annotations

import base64
import datetime
import os
import secrets
import shutil
import ssl
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.support.http_faults import FaultProxy

SCRIPT = Path(__file__).parents[2] / "scripts" / "arc-site"
#: RFC 3820's ProxyCertInfo extension, and its value for a proxy that inherits all of the user's rights
PROXY_CERT_INFO = x509.ObjectIdentifier("1.3.6.1.5.5.7.1.14")
INHERIT_ALL_POLICY = bytes.fromhex("300c300a06082b06010505071501")


def _cn(value: str) -> x509.NameAttribute:
    return x509.NameAttribute(x509.NameOID.COMMON_NAME, value)


def _requested_key(pem: bytes):
    """The public key of a PEM certificate request. A-REX 6.17 writes version 2 into its requests, which
    ``cryptography`` refuses to load as a request, so the key is read from the DER structure itself."""
    der = base64.b64decode(b"".join(line for line in pem.splitlines() if line and not line.startswith(b"-----")))

    def element(at: int) -> tuple[int, int]:  # (start of content, end) of the DER element at ``at``
        length, start = der[at + 1], at + 2
        if length & 0x80:
            size = length & 0x7F
            length, start = int.from_bytes(der[start : start + size], "big"), start + size
        return start, start + length

    request, _ = element(0)
    info, _ = element(request)
    _, version_end = element(info)
    _, subject_end = element(version_end)
    _, key_end = element(subject_end)
    return serialization.load_der_public_key(der[subject_end:key_end])


@dataclass
class ArcSite:
    dir: Path
    url: str
    cert: Path
    key: Path
    ca_dir: Path
    ca_file: Path
    queue: str
    job_user: str

    def backend_section(self, **overrides) -> dict:
        section = {
            "type": "arc",
            "url": self.url,
            "certificate": str(self.cert),
            "key": str(self.key),
            "capath": str(self.ca_dir),
            "request_timeout": "20s",
        }
        section.update(overrides)
        return section

    def delegate(self) -> str:
        """A delegation of the user's credential to the CE (what server-side data staging needs), made the REST
        1.0 way: the CE hands a certificate request, the user signs a proxy certificate (RFC 3820) for its key."""
        call = {"cert": (str(self.cert), str(self.key)), "verify": str(self.ca_file), "timeout": 20}
        asked = requests.post(f"{self.url}/rest/1.0/delegations?action=new", **call)
        assert asked.status_code == 201, asked.text
        # A-REX 6.17 writes the location as ".../delegations?action=new/<id>"
        delegation = asked.headers["Location"].rstrip("/").rsplit("/", 1)[1]
        user = x509.load_pem_x509_certificate(self.cert.read_bytes())
        key = serialization.load_pem_private_key(self.key.read_bytes(), None)
        assert isinstance(key, rsa.RSAPrivateKey)
        serial = secrets.randbits(31)
        now = datetime.datetime.now(datetime.UTC)
        proxy = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([*user.subject.rdns, x509.RelativeDistinguishedName([_cn(str(serial))])]))
            .issuer_name(user.subject)
            .public_key(_requested_key(asked.content))
            .serial_number(serial)
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(x509.UnrecognizedExtension(PROXY_CERT_INFO, INHERIT_ALL_POLICY), critical=True)
            .sign(key, hashes.SHA256())
        )
        chain = proxy.public_bytes(serialization.Encoding.PEM) + user.public_bytes(serialization.Encoding.PEM)
        put = requests.put(
            f"{self.url}/rest/1.0/delegations/{delegation}",
            data=chain,
            headers={"Content-Type": "application/x-pem-file"},
            **call,
        )
        assert put.status_code == 200, put.text
        return delegation

    def web_service(self, action: str) -> None:
        """``stop`` or ``start`` A-REX's web service alone (the job manager runs on): an outage as clients see it."""
        subprocess.run([str(SCRIPT), f"ws-{action}", str(self.dir)], check=True, timeout=120)

    def scratch(self, name: str) -> Path:
        """A folder the jobs (run as the site's mapped user) can write to, unlike pytest's 0700 folders."""
        path = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=self.dir / "scratch"))
        path.chmod(0o777)
        return path


class TlsFaultProxy(FaultProxy):
    """The fault proxy in front of A-REX: HTTPS with the site's host certificate towards the backend, and HTTPS
    with the user's certificate towards A-REX (which authenticates every TLS connection by its client certificate)."""

    def __init__(self, site: ArcSite):
        server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        server.load_cert_chain(site.dir / "hostcert.pem", site.dir / "hostkey.pem")
        upstream = ssl.create_default_context(capath=str(site.ca_dir))
        upstream.load_cert_chain(site.cert, site.key)
        super().__init__(site.url, server_ssl=server, upstream_ssl=upstream)
        self.url = f"https://localhost:{self.server.server_address[1]}/arex"


def start_site(lrms: str = "fork", **env: str):
    """Start a site in a new folder (a generator: yields the ArcSite, stops it when closed)."""
    if os.geteuid() != 0:
        pytest.skip("an ARC-CE needs root (to install Debian's nordugrid-arc-arex and run A-REX)")
    directory = Path(tempfile.mkdtemp(prefix="syncd-arc-"))
    os.chmod(directory, 0o755)
    started = subprocess.run(
        [str(SCRIPT), "up", str(directory)],
        capture_output=True,
        text=True,
        env={**os.environ, "ARC_LRMS": lrms, **env},
        timeout=900,
    )
    try:
        assert started.returncode == 0, f"arc-site up failed:\n{started.stdout}\n{started.stderr}"
        values = dict(line.split("=", 1) for line in (directory / "env").read_text().splitlines() if "=" in line)
        (directory / "scratch").mkdir(mode=0o755)
        yield ArcSite(
            dir=directory,
            url=values["ARC_URL"],
            cert=Path(values["ARC_CERT"]),
            key=Path(values["ARC_KEY"]),
            ca_dir=Path(values["ARC_CA_DIR"]),
            ca_file=Path(values["ARC_CA_FILE"]),
            queue=values["ARC_QUEUE"],
            job_user=values["ARC_JOB_USER"],
        )
    finally:
        subprocess.run([str(SCRIPT), "down", str(directory)], timeout=120, env={**os.environ, "ARC_LRMS": lrms})
        shutil.rmtree(directory, ignore_errors=True)


#: per session: how many collected tests still need each site, and how to stop a site that is up
REMAINING = pytest.StashKey[dict[str, int]]()
STOPS = pytest.StashKey[dict[str, Callable[[], None]]]()
SITES = ("arc_site", "arc_slurm_site")


@pytest.hookimpl(trylast=True)  # after -k/-m deselection
def pytest_collection_modifyitems(config, items):
    config.stash[REMAINING] = {name: sum(name in getattr(i, "fixturenames", ()) for i in items) for name in SITES}
    config.stash[STOPS] = {}


@pytest.hookimpl(trylast=True)
def pytest_runtest_teardown(item, nextitem):
    """Stop a site once the last test that needs it is done: an idle A-REX costs CPU the rest of the suite needs."""
    remaining = item.config.stash.get(REMAINING, {})
    for name in SITES:
        if name in getattr(item, "fixturenames", ()) and name in remaining:
            remaining[name] -= 1
            if remaining[name] <= 0 and (stop := item.config.stash.get(STOPS, {}).pop(name, None)) is not None:
                stop()


def _site_fixture(request, name: str, lrms: str, **env: str):
    sites = start_site(lrms, **env)
    site = next(sites)
    request.config.stash.setdefault(STOPS, {})[name] = sites.close
    try:
        yield site
    finally:
        sites.close()


@pytest.fixture(scope="session")
def arc_site(request):
    """Installs (if needed) and starts A-REX with the fork LRMS on loopback; stops it after the last test using it."""
    yield from _site_fixture(request, "arc_site", "fork")


@pytest.fixture(scope="session")
def arc_slurm_site(request, slurm_cluster):
    """A second A-REX whose LRMS is the session's Slurm cluster (the shape of a grid CE in front of a batch farm)."""
    # sbatch runs as the CE's mapped user: it must reach the cluster's munge socket, in a folder only munge may enter.
    for line in slurm_cluster.conf.read_text().splitlines():
        if line.startswith("AuthInfo=socket="):
            Path(line.split("=", 2)[2]).parent.chmod(0o711)
    yield from _site_fixture(request, "arc_slurm_site", "slurm", SLURM_CONF=str(slurm_cluster.conf))
