"""A strategy's bracket on Dhan and the fills order follow-up has not seen yet: the real dhanhq client against
the fake Dhan API, through the real app. Before a strategy's share of a contract is read, the orders of that
contract that are not final are looked up (`Journal.unsettled`), a bracket whose entry filled but whose target
or stop still rests included: its exit may have filled since."""

from __future__ import annotations

import json
import uuid
from typing import TYPE_CHECKING, Any

from helpers import SECRET, alert, leg
from test_strategies import admin

from tvbridge.app import create_app
from tvbridge.config import load_config
from tvbridge.parsing import make_converter
from tvbridge.secretstore import resolve_credentials

if TYPE_CHECKING:
    from pathlib import Path

    from fake_dhan import FakeDhan

ALPHA = "alpha-secret-0123456789abcdef"
BETA = "beta-secret-0123456789abcdef"
GAMMA = "gamma-secret-0123456789abcdef"


def intraday(**overrides: Any) -> dict[str, Any]:
    return leg(**{"productType": "I", **overrides})


def exit_all() -> dict[str, Any]:
    body = {**intraday(), "manage_position": "EXIT_ALL"}
    body.pop("quantity")
    return body


async def send(client: Any, secret: str, body: dict[str, Any]) -> dict[str, Any]:
    """POST one leg under `secret` (its own `id`): its result, 200 and success, with the alert's id."""
    response = await client.post("/webhook", json=alert(body, secret=secret, id=uuid.uuid4().hex))
    answer: dict[str, Any] = await response.json()
    assert response.status == 200, answer
    (result,) = answer["results"]
    assert result["status"] == "success", result
    return {**result, "alert_id": answer["alert_id"]}


async def start(
    aiohttp_client: Any, tmp_path: Path, dhan_settings: dict[str, object], store_env: dict[str, str]
) -> Any:
    """alpha, beta and gamma on one Dhan account; order follow-up's first look after 60 s (never within the test):
    only the lookups before a share is read can see a fill."""
    account = "\n".join(f"{key} = {json.dumps(value)}" for key, value in dhan_settings.items())
    path = tmp_path / "config.toml"
    path.write_text(
        f"""
[sessions]
enabled = false
[followup]
first_interval_s = 60
max_interval_s = 120
[routing]
accounts = ["dhan"]
[accounts.dhan]
broker = "dhan"
{account}
[strategies.alpha]
secret = "{ALPHA}"
[strategies.beta]
secret = "{BETA}"
[strategies.gamma]
secret = "{GAMMA}"
""",
        encoding="utf-8",
    )
    env = {"WEBHOOK_SECRET": SECRET, "TVBRIDGE_SERVER__DATA_DIR": str(tmp_path), **store_env}  # conftest
    config = load_config(path, make_converter(), env, tmp_path)
    return await aiohttp_client(create_app(config, make_converter(), resolve_credentials(config)))


async def test_a_bracket_whose_target_filled_unseen_leaves_its_strategy_nothing_to_close(
    aiohttp_client: Any,
    tmp_path: Path,
    fake_dhan: FakeDhan,
    dhan_settings: dict[str, object],
    store_env: dict[str, str],
) -> None:
    """alpha's bracket (BUY 10, target 3000, stop 2850) and beta's BUY 4 fill at Dhan; gamma's EXIT_ALL (it holds
    nothing) makes tvbridge look them up, so the journal has alpha's entry filled with its target and stop
    resting. Dhan then fills the target (alpha is flat; Dhan holds beta's 4) before follow-up looks again:
    alpha's EXIT_ALL looks the bracket up (a part was still open), finds the target's fill and sends nothing
    (without that look, alpha's +10 cut to Dhan's 4 sold beta's 4)."""
    client = await start(aiohttp_client, tmp_path, dhan_settings, store_env)
    entry = await send(
        client,
        ALPHA,
        intraday(orderType="LMT", price="2900", target_price="3000", stoploss_price="2850", quantity="10"),
    )
    fake_dhan.trade((await send(client, BETA, intraday(quantity="4")))["order_id"], price="2900")
    fake_dhan.super_trade_entry(entry["order_id"], price="2900")
    fake_dhan.set_position("2885", 14, product="INTRADAY", trading_symbol="RELIANCE")

    nothing = await send(client, GAMMA, exit_all())

    assert nothing["message"].startswith("nothing to close"), nothing
    record = await (await client.get(f"/alerts/{entry['alert_id']}", headers=admin(client))).json()
    (leg,) = record["legs"]
    assert (leg["order_state"], {p["part"]: p["state"] for p in leg["bracket"]}) == (
        "filled",
        {"entry": "filled", "target": "open", "stop_loss": "trigger_pending"},
    ), leg
    fake_dhan.super_fill(entry["order_id"], "TARGET_LEG")
    fake_dhan.set_position("2885", 4, product="INTRADAY", trading_symbol="RELIANCE")

    closing = await send(client, ALPHA, exit_all())

    assert closing["message"].startswith("nothing to close"), closing
    assert [(p["transactionType"], p["quantity"]) for p in fake_dhan.placed()] == [("BUY", 4)]
