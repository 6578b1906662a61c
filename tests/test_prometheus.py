"""A real Prometheus scrapes tvbridge and its query API returns the counts the test sent.

The test runs Prometheus (Debian package `prometheus`) on a free loopback port, with its config and its TSDB in
tmp_path and a 1 s scrape interval, scraping the test's tvbridge with the admin token (`require_token = true`),
as a remote Prometheus would. Every wait is a bounded poll.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import attrs
from helpers import ClientFactory, alert, leg, with_accounts
from ops_tools import free_port, require_tool

from tvbridge.config import Config, MetricsConfig
from tvbridge.keys import CREDENTIALS

WAIT_S = 40.0


@contextlib.asynccontextmanager
async def prometheus(tmp_path: Path, target: str, token: str) -> AsyncIterator[str]:
    binary = require_tool("prometheus", "prometheus")
    port = free_port()
    (tmp_path / "token").write_text(token)
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [
            {
                "job_name": "tvbridge",
                "metrics_path": "/metrics",
                "authorization": {"type": "Bearer", "credentials_file": str(tmp_path / "token")},
                "static_configs": [{"targets": [target]}],
            }
        ],
    }
    config_file = tmp_path / "prometheus.yml"
    config_file.write_text(json.dumps(config))  # JSON is YAML
    log = (tmp_path / "prometheus.log").open("wb")
    proc = await asyncio.create_subprocess_exec(
        binary,
        f"--config.file={config_file}",
        f"--storage.tsdb.path={tmp_path / 'tsdb'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--log.level=warn",
        stdout=log,
        stderr=log,
    )
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), 20)
        except TimeoutError:
            proc.kill()
            await proc.wait()
        log.close()


async def query(session: aiohttp.ClientSession, base: str, promql: str) -> list[dict[str, object]]:
    try:
        async with session.get(f"{base}/api/v1/query", params={"query": promql}) as response:
            if response.status != 200:
                return []
            body = await response.json()
    except aiohttp.ClientConnectionError:  # not listening yet
        return []
    result: list[dict[str, object]] = body["data"]["result"]
    return result


async def wait_for_value(session: aiohttp.ClientSession, base: str, promql: str, expected: str, log: Path) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT_S
    last: list[dict[str, object]] = []
    while loop.time() < deadline:
        last = await query(session, base, promql)
        if last and last[0]["value"][1] == expected:  # type: ignore[index]  # [time, "value"]
            return
        await asyncio.sleep(0.25)
    logged = log.read_text() if log.exists() else ""
    raise AssertionError(f"{promql}: expected {expected}, Prometheus has {last}\n{logged}")


async def test_prometheus_scrapes_the_counts_the_test_sent(
    make_client: ClientFactory, config: Config, tmp_path: Path
) -> None:
    """Five alerts placed and two refused: Prometheus, scraping with the admin token, reports exactly those
    counts, and the scrape target is up."""
    config = with_accounts(config, {"s": {"broker": "scripted", "reject_symbols": ["BAD"]}})
    client = await make_client(attrs.evolve(config, metrics=MetricsConfig(require_token=True, allow=())))
    assert client.app is not None
    for n in range(5):
        assert (await client.post("/webhook", json=alert(leg(quantity=str(n + 1))))).status == 200
    assert (await client.post("/webhook", json=alert(leg(symbol="BAD")))).status == 200
    assert (await client.post("/webhook", json=alert(secret="not-the-secret-xxxxxxxxx"))).status == 401
    target = f"127.0.0.1:{client.port}"
    prom_dir = tmp_path / "prometheus"
    prom_dir.mkdir()
    async with prometheus(prom_dir, target, client.app[CREDENTIALS].admin_token) as base, aiohttp.ClientSession() as s:
        log = prom_dir / "prometheus.log"
        await wait_for_value(s, base, 'up{job="tvbridge"}', "1", log)
        await wait_for_value(s, base, 'tvbridge_alerts_total{outcome="success"}', "5", log)
        await wait_for_value(s, base, 'tvbridge_alerts_total{outcome="failed"}', "1", log)
        await wait_for_value(s, base, 'tvbridge_legs_total{account="s",broker="scripted",status="success"}', "5", log)
        await wait_for_value(s, base, 'tvbridge_refusals_total{status="401",reason="auth"}', "1", log)
        await wait_for_value(
            s, base, 'sum(tvbridge_request_duration_seconds_count{route="/webhook",method="POST"})', "7", log
        )
