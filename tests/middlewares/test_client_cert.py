"""HTTPS served by tvbridge itself, and TradingView's client certificate required on the webhook.

The tests make their own CA, a server certificate for 127.0.0.1 and client certificates (one with TradingView's
subject CN `TradingView Webhooks`, one with another CN), and run the real server over TLS on a loopback port:
through `aiohttp.test_utils.TestServer` with the context `tvbridge.tls` builds, and as `tvbridge serve`.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import json
import ssl
from pathlib import Path
from typing import Any

import aiohttp
import attrs
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from helpers import SECRET, alert
from server_process import ServerProcess
from structlog.testing import capture_logs

from tvbridge.app import create_app
from tvbridge.config import AuthConfig, Config, load_config
from tvbridge.errors import ConfigError
from tvbridge.parsing import make_converter
from tvbridge.secretstore import resolve_credentials
from tvbridge.tls import TRADINGVIEW_CN, server_context

WAIT_S = 10.0
Client = TestClient[web.Request, web.Application]


@attrs.frozen
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    tradingview: tuple[Path, Path]
    stranger: tuple[Path, Path]
    other_ca_tradingview: tuple[Path, Path]


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _issue(
    cn: str, key: ec.EllipticCurvePrivateKey, issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None
) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    ca = issuer is None
    issuer_name = _name(cn) if issuer is None else issuer[0].subject
    signing_key = key if issuer is None else issuer[1]
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(signing_key.public_key()),
            critical=False,
        )
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    else:
        builder = builder.add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
        ).add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False
        )
    return builder.sign(signing_key, hashes.SHA256())


def _write(directory: Path, stem: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> tuple[Path, Path]:
    cert_path, key_path = directory / f"{stem}.crt", directory / f"{stem}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """A test CA, a server certificate for 127.0.0.1, TradingView's and a stranger's client certificates."""
    directory = tmp_path_factory.mktemp("pki")
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _issue("tvbridge test CA", ca_key, None)
    ca_path, _ = _write(directory, "ca", ca, ca_key)
    made: dict[str, tuple[Path, Path]] = {}
    for stem, cn in (("server", "127.0.0.1"), ("tradingview", TRADINGVIEW_CN), ("stranger", "Someone Else")):
        key = ec.generate_private_key(ec.SECP256R1())
        made[stem] = _write(directory, stem, _issue(cn, key, (ca, ca_key)), key)
    other_ca_key = ec.generate_private_key(ec.SECP256R1())
    other_ca = _issue("another CA", other_ca_key, None)
    key = ec.generate_private_key(ec.SECP256R1())
    other = _write(directory, "other", _issue(TRADINGVIEW_CN, key, (other_ca, other_ca_key)), key)
    return Pki(
        ca=ca_path,
        server_cert=made["server"][0],
        server_key=made["server"][1],
        tradingview=made["tradingview"],
        stranger=made["stranger"],
        other_ca_tradingview=other,
    )


def tls_config(config: Config, pki: Pki) -> Config:
    server = attrs.evolve(config.server, tls_cert=str(pki.server_cert), tls_key=str(pki.server_key))
    auth = attrs.evolve(config.auth, require_client_cert=True, client_ca_file=str(pki.ca))
    return attrs.evolve(config, server=server, auth=auth)


def client_context(pki: Pki, cert: tuple[Path, Path] | None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=pki.ca)
    if cert is not None:
        context.load_cert_chain(*cert)
    return context


@pytest.fixture
async def https(aiohttp_client: Any, converter: Any, config: Config, pki: Pki) -> Client:
    """The app over HTTPS on 127.0.0.1, with the TLS context the CLI would use."""
    config = tls_config(config, pki)
    app = create_app(config, converter, resolve_credentials(config))
    server = TestServer(app, host="127.0.0.1")
    await server.start_server(ssl=server_context(config))
    assert server.scheme == "https"
    client: Client = await aiohttp_client(server)
    return client


async def test_a_caller_without_a_certificate_is_refused(https: Client, pki: Pki) -> None:
    """No client certificate: 403, and the refusal is logged with its reason."""
    with capture_logs() as events:
        response = await https.post("/webhook", json=alert(), ssl=client_context(pki, None))
    body = await response.json()
    assert response.status == 403
    assert body["message"] == "a TradingView client certificate is required (no client certificate)"
    [line] = [e for e in events if e["event"] == "client_cert.refused"]
    assert line["reason"] == "no client certificate"


async def test_a_certificate_of_another_subject_is_refused(https: Client, pki: Pki) -> None:
    """A valid certificate from the same CA but with another CN is not TradingView's: 403."""
    response = await https.post("/webhook", json=alert(), ssl=client_context(pki, pki.stranger))
    assert response.status == 403
    assert "not TradingView's" in (await response.json())["message"]


async def test_tradingviews_certificate_gets_through(https: Client, pki: Pki) -> None:
    """A certificate with subject CN `TradingView Webhooks` from the configured CA: the alert is processed."""
    response = await https.post("/webhook", json=alert(), ssl=client_context(pki, pki.tradingview))
    assert response.status == 200
    assert (await response.json())["status"] == "success"


async def test_refused_before_the_body_is_read(https: Client, pki: Pki) -> None:
    """Without the certificate the answer comes though the declared body was never sent."""
    reader, writer = await asyncio.open_connection("127.0.0.1", https.port, ssl=client_context(pki, None))
    try:
        writer.write(b"POST /webhook HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 1000\r\n\r\n")
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), WAIT_S)
    finally:
        writer.close()
    assert head.startswith(b"HTTP/1.1 403 ")


async def test_a_certificate_from_another_ca_fails_the_handshake(https: Client, pki: Pki) -> None:
    """The right CN signed by a CA that is not configured: the server drops the connection in TLS, no answer."""

    async def exchange() -> bytes:
        response = await https.post("/webhook", json=alert(), ssl=client_context(pki, pki.other_ca_tradingview))
        return await response.read()

    with pytest.raises(aiohttp.ClientError):
        await exchange()


async def test_health_needs_no_certificate(https: Client, pki: Pki) -> None:
    """The certificate is asked for, not demanded, in the handshake: a monitor can read /health."""
    response = await https.get("/health", ssl=client_context(pki, None))
    assert response.status == 200


def test_require_client_cert_needs_tls(converter: Any, tmp_path: Path) -> None:
    """tvbridge can only check a certificate on a connection it terminates: without tls_cert it will not start."""
    env = {"TVBRIDGE_AUTH__REQUIRE_CLIENT_CERT": "true", "WEBHOOK_SECRET": SECRET}
    with pytest.raises(ConfigError, match=r"auth.require_client_cert: needs server.tls_cert"):
        load_config(None, make_converter(), env, tmp_path)
    assert AuthConfig().require_client_cert is False


def test_an_unreadable_certificate_is_a_config_error(config: Config, tmp_path: Path) -> None:
    """A missing certificate file stops the start with a message naming the key."""
    config = attrs.evolve(config, server=attrs.evolve(config.server, tls_cert=str(tmp_path / "missing.pem")))
    with pytest.raises(ConfigError, match=r"server.tls_cert / server.tls_key: cannot load"):
        server_context(config)


async def test_tvbridge_serve_speaks_https(tmp_path: Path, pki: Pki) -> None:
    """`tvbridge serve` with server.tls_cert serves HTTPS, checks TradingView's certificate and logs refusals."""
    env = {
        "WEBHOOK_SECRET": SECRET,
        "TVBRIDGE_SERVER__DATA_DIR": str(tmp_path),
        "TVBRIDGE_SERVER__TLS_CERT": str(pki.server_cert),
        "TVBRIDGE_SERVER__TLS_KEY": str(pki.server_key),
        "TVBRIDGE_AUTH__REQUIRE_CLIENT_CERT": "true",
        "TVBRIDGE_AUTH__CLIENT_CA_FILE": str(pki.ca),
    }
    server = ServerProcess(tmp_path, env)
    await asyncio.to_thread(server.start)
    try:
        started = [json.loads(line) for line in server.stdout_lines if '"server.started"' in line]
        assert started[0]["tls"] is True
        url = f"https://127.0.0.1:{server.port}/webhook"
        timeout = aiohttp.ClientTimeout(total=WAIT_S)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            async with session.post(url, json=alert(), ssl=client_context(pki, None)) as refused:
                assert refused.status == 403
            async with session.post(url, json=alert(), ssl=client_context(pki, pki.tradingview)) as accepted:
                assert accepted.status == 200
                assert (await accepted.json())["status"] == "success"
    finally:
        assert await asyncio.to_thread(server.stop) == 0
    [refusal] = [e for e in server.events() if e.get("event") == "client_cert.refused"]
    assert refusal["reason"] == "no client certificate"
    assert len(refusal["alert_id"]) == 17  # bound by the log context: every guard line carries it
    assert SECRET not in server.output
