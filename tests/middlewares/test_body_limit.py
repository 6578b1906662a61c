"""The body limit through the real server: 413 before a large body is read whole, and a read deadline."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import attrs
from helpers import ClientFactory
from structlog.testing import capture_logs

from tvbridge.config import Config, LimitsConfig

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

WAIT_S = 10.0
MIB = 1 << 20


async def read_answer(reader: asyncio.StreamReader) -> tuple[int, str]:
    """The status and the body of the server's answer, read within `WAIT_S`."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), WAIT_S)
    lines = head.decode("latin-1").split("\r\n")
    length = next(int(line.split(":", 1)[1]) for line in lines if line.lower().startswith("content-length:"))
    body = await asyncio.wait_for(reader.readexactly(length), WAIT_S)
    return int(lines[0].split()[1]), body.decode()


async def test_one_mib_chunked_body_gets_413(make_client: ClientFactory, config: Config) -> None:
    """A 1 MiB body sent chunked (no Content-Length) is refused with 413, the contract's body and a log line."""
    client = await make_client(config)

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(16):
            yield b"x" * (MIB // 16)

    with capture_logs() as events:
        response = await asyncio.wait_for(client.post("/webhook", data=chunks()), WAIT_S)
    body = await response.json()
    assert response.status == 413
    assert [e["reason"] for e in events if e["event"] == "body_limit.refused"] == ["body over the limit while reading"]
    assert body["status"] == "error"
    assert body["message"].startswith("body too large")
    assert body["alert_id"] == response.headers["X-Request-ID"]


async def test_chunked_body_is_answered_before_it_is_all_sent(make_client: ClientFactory, config: Config) -> None:
    """The server answers 413 once the limit is passed, while the client has not finished sending."""
    client = await make_client(config)
    reader, writer = await asyncio.open_connection("127.0.0.1", client.port)
    try:
        writer.write(b"POST /webhook HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\n")
        chunk = b"x" * 8192
        for _ in range(config.limits.max_body_bytes // len(chunk) + 2):  # just past the limit; no last chunk
            writer.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        await writer.drain()
        status, body = await read_answer(reader)
    finally:
        writer.close()
    assert status == 413
    assert "body too large" in body


async def test_declared_length_over_the_limit_is_refused_unread(make_client: ClientFactory, config: Config) -> None:
    """A Content-Length over the limit gets 413 at once: the client need not send a byte of the body."""
    client = await make_client(config)
    reader, writer = await asyncio.open_connection("127.0.0.1", client.port)
    try:
        writer.write(b"POST /webhook HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: %d\r\n\r\n" % MIB)
        await writer.drain()
        status, body = await read_answer(reader)
    finally:
        writer.close()
    assert status == 413
    assert f"{MIB} bytes" in body


async def test_a_slow_client_is_cut_off(make_client: ClientFactory, config: Config) -> None:
    """A client that stops sending mid-body is answered after `limits.read_timeout_s`, not held forever."""
    config = attrs.evolve(config, limits=LimitsConfig(read_timeout_s=0.2))
    client = await make_client(config)
    reader, writer = await asyncio.open_connection("127.0.0.1", client.port)
    try:
        writer.write(b'POST /webhook HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 500\r\n\r\n{"secret": ')
        await writer.drain()
        status, body = await read_answer(reader)
    finally:
        writer.close()
    assert status == 400
    assert "not received within 0.2 s" in body


async def test_a_body_at_the_limit_is_read(make_client: ClientFactory, config: Config) -> None:
    """Exactly `max_body_bytes` is allowed: the request gets past the limit (here to the JSON check, 400)."""
    client = await make_client(config)
    response = await client.post("/webhook", data=b" " * config.limits.max_body_bytes)
    assert response.status == 400
    assert "not JSON" in (await response.json())["message"]
