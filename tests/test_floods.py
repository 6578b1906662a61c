"""Junk floods against a real `tvbridge serve` from many loopback addresses (127.0.x.y), with default limits:
genuine alerts keep getting through, TradingView keeps working after wrong secrets, the log stays small and the
refusal metric counts every request exactly (issue 23).

Each flooding address is its own client bound to that address (`TCPConnector(local_addr=...)`); the genuine
alerts come from 127.0.0.1 and "TradingView" is 127.0.0.9 (in `ip_allowlist.allow`, the allowlist off).
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
from collections import Counter
from pathlib import Path

import aiohttp
from helpers import SECRET, alert, leg
from server_process import ServerProcess

SOURCES = 120
PER_SOURCE = 45  # 15 wrong secrets each: over auth_failures_per_min (10)
WAIT_S = 10.0
JUNK: tuple[tuple[bytes, dict[str, str]], ...] = (
    (b"this is not json", {"Content-Type": "text/plain"}),
    (json.dumps(alert(secret="a-guess-0123456789")).encode(), {"Content-Type": "application/json"}),
    (b"\x1f\x8b\x08\x00 not gzip at all", {"Content-Encoding": "gzip", "Content-Type": "application/json"}),
)


async def flood_from(port: int, source: str) -> Counter[int]:
    """`PER_SOURCE` junk requests from `source`, one after another; the statuses seen."""
    seen: Counter[int] = Counter()
    connector = aiohttp.TCPConnector(local_addr=(source, 0), limit=1)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=WAIT_S)) as session:
        for n in range(PER_SOURCE):
            body, headers = JUNK[n % len(JUNK)]
            async with session.post(f"http://127.0.0.1:{port}/webhook", data=body, headers=headers) as response:
                await response.read()
                seen[response.status] += 1
    return seen


async def post(port: int, source: str, body: dict[str, object]) -> int:
    connector = aiohttp.TCPConnector(local_addr=(source, 0))
    async with (
        aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=WAIT_S)) as session,
        session.post(f"http://127.0.0.1:{port}/webhook", json=body) as response,
    ):
        await response.read()
        return response.status


def refusal_counts(server: ServerProcess) -> Counter[str]:
    """`tvbridge_refusals_total` from GET /metrics, summed per status."""
    with urllib.request.urlopen(server.url + "/metrics", timeout=WAIT_S) as response:  # noqa: S310 - loopback
        text = response.read().decode()
    counts: Counter[str] = Counter()
    for line in text.splitlines():
        if line.startswith("tvbridge_refusals_total{"):
            labels, value = line.rsplit(" ", 1)
            status = labels.split('status="', 1)[1].split('"', 1)[0]
            counts[status] += int(float(value))
    return counts


async def test_junk_from_120_addresses_does_not_stop_genuine_alerts_or_flood_the_log(tmp_path: Path) -> None:
    """5,400 junk requests (not JSON, wrong secret, gzip that is not) from 120 addresses, while genuine alerts
    and a TradingView address that first sends 20 wrong secrets are served: every genuine alert is accepted
    (never 429), the server's log grows by kilobytes rather than megabytes, and `tvbridge_refusals_total`
    counts every refusal by status exactly."""
    env = {
        "WEBHOOK_SECRET": SECRET,
        "TVBRIDGE_ROUTING__ACCOUNTS": '["s"]',
        "TVBRIDGE_ACCOUNTS__S__BROKER": "scripted",
        "TVBRIDGE_IP_ALLOWLIST__ALLOW": '["127.0.0.9"]',
    }
    server = ServerProcess(tmp_path, env).start()
    try:
        log_file = tmp_path / "webhook_server.log"
        before = sum(len(line) for line in server.stdout_lines), log_file.stat().st_size
        started = time.monotonic()
        sources = [f"127.0.{20 + n // 250}.{1 + n % 250}" for n in range(SOURCES)]
        flood = asyncio.gather(*(flood_from(server.port, source) for source in sources))
        genuine: list[int] = []
        tradingview: list[int] = []
        for n in range(20):
            genuine.append(await post(server.port, "127.0.0.1", alert(leg(symbol=f"G{n:02d}"), id=f"genuine-{n}")))
            tradingview.append(await post(server.port, "127.0.0.9", alert(secret="wrong-secret-from-tv")))
        tradingview.append(await post(server.port, "127.0.0.9", alert(leg(symbol="TV"), id="tradingview")))
        junk = sum(await asyncio.wait_for(flood, 120), Counter[int]())
        elapsed = time.monotonic() - started
        assert set(genuine) <= {200, 202}, genuine
        assert tradingview == [401] * 20 + [tradingview[-1]]
        assert tradingview[-1] in {200, 202}
        assert junk.total() == SOURCES * PER_SOURCE
        assert set(junk) <= {400, 401, 429}
        assert junk[429] > 0  # each source was cut off at its own budget
        after = sum(len(line) for line in server.stdout_lines), log_file.stat().st_size
        counts = refusal_counts(server)
        assert counts["400"] == junk[400]
        assert counts["401"] == junk[401] + 20
        assert counts["429"] == junk[429]
    finally:
        server.stop()
    grown = max(after[0] - before[0], after[1] - before[1])
    # unsampled, each refusal wrote ~3 lines (~700 bytes): 3.7 MB here. Sampled: 50 refusals per 10 s, plus
    # the genuine alerts' own lines
    assert grown < 60_000 * (elapsed / 10 + 1) + 3_000 * len(genuine), grown
    suppressed = [e for e in server.events() if e.get("event") == "refusals.suppressed"]
    assert suppressed
    assert sum(e["count"] for e in suppressed) > junk.total() - 50 * (elapsed / 10 + 1)
