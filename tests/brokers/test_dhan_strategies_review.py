"""A strategy's share on Dhan is read from fills Dhan already made, not only those order follow-up has seen
(issue 19 review): the real dhanhq client against the fake Dhan API, through the real app, with follow-up's
polls far apart so only the settling before a share is read can see a fill."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from helpers import SECRET
from test_dhan_strategies import ALPHA, BETA, exit_all, intraday, send

from tvbridge.app import create_app
from tvbridge.config import load_config
from tvbridge.parsing import make_converter
from tvbridge.secretstore import resolve_credentials

if TYPE_CHECKING:
    from pathlib import Path

    from fake_dhan import FakeDhan


async def start(aiohttp_client: Any, tmp_path: Path, dhan_settings: dict[str, object]) -> Any:
    """alpha and beta on one Dhan account; order follow-up looks first after 60 s (never within a test)."""
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
""",
        encoding="utf-8",
    )
    env = {"WEBHOOK_SECRET": SECRET, "TVBRIDGE_SERVER__DATA_DIR": str(tmp_path)}
    config = load_config(path, make_converter(), env, tmp_path)
    return await aiohttp_client(create_app(config, make_converter(), resolve_credentials(config)))


async def test_a_repeated_exit_before_follow_up_looks_closes_nothing_more(
    aiohttp_client: Any, tmp_path: Path, fake_dhan: FakeDhan, dhan_settings: dict[str, object]
) -> None:
    """alpha 10 and beta 4 filled at Dhan (follow-up has not looked yet): alpha's EXIT_ALL sells its 10; Dhan
    fills it at once; alpha's repeated EXIT_ALL, before follow-up's next look, sends nothing (before: the journal
    still had alpha +10, so it sold 10 more: closed beta's 4 and opened a short of 6)."""
    client = await start(aiohttp_client, tmp_path, dhan_settings)
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
