"""A strategy's daily square-off through real `python -m tvbridge serve` processes on paper, the clock set by
`TVBRIDGE_TEST_NOW`: a server that was down at `square_off_at` squares off when it starts that day, once, and a
restart later the same day does not do it again (the journal says it ran)."""

from __future__ import annotations

import csv
import json
from typing import TYPE_CHECKING

from helpers import SECRET, alert, leg
from server_process import ServerProcess

if TYPE_CHECKING:
    from pathlib import Path

ALPHA = "alpha-secret-0123456789abcdef"


def serve(tmp_path: Path, now: str) -> ServerProcess:
    (tmp_path / "config.toml").write_text(
        f'[accounts.paper]\nbroker = "paper"\n[strategies.alpha]\nsecret = "{ALPHA}"\nsquare_off_at = "15:15"\n'
    )
    env = {"WEBHOOK_SECRET": SECRET, "TVBRIDGE_SERVER__DATA_DIR": str(tmp_path), "TVBRIDGE_TEST_NOW": now}
    return ServerProcess(tmp_path, env).start()


def test_a_missed_square_off_runs_at_start_once_a_day(tmp_path: Path) -> None:
    """Monday 10:00 alpha buys 10 intraday; the server is down at 15:15; started at 15:25 (the market still open) it sells the 10 before
    taking alerts (`strategy.squared_off`, one order-log row under alpha); started again at 15:28 it does not."""
    server = serve(tmp_path, "2026-12-07T10:00:00+05:30")
    try:
        status, _, answer = server.post(
            "/webhook", json.dumps(alert(leg(productType="I", price="2900"), secret=ALPHA)).encode()
        )
        assert status == 200, answer
    finally:
        assert server.stop() == 0

    server = serve(tmp_path, "2026-12-07T15:25:00+05:30")
    try:
        squared = [e for e in server.events() if e.get("event") == "strategy.squared_off"]
    finally:
        assert server.stop() == 0
    assert [(e["strategy"], e["account"], e["closed"], e["status"]) for e in squared] == [
        ("alpha", "paper", 1, "success")
    ]

    server = serve(tmp_path, "2026-12-07T15:28:00+05:30")
    try:
        again = [e for e in server.events() if e.get("event") == "strategy.squared_off"]
    finally:
        assert server.stop() == 0
    assert again == []
    with (tmp_path / "webhook_orders.csv").open(newline="", encoding="utf-8") as f:
        rows = [(r["alert_type"], r["transaction"], r["quantity"], r["strategy"]) for r in csv.DictReader(f)]
    assert rows == [("multi_leg_order", "B", "10", "alpha"), ("flatten", "S", "10", "alpha")]
