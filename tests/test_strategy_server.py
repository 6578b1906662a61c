"""Strategy alerts through a real `python -m tvbridge serve` process on paper: a target sequence that spans a
restart (paper's positions persist, so the account keeps following the strategy), and `current_week` on an
expiry day after the close, with the process's clock set by `TVBRIDGE_TEST_NOW`."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from helpers import SECRET, alert, leg
from server_process import ServerProcess, run_cli

from tvbridge_brokers.dhan.instruments import sample_master_path

if TYPE_CHECKING:
    from pathlib import Path


def target(size: int, n: int) -> dict[str, Any]:
    body = leg()
    body.pop("transactionType")
    body.pop("quantity")
    body["position_size"] = str(size)
    body["meta"] = {"interval": "5", "time": f"2026-12-08T09:{15 + n:02d}:00Z"}  # no timenow: no age check
    return body


def serve(tmp_path: Path) -> ServerProcess:
    (tmp_path / "config.toml").write_text(
        "[accounts.paper]\n"
        'broker = "paper"\n'
        f"instruments_path = {json.dumps(str(sample_master_path()))}\n"
        "prices = { RELIANCE = 2900 }\n"
    )
    env = {
        "WEBHOOK_SECRET": SECRET,
        "TVBRIDGE_SERVER__DATA_DIR": str(tmp_path),
        "TVBRIDGE_TEST_NOW": "2026-12-08T15:45:00+05:30",  # an expiry day, after the NSE close
    }
    return ServerProcess(tmp_path, env).start()


def post(server: ServerProcess, body: dict[str, Any]) -> dict[str, Any]:
    status, _, answer = server.post("/webhook", json.dumps(body).encode())
    assert status == 200, answer
    result: dict[str, Any] = answer["results"][0]
    return result


def test_a_target_sequence_across_a_restart(tmp_path: Path) -> None:
    """Long 10, restart, short 10 (one SELL of 20 from the persisted position), flat (BUY 10), the flat alert
    again (nothing); and a current_week option after the expiry-day close names the next week's contract."""
    server = serve(tmp_path)
    try:
        first = post(server, alert(target(10, 1)))
    finally:
        assert server.stop() == 0
    server = serve(tmp_path)
    try:
        moves = [post(server, alert(target(size, n))) for n, size in ((2, -10), (3, 0), (4, 0))]
        option = leg(
            exchange="NFO",
            symbol="NIFTY",
            instrument="OPT",
            option_type="PE",
            strike_price="ATM",
            expiry_date="current_week",
            underlying_price="23990",
            productType="M",
            orderType="LMT",
            price="100",
            quantity="65",
            sort_order="1",
        )
        option.pop("meta")
        chosen = post(server, alert(option))
    finally:
        assert server.stop() == 0

    assert (first["transaction"], first["quantity"]) == ("B", "10")
    assert [(m["transaction"], m["quantity"], m["position_before"]) for m in moves[:2]] == [
        ("S", "20", 10),
        ("B", "10", -10),
    ]
    assert (moves[2]["quantity"], moves[2]["order_id"]) == ("0", None)
    assert chosen["status"] == "success", chosen
    assert chosen["contract"] == "NIFTY-Dec2026-24000-PE (expiry 2026-12-15, strike 24000, security_id 44104)"


def test_tvbridge_brokers_shows_listings_and_funds(tmp_path: Path) -> None:
    """`tvbridge brokers` says which strategy-alert capabilities a configured account has: paper with a master
    lists strikes and knows its funds."""
    (tmp_path / "config.toml").write_text(
        f'[accounts.paper]\nbroker = "paper"\ninstruments_path = {json.dumps(str(sample_master_path()))}\n'
    )

    result = run_cli(tmp_path, {"WEBHOOK_SECRET": SECRET, "TVBRIDGE_SERVER__DATA_DIR": str(tmp_path)}, "brokers")

    paper = result.stdout.split("paper  [ok]\n", 1)[1].split("  [", 1)[0]  # up to the next plugin's name
    assert "  listings:     yes (ATM strikes, current_week)\n  funds:        yes (percent_of_funds sizing)" in paper
