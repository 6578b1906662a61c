"""Connections against a real `tvbridge serve`: idle, half-sent and dribbled connections cannot keep a genuine alert
out, caps per address and in all, refusals that cost nothing, and a bounded log (issue 23).

Attackers connect from other loopback addresses (127.0.x.y, x >= 1) than the genuine alert (127.0.0.1). Every
wait is bounded; a wait that must *not* end (a connection still open) is a read with a short timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import resource
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from helpers import SECRET, alert, leg
from server_process import ServerProcess
from structlog.testing import capture_logs

from tvbridge.connections import ConnectionGuard

WAIT_S = 15.0
TRADINGVIEW_TIMEOUT_S = 3.0
Stream = tuple[asyncio.StreamReader, asyncio.StreamWriter]
BASE_ENV = {
    "WEBHOOK_SECRET": SECRET,
    "TVBRIDGE_ROUTING__ACCOUNTS": '["s"]',
    "TVBRIDGE_ACCOUNTS__S__BROKER": "scripted",
    "TVBRIDGE_DEDUPE__ENABLED": "false",
}


@pytest.fixture(scope="module", autouse=True)
def many_descriptors() -> Iterator[None]:
    """The test process opens thousands of sockets: its own soft limit goes up to the hard one meanwhile."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@contextlib.contextmanager
def serving(
    tmp_path: Path, descriptor_limit: int | None = None, env: dict[str, str] | None = None, **limits: str
) -> Iterator[ServerProcess]:
    """`tvbridge serve` with the scripted broker and `[limits]` overrides; stopped with SIGTERM at the end."""
    limit_env = {f"TVBRIDGE_LIMITS__{key.upper()}": value for key, value in limits.items()}
    server = ServerProcess(tmp_path, {**BASE_ENV, **(env or {}), **limit_env}, descriptor_limit=descriptor_limit)
    server.start()
    try:
        yield server
    finally:
        server.stop()


async def connect(port: int, source: str) -> Stream:
    return await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0)), WAIT_S)


@contextlib.asynccontextmanager
async def streams(port: int, sources: list[str]) -> AsyncIterator[list[Stream]]:
    """One connection from each source (repeat a source for several), all closed at the end."""
    opened: list[Stream] = []
    try:
        for start in range(0, len(sources), 100):
            opened += await asyncio.gather(*(connect(port, source) for source in sources[start : start + 100]))
        yield opened
    finally:
        for _, writer in opened:
            writer.close()


async def closed_by_server(reader: asyncio.StreamReader, within_s: float) -> bool:
    """True when the server closes the connection within `within_s` (end of stream or reset), without answering."""
    try:
        data = await asyncio.wait_for(reader.read(), within_s)
    except TimeoutError:
        return False
    except ConnectionError:
        return True
    assert data == b"", f"the server answered an unfinished request: {data[:200]!r}"
    return True


async def genuine_alert(port: int, symbol: str = "RELIANCE") -> tuple[int, float]:
    """POST a genuine alert from 127.0.0.1 as TradingView would (3 s budget): status and seconds taken."""
    started = time.monotonic()
    timeout = aiohttp.ClientTimeout(total=TRADINGVIEW_TIMEOUT_S)
    url = f"http://127.0.0.1:{port}/webhook"
    async with (
        aiohttp.ClientSession(timeout=timeout) as session,
        session.post(url, json=alert(leg(symbol=symbol))) as response,
    ):
        await response.read()
        return response.status, time.monotonic() - started


def scrape(server: ServerProcess, name: str) -> dict[str, float]:
    """The samples of one metric family from GET /metrics, by their label text."""
    with urllib.request.urlopen(server.url + "/metrics", timeout=10) as response:  # noqa: S310 - loopback
        text = response.read().decode()
    return {
        line.split(" ")[0].removeprefix(name): float(line.split(" ")[1])
        for line in text.splitlines()
        if line.startswith(name + "{")
    }


def connection_lines(server: ServerProcess) -> list[dict[str, Any]]:
    return [e for e in server.events() if str(e.get("event", "")).startswith("connections.")]


def attacker_sources(count: int, per_address: int) -> list[str]:
    return [f"127.0.{1 + n // per_address // 250}.{1 + n // per_address % 250}" for n in range(count)]


async def test_a_genuine_alert_gets_through_2000_idle_and_slowloris_connections(tmp_path: Path) -> None:
    """Under a 512-descriptor limit, 1,000 idle and 1,000 slowly dribbling connections from 100 addresses are open:
    a genuine alert still gets 200 within TradingView's 3 s, every attacker connection is closed by the header
    deadline (however it dribbles), each one is counted exactly once and the log holds a few summary lines."""
    with serving(tmp_path, descriptor_limit=512, header_timeout_s="3", keepalive_timeout_s="60") as server:
        started = time.monotonic()
        [capped] = [e for e in connection_lines(server) if e["event"] == "connections.capped"]
        assert capped["capacity"] < 512 < capped["max_connections"]
        async with streams(server.port, attacker_sources(2000, per_address=20)) as attackers:
            slowloris = attackers[1::2]
            for _, writer in slowloris:
                writer.write(b"POST /webhook HTTP/1.1\r\nHost: tvbridge\r\n")
            status, took = await genuine_alert(server.port)
            assert (status, took < TRADINGVIEW_TIMEOUT_S) == (200, True)
            for _ in range(4):  # keep dribbling one header line a second past the 3 s deadline
                for reader, writer in slowloris:
                    if not reader.at_eof() and not writer.is_closing():
                        writer.write(b"X-Slow: 1\r\n")
                await asyncio.sleep(1.0)  # the dribble's pace, not a synchronisation
            closed = await asyncio.gather(*(closed_by_server(reader, WAIT_S) for reader, _ in attackers))
        assert closed.count(True) == len(attackers)
        assert (await genuine_alert(server.port, "INFY"))[0] == 200
        events = scrape(server, "tvbridge_connection_events_total")
        assert sum(events[f'{{event="{e}"}}'] for e in ("evicted", "header_timeout", "refused_full")) == 2000
        assert events['{event="header_timeout"}'] > 0
        assert events['{event="evicted"}'] > 0
        elapsed = time.monotonic() - started
    summaries = [e for e in connection_lines(server) if e["event"] == "connections.summary"]
    assert 1 <= len(summaries) <= elapsed / 10 + 2, server.output[-3000:]
    assert sum(e["evicted"] + e["header_timeout"] + e["refused_full"] for e in summaries) == 2000
    assert all(e["level"] == "warning" for e in summaries)
    assert "Error handling request" not in server.output


async def test_an_idle_connection_is_closed_at_the_header_deadline_not_before(tmp_path: Path) -> None:
    """Without pressure, an idle and a half-sent connection stay open until `header_timeout_s`, then are closed."""
    with serving(tmp_path, header_timeout_s="4", keepalive_timeout_s="60") as server:
        async with streams(server.port, ["127.0.3.1", "127.0.3.2"]) as [(idle, _), (half, writer)]:
            writer.write(b"POST /webhook HTTP/1.1\r\nHost: tvbridge\r\nContent-Le")
            opened = time.monotonic()
            assert not await closed_by_server(idle, 1.0)
            assert not await closed_by_server(half, 0.5)
            assert await closed_by_server(idle, WAIT_S)
            assert await closed_by_server(half, WAIT_S)
            assert time.monotonic() - opened >= 3.5


async def test_a_kept_alive_connection_is_closed_after_the_keepalive_timeout(tmp_path: Path) -> None:
    """After its answer, a keep-alive connection that sends nothing more is closed after `keepalive_timeout_s`."""
    with serving(tmp_path, keepalive_timeout_s="2", header_timeout_s="30") as server:
        async with streams(server.port, ["127.0.4.1"]) as [(reader, writer)]:
            body = json.dumps(alert()).encode()
            writer.write(
                b"POST /webhook HTTP/1.1\r\nHost: tvbridge\r\nContent-Type: application/json\r\n"
                b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
            )
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), WAIT_S)
            assert head.startswith(b"HTTP/1.1 200")
            length = int(next(x for x in head.split(b"\r\n") if x.lower().startswith(b"content-length")).split(b":")[1])
            await asyncio.wait_for(reader.readexactly(length), WAIT_S)
            answered = time.monotonic()
            # closed within WAIT_S, half the header timeout: by the keep-alive timeout, and not before it
            assert await closed_by_server(reader, WAIT_S)
            assert time.monotonic() - answered >= 1.5


async def test_one_address_cannot_hold_more_than_its_share(tmp_path: Path) -> None:
    """Over `max_connections_per_ip` an address's new connections are closed at once; its first ones stay, and
    other addresses (and the genuine alert) are served."""
    with serving(tmp_path, max_connections_per_ip="5", header_timeout_s="30") as server:
        async with streams(server.port, ["127.0.5.1"] * 8) as mine:
            refused = await asyncio.gather(*(closed_by_server(reader, 2.0) for reader, _ in mine[5:]))
            assert refused == [True, True, True]
            kept = await asyncio.gather(*(closed_by_server(reader, 0.5) for reader, _ in mine[:5]))
            assert kept == [False] * 5
            async with streams(server.port, ["127.0.5.2"] * 5) as others:
                assert await closed_by_server(others[-1][0], 0.5) is False
            assert (await genuine_alert(server.port))[0] == 200
        assert scrape(server, "tvbridge_connection_events_total")['{event="refused_per_ip"}'] == 3


async def test_tradingview_addresses_are_not_capped_per_address(tmp_path: Path) -> None:
    """TradingView fires many alerts at once from each of its few addresses: those in `ip_allowlist.allow` count
    only toward `max_connections`, other addresses are capped."""
    tradingview = {"TVBRIDGE_IP_ALLOWLIST__ALLOW": '["127.0.6.1"]'}
    with serving(tmp_path, env=tradingview, max_connections_per_ip="2", header_timeout_s="30") as server:
        async with streams(server.port, ["127.0.6.1"] * 6 + ["127.0.6.2"] * 3) as opened:
            states = await asyncio.gather(*(closed_by_server(reader, 1.0) for reader, _ in opened))
        assert states == [False] * 6 + [False, False, True]


async def test_when_every_connection_is_busy_new_ones_are_refused_and_the_busy_ones_are_served(
    tmp_path: Path,
) -> None:
    """At `max_connections`, with every connection in the middle of a request, a new connection is closed at once
    and the requests in progress still get their answers."""
    with serving(tmp_path, max_connections="4", read_timeout_s="30") as server:
        body = json.dumps(alert()).encode()
        head = (
            b"POST /webhook HTTP/1.1\r\nHost: tvbridge\r\nContent-Type: application/json\r\n"
            b"Expect: 100-continue\r\nContent-Length: %d\r\n\r\n"
        )
        async with streams(server.port, [f"127.0.7.{n}" for n in range(1, 5)]) as busy:
            for reader, writer in busy:
                writer.write(head % len(body))
                # "100 Continue": the server has the headers, and a request is in progress on this connection
                continued = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), WAIT_S)
                assert continued == b"HTTP/1.1 100 Continue\r\n\r\n"
                writer.write(body[:10])
            async with streams(server.port, ["127.0.7.9"]) as [(late, _)]:
                assert await closed_by_server(late, WAIT_S)  # no idle connection to replace: refused
            for _, writer in busy:
                writer.write(body[10:])
            answers = [await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), WAIT_S) for reader, _ in busy]
        assert [a.split(b"\r\n")[0] for a in answers] == [b"HTTP/1.1 200 OK"] * 4
        assert scrape(server, "tvbridge_connection_events_total")['{event="refused_full"}'] == 1


async def test_parse_errors_are_counted_and_summarized_not_logged_each(tmp_path: Path) -> None:
    """200 requests aiohttp cannot parse get 400 each; the log has no line per request, the metric counts 200."""
    with serving(tmp_path) as server:
        async with streams(server.port, attacker_sources(200, per_address=10)) as garbage:
            for _, writer in garbage:
                writer.write(b"GET /" + b"A" * 9000 + b" HTTP/1.1\r\n\r\n")
            heads = [await asyncio.wait_for(reader.read(), WAIT_S) for reader, _ in garbage]
        assert all(head.split(b" ", 2)[1] == b"400" for head in heads)
        assert all(len(head) < 1000 for head in heads)  # the 9,000 bytes are not echoed back
        assert scrape(server, "tvbridge_connection_events_total")['{event="parse_error"}'] == 200
        assert len(server.stdout_lines) < 10
    [summary] = [e for e in connection_lines(server) if e["event"] == "connections.summary"]
    assert summary["parse_error"] == 200
    assert "A" * 300 not in server.output


async def test_accept_errors_are_summarized_once_per_interval() -> None:
    """asyncio reports each failed accept() (EMFILE...) to the loop's exception handler: the guard turns a
    thousand of them into one warning line with the count."""
    guard = ConnectionGuard(max_connections=10, max_per_source=5, header_timeout_s=5, ipv6_prefix=64, log_every_s=0.2)
    loop = asyncio.get_running_loop()
    with capture_logs() as events:
        guard.start(loop)
        try:
            for _ in range(1000):
                loop.call_exception_handler(
                    {"message": "socket.accept() out of system resource", "exception": OSError(24, "EMFILE")}
                )
            deadline = time.monotonic() + WAIT_S
            while not any(e["event"] == "connections.summary" for e in events):
                assert time.monotonic() < deadline
                await asyncio.sleep(0.05)
        finally:
            guard.stop()
    [summary] = [e for e in events if e["event"] == "connections.summary"]
    assert summary["accept_error"] == 1000
    assert summary["log_level"] == "warning"
    assert loop.get_exception_handler() is None
