"""Odd bytes where the admin token goes are a 401, never a 500 (`tvbridge/access.py`, `handlers.require_admin`,
the status page's `key`): sent over a real socket, since HTTP clients refuse to send most of them."""

from __future__ import annotations

import asyncio
import base64
from typing import TYPE_CHECKING, Any

import attrs
import pytest

from tvbridge.config import MetricsConfig

if TYPE_CHECKING:
    from helpers import ClientFactory

    from tvbridge.config import Config

ODD_AUTHORIZATION = {
    "bearer latin-1": b"Bearer \xff\xfe\xe9",
    "bearer utf-8": "Bearer caf\u00e9-\u20ac".encode(),
    "bearer empty": b"Bearer ",
    "no space": b"Bearer",
    "empty": b"",
    "only spaces": b"   ",
    "basic latin-1": b"Basic \xff\xfe",
    "basic not base64": b"Basic %%%",
    "basic no colon": b"Basic " + base64.b64encode(b"admin"),
    "basic latin-1 password": b"Basic " + base64.b64encode(b"admin:\xff\xfe"),
    "basic utf-8 password": b"Basic " + base64.b64encode("admin:caf\u00e9".encode()),
    "unknown scheme": b"Token \xff",
}
ENDPOINTS = [("GET", "/alerts/x"), ("GET", "/status"), ("GET", "/metrics"), ("POST", "/admin/halt")]


async def raw_request(port: int, request: bytes) -> int:
    """Send `request` as is and return the answer's status code (bounded wait)."""
    reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 5)
    try:
        writer.write(request)
        await writer.drain()
        status_line = await asyncio.wait_for(reader.readline(), 10)
    finally:
        writer.close()
    return int(status_line.split()[1])


@pytest.mark.parametrize(("method", "path"), ENDPOINTS)
@pytest.mark.parametrize("value", list(ODD_AUTHORIZATION.values()), ids=list(ODD_AUTHORIZATION))
async def test_odd_authorization_bytes_are_a_401(
    make_client: ClientFactory, config: Config, method: str, path: str, value: bytes
) -> None:
    """Every admin endpoint answers 401 to an `Authorization` header with bytes that are not the token:
    non-ASCII, latin-1, control bytes, no space, empty, Basic that is not base64 or not UTF-8."""
    config = attrs.evolve(config, metrics=MetricsConfig(require_token=True))
    client: Any = await make_client(config)
    port = client.server.port
    request = (
        f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\nConnection: close\r\n".encode()
        + b"Authorization: "
        + value
        + b"\r\n\r\n"
    )
    assert await raw_request(port, request) == 401


@pytest.mark.parametrize(
    "key",
    [b"%FF%FE", b"caf%C3%A9", b"%00", b"%ED%A0%80", b"a" * 5000],
    ids=["latin-1", "utf-8", "nul", "surrogate", "long"],
)
async def test_odd_status_stream_keys_are_a_401(make_client: ClientFactory, config: Config, key: bytes) -> None:
    """The status page's event stream takes a `key` query parameter: one that is not the key (non-ASCII,
    percent-encoded bytes, a lone surrogate, very long) is a 401, never a 500."""
    client: Any = await make_client(config)
    request = b"GET /status/events?key=" + key + b" HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    assert await raw_request(client.server.port, request) == 401


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"GET /status HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer \x01\x7f\r\nConnection: close\r\n\r\n",
        b"GET /status/events?key=\xff\xfe HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    ],
    ids=["control bytes in Authorization", "raw bytes in key"],
)
async def test_bytes_http_forbids_are_refused_before_any_token_check(
    make_client: ClientFactory, config: Config, request_bytes: bytes
) -> None:
    """Bytes that HTTP itself forbids there (control bytes in a header, raw non-ASCII in the request target) are
    refused by the HTTP parser with 400 before any token is looked at; never a 500."""
    client: Any = await make_client(config)
    assert await raw_request(client.server.port, request_bytes) == 400


async def test_an_admin_token_that_is_not_utf8_is_compared_not_crashed(
    make_client: ClientFactory, config: Config
) -> None:
    """An admin token set from an environment variable holding bytes that are not UTF-8 reaches tvbridge with
    lone surrogates (Python decodes the environment with `surrogateescape`): the same bytes in `Authorization`
    open `/status`, any other token is a 401, never a 500."""
    token = "admin-\udcff-token"  # os.environ's reading of b"admin-\xff-token"
    server = attrs.evolve(config.server, admin_token=token)
    client: Any = await make_client(attrs.evolve(config, server=server))
    port = client.server.port

    def status_request(authorization: bytes) -> bytes:
        return (
            b"GET /status HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nAuthorization: "
            + authorization
            + b"\r\n\r\n"
        )

    assert await raw_request(port, status_request(b"Bearer admin-\xff-token")) == 200
    assert await raw_request(port, status_request(b"Bearer admin-\xfe-token")) == 401
    assert await raw_request(port, status_request(b"Bearer admin-token")) == 401
