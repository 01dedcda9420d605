"""realtime-py over wss:// against a roster with --tls-cert / --tls-key.

The test CA is made with the openssl CLI; realtime-py (websockets) builds
its TLS context with ssl.create_default_context(), which reads
SSL_CERT_FILE, so the test points that at the CA for its own duration.
"""

from __future__ import annotations

import asyncio
import shutil
import ssl
import subprocess
import tempfile
from pathlib import Path

import pytest
from realtime import AsyncRealtimeClient

from conftest import PUBLISHABLE_KEY, RosterServer, join_room, wait_for


def _make_certs(dir: Path, name: str = "localhost") -> None:
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=dir, check=True, capture_output=True)

    openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
            "-subj", "/CN=Roster Python test CA",
            "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign")
    openssl("req", *ec, "-keyout", "key.pem", "-out", "server.csr", "-subj", f"/CN={name}")
    (dir / "ext.cnf").write_text(
        f"subjectAltName=DNS:{name}\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n"
    )
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-out", "cert.pem", "-days", "2", "-extfile", "ext.cnf")


@pytest.fixture(scope="module")
def tls_roster():
    if shutil.which("openssl") is None:
        pytest.skip("the openssl CLI is needed to make test certificates")
    dir = Path(tempfile.mkdtemp(prefix="roster-tls-"))
    _make_certs(dir)
    # One node even in the cluster run: TLS is per listener.
    server = RosterServer(args=["--tls-cert", str(dir / "cert.pem"), "--tls-key", str(dir / "key.pem")])
    assert server.url.startswith("https://")
    yield server, dir / "ca.pem"
    server.stop()
    shutil.rmtree(dir, ignore_errors=True)


async def test_presence_over_wss(tls_roster, monkeypatch, room):
    server, ca_file = tls_roster
    monkeypatch.setenv("SSL_CERT_FILE", str(ca_file))
    url = f"https://localhost:{server.port}/realtime/v1"
    clients = [AsyncRealtimeClient(url, PUBLISHABLE_KEY) for _ in range(2)]
    try:
        for c in clients:
            await asyncio.wait_for(c.connect(), 10)
        ra = await join_room(clients[0], room, key="alice")
        await ra.channel.track({"user": "alice"})
        rb = await join_room(clients[1], room, key="bob")
        await rb.channel.track({"user": "bob"})
        await wait_for(lambda: sorted(ra.state()) == ["alice", "bob"], message=lambda: f"{ra.state()}")
        await wait_for(lambda: sorted(rb.state()) == ["alice", "bob"], message=lambda: f"{rb.state()}")
    finally:
        for c in clients:
            try:
                await asyncio.wait_for(c.close(), 5)
            except Exception:
                pass


async def test_an_untrusted_certificate_is_refused(tls_roster, monkeypatch):
    server, _ = tls_roster
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    client = AsyncRealtimeClient(
        f"https://localhost:{server.port}/realtime/v1", PUBLISHABLE_KEY, auto_reconnect=False
    )
    with pytest.raises(ssl.SSLCertVerificationError):
        await asyncio.wait_for(client.connect(), 10)
