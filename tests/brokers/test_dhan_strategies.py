"""Two strategies on one Dhan account and one symbol (issue 19): the real dhanhq client against the fake Dhan API,
through the real app. Each strategy's position is what its own orders filled (order follow-up records Dhan's
fills in the journal), so each EXIT_ALL closes only its own share of the account's net position. Before a share
is read, the contract's orders that are not final are looked up (`Journal.unsettled`), a bracket whose entry
filled but whose target or stop still rests included: its exit may have filled since."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import TYPE_CHECKING, Any, Final

from helpers import SECRET, alert, leg
from test_strategies import admin

from tvbridge.app import create_app
from tvbridge.config import load_config
from tvbridge.keys import CREDENTIALS
from tvbridge.parsing import make_converter
from tvbridge.secretstore import resolve_credentials

if TYPE_CHECKING:
    from pathlib import Path

    from fake_dhan import FakeDhan

ALPHA: Final = "alpha-secret-0123456789abcdef"
BETA: Final = "beta-secret-0123456789abcdef"
WAIT_S: Final = 10.0


FAST_FOLLOWUP: Final = "first_interval_s = 0.05\nmax_interval_s = 0.2\nmax_lookups_per_s = 50"
SLOW_FOLLOWUP: Final = "first_interval_s = 60\nmax_interval_s = 120"  # never within a test


async def start(
    aiohttp_client: Any,
    tmp_path: Path,
    dhan_settings: dict[str, object],
    store_env: dict[str, str],
    *,
    followup: str = FAST_FOLLOWUP,
    strategies: dict[str, str] | None = None,
) -> Any:
    """The app on one Dhan account with the strategies given (name to secret; alpha and beta unless said).
    `SLOW_FOLLOWUP`: order follow-up never looks within the test, so only the lookups before a share is read can
    see a fill."""
    account = "\n".join(f"{key} = {json.dumps(value)}" for key, value in dhan_settings.items())
    own = "".join(
        f'[strategies.{name}]\nsecret = "{secret}"\n'
        for name, secret in (strategies or {"alpha": ALPHA, "beta": BETA}).items()
    )
    path = tmp_path / "config.toml"
    path.write_text(
        f"""
[sessions]
enabled = false
[followup]
{followup}
[routing]
accounts = ["dhan"]
[accounts.dhan]
broker = "dhan"
{account}
{own}""",
        encoding="utf-8",
    )
    env = {"WEBHOOK_SECRET": SECRET, "TVBRIDGE_SERVER__DATA_DIR": str(tmp_path), **store_env}  # conftest
    config = load_config(path, make_converter(), env, tmp_path)
    return await aiohttp_client(create_app(config, make_converter(), resolve_credentials(config)))


def intraday(**overrides: Any) -> dict[str, Any]:
    return leg(**{"productType": "I", **overrides})


def exit_all() -> dict[str, Any]:
    body = {**intraday(), "manage_position": "EXIT_ALL"}
    body.pop("quantity")
    return body


async def send(client: Any, secret: str, body: dict[str, Any]) -> dict[str, Any]:
    response = await client.post("/webhook", json=alert(body, secret=secret, id=uuid.uuid4().hex))
    answer: dict[str, Any] = await response.json()
    assert response.status == 200, answer
    (result,) = answer["results"]
    assert result["status"] == "success", result
    return {**result, "alert_id": answer["alert_id"]}


async def filled(client: Any, fake_dhan: FakeDhan, result: dict[str, Any]) -> None:
    """Dhan fills the order; wait (bounded) until order follow-up has journaled the fill."""
    fake_dhan.trade(result["order_id"], price="2900")
    headers = {"Authorization": f"Bearer {client.app[CREDENTIALS].admin_token}"}
    async with asyncio.timeout(WAIT_S):
        while True:
            record = await (await client.get(f"/alerts/{result['alert_id']}", headers=headers)).json()
            if record["legs"][0]["order_state"] == "filled":
                return
            await asyncio.sleep(0.02)  # the pace of asking, not synchronisation: the loop waits for the state


async def test_each_strategy_exits_only_its_own_share_on_dhan(
    aiohttp_client: Any,
    tmp_path: Path,
    fake_dhan: FakeDhan,
    dhan_settings: dict[str, object],
    store_env: dict[str, str],
) -> None:
    """alpha buys 10 and beta 4 RELIANCE intraday on one Dhan account (Dhan shows 14): alpha's EXIT_ALL sends
    Dhan one SELL of 10, and after it filled (Dhan shows 4) beta's EXIT_ALL sends one SELL of 4."""
    client = await start(aiohttp_client, tmp_path, dhan_settings, store_env)
    await filled(client, fake_dhan, await send(client, ALPHA, intraday(quantity="10")))
    await filled(client, fake_dhan, await send(client, BETA, intraday(quantity="4")))
    fake_dhan.set_position("2885", 14, product="INTRADAY", trading_symbol="RELIANCE")

    closing = await send(client, ALPHA, exit_all())

    sent = fake_dhan.placed()[-1]
    assert (sent["transactionType"], sent["quantity"], sent["productType"]) == ("SELL", 10, "INTRADAY")
    assert (closing["transaction"], closing["quantity"]) == ("S", "10")
    await filled(client, fake_dhan, closing)
    fake_dhan.set_position("2885", 4, product="INTRADAY", trading_symbol="RELIANCE")

    await send(client, BETA, exit_all())

    sent = fake_dhan.placed()[-1]
    assert (sent["transactionType"], sent["quantity"]) == ("SELL", 4)
    assert len(fake_dhan.placed()) == 4


async def test_a_repeated_exit_before_follow_up_looks_closes_nothing_more(
    aiohttp_client: Any,
    tmp_path: Path,
    fake_dhan: FakeDhan,
    dhan_settings: dict[str, object],
    store_env: dict[str, str],
) -> None:
    """alpha 10 and beta 4 filled at Dhan (follow-up has not looked yet): alpha's EXIT_ALL sells its 10; Dhan
    fills it at once; alpha's repeated EXIT_ALL, before follow-up's next look, sends nothing (before: the journal
    still had alpha +10, so it sold 10 more: closed beta's 4 and opened a short of 6)."""
    client = await start(aiohttp_client, tmp_path, dhan_settings, store_env, followup=SLOW_FOLLOWUP)
    fake_dhan.trade((await send(client, ALPHA, intraday(quantity="10")))["order_id"], price="2900")
    fake_dhan.trade((await send(client, BETA, intraday(quantity="4")))["order_id"], price="2900")
    fake_dhan.set_position("2885", 14, product="INTRADAY", trading_symbol="RELIANCE")

    closing = await send(client, ALPHA, exit_all())

    assert (closing["transaction"], closing["quantity"]) == ("S", "10"), closing
    fake_dhan.trade(closing["order_id"], price="2900")
    fake_dhan.set_position("2885", 4, product="INTRADAY", trading_symbol="RELIANCE")

    again = await send(client, ALPHA, exit_all())

    assert again["message"].startswith("nothing to close"), again
    assert [(p["transactionType"], p["quantity"]) for p in fake_dhan.placed()] == [
        ("BUY", 10),
        ("BUY", 4),
        ("SELL", 10),
    ]


async def test_an_options_field_on_a_future_or_a_share_is_refused_before_dhan(
    aiohttp_client: Any,
    tmp_path: Path,
    fake_dhan: FakeDhan,
    dhan_settings: dict[str, object],
    store_env: dict[str, str],
) -> None:
    """A NIFTY future with `option_type` CE or a strike (did the trader mean the option?), a share with an expiry:
    Dhan would trade the future or the share and drop the field, and the strategy's fill would be booked under a
    contract nobody holds, out of reach of the EXIT_ALL that names the real one (it sold another strategy's lots
    instead). A 422 naming the field, nothing sent; the same leg without it is placed."""
    client = await start(aiohttp_client, tmp_path, dhan_settings, store_env)
    future = {"exchange": "NFO", "symbol": "NIFTY", "instrument": "FUT", "productType": "M", "quantity": "65"}
    future["expiry_date"] = "2026-12-29"
    option_only = "is for options only (instrument OPT, CE or PE), got FUT: remove it, or trade the option"
    refused = [
        ({**future, "option_type": "CE"}, f"order_legs[0].option_type: {option_only}"),
        ({**future, "strike_price": "24000"}, f"order_legs[0].strike_price: {option_only}"),
        (
            intraday(expiry_date="2026-12-29"),
            "order_legs[0].expiry_date: is for futures and options only, got EQ: remove it",
        ),
    ]
    for body, line in refused:
        response = await client.post("/webhook", json=alert(leg(**body), secret=ALPHA, id=uuid.uuid4().hex))
        answer = await response.json()
        assert (response.status, answer["status"]) == (422, "error"), answer
        assert line in answer["errors"], answer
    assert fake_dhan.placed() == []

    placed = await send(client, ALPHA, leg(**future))
    (sent,) = fake_dhan.placed()
    assert (sent["transactionType"], sent["quantity"], sent["productType"]) == ("BUY", 65, "MARGIN")
    assert placed["symbol"] == "NIFTY"


GAMMA: Final = "gamma-secret-0123456789abcdef"


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
    client = await start(
        aiohttp_client,
        tmp_path,
        dhan_settings,
        store_env,
        followup=SLOW_FOLLOWUP,
        strategies={"alpha": ALPHA, "beta": BETA, "gamma": GAMMA},
    )
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
