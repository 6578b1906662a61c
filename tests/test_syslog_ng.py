"""A real collector end to end: syslog-ng (deploy/syslog-ng/tvbridge.conf) tails tvbridge's JSON log file,
parses each line and forwards it over HTTP to a sink the test runs.

Between a burst of alerts, a logrotate-style rotation (move, SIGHUP), a restart of syslog-ng and a restart of
tvbridge, the sink must receive every line of the log files exactly once, every alert id of the journal, the
event name parsed out of the JSON, and no secret.
"""

from __future__ import annotations

import asyncio
import collections
import json
import signal
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import attrs
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from helpers import SECRET, alert, leg
from ops_process import OpsServer
from ops_tools import require_tool

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
WAIT_S = 60.0


@attrs.define
class Sink:
    server: TestServer
    lines: list[str]
    arrived: asyncio.Condition

    async def wait_for(self, count: int) -> None:
        try:
            async with asyncio.timeout(WAIT_S), self.arrived:
                await self.arrived.wait_for(lambda: len(self.lines) >= count)
        except TimeoutError:
            raise AssertionError(f"the sink got {len(self.lines)} lines, expected {count}") from None


@pytest.fixture
async def sink() -> AsyncIterator[Sink]:
    lines: list[str] = []
    arrived = asyncio.Condition()

    async def ingest(request: web.Request) -> web.Response:
        body = (await request.read()).decode()
        lines.extend(line for line in body.split("\n") if line)
        async with arrived:
            arrived.notify_all()
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_post("/ingest", ingest)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    yield Sink(server, lines, arrived)
    await server.close()


class SyslogNg:
    def __init__(self, binary: str, directory: Path, log_file: Path, sink_url: str) -> None:
        self.binary = binary
        self.directory = directory
        config = (DEPLOY / "syslog-ng" / "tvbridge.conf").read_text()
        for old, new in {
            '"/var/lib/tvbridge/webhook_server.log"': f'"{log_file}"',
            '"http://127.0.0.1:3100/ingest"': f'"{sink_url}"',
        }.items():
            assert old in config, old
            config = config.replace(old, new)
        # a second destination shows what json-parser made of each line: its event and alert id fields
        self.parsed = directory / "parsed.txt"
        config += (
            f'destination d_parsed {{ file("{self.parsed}" template("${{.tvbridge.event}} ${{.tvbridge.alert_id}}\\n")); }};\n'
            "log { source(s_tvbridge); parser(p_tvbridge_json); destination(d_parsed); };\n"
        )
        self.config = directory / "syslog-ng.conf"
        self.config.write_text(config)
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        d = self.directory
        with (d / "syslog-ng.out").open("ab") as out:
            self.proc = await asyncio.create_subprocess_exec(
                self.binary, "-F", "--no-caps", f"--cfgfile={self.config}", f"--persist-file={d / 'persist'}",
                f"--pidfile={d / 'syslog-ng.pid'}", f"--control={d / 'syslog-ng.ctl'}", stdout=out, stderr=out,
            )  # fmt: skip

    async def wait_acknowledged(self, count: int) -> None:
        """Until the http() destination has `count` deliveries answered (`written`), so their read position is
        acknowledged: a stop right after the sink got a line but before syslog-ng read the answer would send
        that line again after the restart (syslog-ng delivers at least once)."""
        ctl = require_tool("syslog-ng-ctl", "syslog-ng-core")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + WAIT_S
        written = -1
        while loop.time() < deadline:
            proc = await asyncio.create_subprocess_exec(
                ctl, "stats", f"--control={self.directory / 'syslog-ng.ctl'}", stdout=asyncio.subprocess.PIPE
            )
            out, _ = await proc.communicate()
            rows = [line.split(";") for line in out.decode().splitlines()]
            counts = [int(r[5]) for r in rows if len(r) == 6 and "d_tvbridge_http" in r[1] and r[4] == "written"]
            written = sum(counts) if counts else -1
            if written >= count:
                return
            await asyncio.sleep(0.1)
        raise AssertionError(f"syslog-ng acknowledged {written} of {count} lines")

    async def kill(self) -> None:
        """Whatever happened in the test, no syslog-ng outlives it."""
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()

    async def stop(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(self.proc.wait(), 30)
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()
            raise
        assert self.proc.returncode == 0, (self.directory / "syslog-ng.out").read_text()


async def post_alerts(server: OpsServer, count: int) -> None:
    for n in range(count):
        status, _, body = await asyncio.to_thread(server.post_json, "/webhook", alert(leg(quantity=str(n + 1))))
        assert status == 200, body


def file_lines(*paths: Path) -> list[str]:
    return [line for path in paths for line in path.read_text(encoding="utf-8").splitlines() if line]


@pytest.mark.timeout(240)
async def test_syslog_ng_forwards_every_line_once_through_rotation_and_restarts(tmp_path: Path, sink: Sink) -> None:
    """Alerts, a rotation, a syslog-ng restart, a tvbridge restart: the sink holds exactly the lines of the
    log files, each once, with the parsed event name, all the journal's alert ids, and no secret."""
    binary = require_tool("syslog-ng", "syslog-ng-core and syslog-ng-mod-http")
    data = tmp_path / "data"
    data.mkdir()
    collector_dir = tmp_path / "syslog-ng"
    collector_dir.mkdir()
    log = data / "webhook_server.log"
    env = {"WEBHOOK_SECRET": SECRET, "TVBRIDGE_RATE_LIMIT__ENABLED": "false", "TVBRIDGE_DEDUPE__ENABLED": "false"}
    collector = SyslogNg(binary, collector_dir, log, f"http://127.0.0.1:{sink.server.port}/ingest")

    try:
        server = OpsServer(data, env).start()
        try:
            await collector.start()
            # the rotation below must find syslog-ng following the file: `start()` returns once the process is
            # spawned, and a file moved away before syslog-ng ever opened it is not one it knows about (any
            # collector started after a rotation misses that file). Having forwarded what the file already holds
            # proves it has it open; on a loaded machine its start can take longer than the burst below.
            await sink.wait_for(len(file_lines(log)))
            await post_alerts(server, 20)
            log.rename(data / "webhook_server.log.1")  # logrotate: move, then SIGHUP
            server.signal(signal.SIGHUP)
            await post_alerts(server, 10)
            sent = len(file_lines(data / "webhook_server.log.1", log))
            await sink.wait_for(sent)
            await collector.wait_acknowledged(sent)
            await collector.stop()
            await post_alerts(server, 10)  # written while the collector is down
            await collector.start()
        finally:
            assert server.stop() == 0, server.output()
        server = OpsServer(data, env).start()
        try:
            await post_alerts(server, 5)
        finally:
            assert server.stop() == 0, server.output()

        expected = file_lines(data / "webhook_server.log.1", log)
        await sink.wait_for(len(expected))
        await collector.stop()
    finally:
        await collector.kill()
    assert collections.Counter(sink.lines) == collections.Counter(expected)  # every line, exactly once
    parsed = collector.parsed.read_text().splitlines()
    assert collections.Counter(parsed) == collections.Counter(
        f"{e['event']} {e.get('alert_id', '')}" for e in map(json.loads, expected)
    )
    with sqlite3.connect(data / "tvbridge.sqlite3") as db:
        journal_ids = {row[0] for row in db.execute("SELECT alert_id FROM alerts")}
    assert len(journal_ids) == 45
    forwarded_ids = {json.loads(line).get("alert_id") for line in sink.lines}
    assert journal_ids <= forwarded_ids
    assert SECRET not in "\n".join(sink.lines)
    assert [json.loads(line)["event"] for line in sink.lines].count("server.started") == 2
