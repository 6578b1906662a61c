"""The trading-day commands as an operator runs them, beside a real server process."""

from __future__ import annotations

import json
from pathlib import Path

from helpers import SECRET, alert, leg
from server_process import ServerProcess, run_cli

ENV = {"WEBHOOK_SECRET": SECRET}


def test_cli_halt_stops_a_running_server_and_survives_its_restart(tmp_path: Path) -> None:
    """`tvbridge halt` while the server runs: the next alert gets 503 and /health 503; still halted after a
    restart; `tvbridge resume` lets alerts through again."""
    server = ServerProcess(tmp_path, ENV).start()
    try:
        halted = run_cli(tmp_path, ENV, "halt", "--reason", "broker outage")
        assert halted.returncode == 0, halted.stderr
        assert "trading halted: broker outage" in halted.stdout
        status, _, body = server.post("/webhook", json.dumps(alert()).encode())
        assert (status, body["message"]) == (503, "trading halted: broker outage")
        assert server.get("/health")[0] == 503
    finally:
        assert server.stop() == 0
    server = ServerProcess(tmp_path, ENV).start()
    try:
        assert server.post("/webhook", json.dumps(alert()).encode())[0] == 503
        assert run_cli(tmp_path, ENV, "resume").returncode == 0
        status, _, body = server.post("/webhook", json.dumps(alert()).encode())
        assert (status, body["status"]) == (200, "success")
    finally:
        assert server.stop() == 0


def test_extra_holiday_today_queues_and_queue_commands_manage_it(tmp_path: Path) -> None:
    """With today (exchange date) in extra_holidays the default paper account queues the alert (202 `queued`),
    `tvbridge queue list` shows it and `tvbridge queue cancel` removes it.

    The server's clock starts ten minutes after IST midnight (`TVBRIDGE_TEST_NOW`), when the UTC date is still
    the day before (a trading Wednesday): "today" is the exchange's date, not the UTC date, and not the day the
    suite happens to run on."""
    env = {
        **ENV,
        "TVBRIDGE_TEST_NOW": "2026-11-26T00:10:00+05:30",  # 2026-11-25T18:40Z
        "TVBRIDGE_SESSIONS__ENABLED": "true",
        "TVBRIDGE_SESSIONS__EXTRA_HOLIDAYS": '["2026-11-26"]',
    }
    server = ServerProcess(tmp_path, env).start()
    try:
        untimed = alert({k: v for k, v in leg().items() if k != "meta"})  # no timenow: the server's clock is pinned
        status, _, body = server.post("/webhook", json.dumps(untimed).encode())
        assert (status, body["status"]) == (202, "queued"), body
        assert body["results"][0]["message"].startswith(
            "market closed (NSE is closed: holiday (extra_holidays in config))"
        )
        listed = run_cli(tmp_path, env, "queue", "list", "--json")
        assert [e["alert_id"] for e in json.loads(listed.stdout)] == [body["alert_id"]]
        cancelled = run_cli(tmp_path, env, "queue", "cancel", body["alert_id"])
        assert cancelled.returncode == 0, cancelled.stderr
        assert json.loads(run_cli(tmp_path, env, "queue", "list", "--json").stdout) == []
        assert run_cli(tmp_path, env, "queue", "cancel", body["alert_id"]).returncode == 1
    finally:
        assert server.stop() == 0
