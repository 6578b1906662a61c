"""Strategies (`[strategies.NAME]`, issue 19) on paper, through the real app: an alert's secret or path token picks
its strategy, which has its own accounts, sides, symbols, entry window, square-off, risk limits, halt, rate limit
and position (from tvbridge's own fills), and is named in the journal, the order log, the log and /status."""

from __future__ import annotations

import asyncio
import csv
import json
import sqlite3
import uuid
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import structlog
from helpers import SECRET, alert, leg
from structlog.testing import capture_logs

from tvbridge.app import create_app
from tvbridge.broker import BrokerRejectedError, CancelRequest, OrderResult
from tvbridge.commands import trading
from tvbridge.config import effective_settings, load_config
from tvbridge.errors import ConfigError
from tvbridge.keys import BROKERS, CREDENTIALS, JOURNAL, SQUARE_OFF
from tvbridge.parsing import make_converter
from tvbridge.secretstore import resolve_credentials
from tvbridge.sessions import EXCHANGE_TZ

if TYPE_CHECKING:
    from collections.abc import Callable

    from tvbridge.config import Config

    MakeConfig = Callable[..., Config]
    """`make_config(alpha="", beta="", extra="", rate=..., sessions=...)`: the fixture's config, its tables extended."""

ALPHA = "alpha-secret-0123456789abcdef"
BETA = "beta-secret-0123456789abcdef"
BETA_TOKEN = "beta-path-token-0123456789abcdef"
MONDAY_10 = datetime(2026, 12, 7, 10, 0, tzinfo=EXCHANGE_TZ)
"""A Monday (a trading day) at 10:00 exchange time."""


class Clock:
    """The app's wall clock, moved by the test (`create_app(clock=...)`)."""

    def __init__(self, at: datetime) -> None:
        self.at = at

    def __call__(self) -> datetime:
        return self.at


@pytest.fixture(name="make_config")
def make_config_fixture(tmp_path: Path, store_env: dict[str, str]) -> MakeConfig:
    """Paper, sessions off, the global secret, and the strategies alpha (secret) and beta (secret + path token),
    on the store under test (`store_env`: SQLite, or PostgreSQL on a `TVBRIDGE_TEST_STORE=postgresql` run)."""

    def make(
        alpha: str = "",
        beta: str = "",
        extra: str = "",
        rate: str = "per_strategy_burst = 1000",
        sessions: str = "enabled = false",
    ) -> Config:
        text = f"""
[sessions]
{sessions}
[rate_limit]
{rate}
{extra}
[strategies.alpha]
secret = "{ALPHA}"
{alpha}
[strategies.beta]
secret = "{BETA}"
path_token = "{BETA_TOKEN}"
{beta}
"""
        path = tmp_path / "config.toml"
        path.write_text(text, encoding="utf-8")
        env = {"WEBHOOK_SECRET": SECRET, "TVBRIDGE_SERVER__DATA_DIR": str(tmp_path), **store_env}
        return load_config(path, make_converter(), env, tmp_path)

    return make


Client = "TestClient[Any, Any]"


async def start(aiohttp_client: Any, config: Config, clock: Clock | None = None) -> Any:
    app = create_app(config, make_converter(), resolve_credentials(config), clock=clock or Clock(MONDAY_10))
    return await aiohttp_client(app)


def intraday(**overrides: Any) -> dict[str, Any]:
    return leg(**{"productType": "I", "price": "2900", **overrides})


def exit_all(**overrides: Any) -> dict[str, Any]:
    body = {**intraday(**overrides), "manage_position": "EXIT_ALL"}
    body.pop("quantity")
    return body


async def post(client: Any, body: dict[str, Any], status: int = 200) -> dict[str, Any]:
    """POST one alert (its own `id`: these tests repeat alerts on purpose, dedupe is not what they test)."""
    body.setdefault("id", uuid.uuid4().hex)
    response = await client.post("/webhook", json=body)
    text = await response.text()
    assert response.status == status, text
    answer: dict[str, Any] = json.loads(text)
    return answer


async def net(client: Any, account: str = "paper") -> int:
    return sum(p.net_quantity for p in await client.app[BROKERS][account].positions())


def admin(client: Any) -> dict[str, str]:
    return {"Authorization": f"Bearer {client.app[CREDENTIALS].admin_token}"}


def csv_rows(config: Config) -> list[dict[str, str]]:
    with config.data_path(config.order_log.file).open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def record_cancels(
    monkeypatch: pytest.MonkeyPatch, broker: Any, refuse: frozenset[str] = frozenset()
) -> list[CancelRequest]:
    """Every cancel the paper broker is asked for, in order, as a plugin receives it (its `alert_id` and
    `leg_number` are what tie the cancel to the alert in the plugin's own records, docs/plugins.md); a cancel of an
    order in `refuse` is refused as the broker refuses one that filled meanwhile."""
    requests: list[CancelRequest] = []
    cancel = broker.cancel

    async def recording(request: CancelRequest) -> list[OrderResult]:
        requests.append(request)
        if request.leg.order_id in refuse:
            raise BrokerRejectedError(f"order {request.leg.order_id} is already traded")
        result: list[OrderResult] = await cancel(request)
        return result

    monkeypatch.setattr(broker, "cancel", recording)
    return requests


# two strategies, one account, one symbol


async def test_each_strategy_exits_only_its_own_share(aiohttp_client: Any, make_config: MakeConfig) -> None:
    """alpha buys 10 and beta 4 RELIANCE on the same paper account (the broker holds 14): alpha's EXIT_ALL sells
    its 10 and leaves beta's 4; beta's then sells 4; the default strategy's share was never touched."""
    config = make_config()
    client = await start(aiohttp_client, config)
    await post(client, alert(intraday(quantity="10"), secret=ALPHA))
    await post(client, alert(intraday(quantity="4"), secret=BETA))
    assert await net(client) == 14

    body = await post(client, alert(exit_all(), secret=ALPHA))

    [result] = body["results"]
    assert (result["status"], result["transaction"], result["quantity"]) == ("success", "S", "10"), result
    assert await net(client) == 4
    body = await post(client, alert(exit_all(transactionType="S"), secret=BETA))
    assert (body["results"][0]["transaction"], body["results"][0]["quantity"]) == ("S", "4")
    assert await net(client) == 0
    body = await post(client, alert(exit_all(), secret=ALPHA))
    assert body["results"][0]["message"].startswith("nothing to close"), body


async def test_a_one_unit_share_is_exited_and_a_share_the_broker_holds_the_other_side_of_is_not(
    aiohttp_client: Any, make_config: MakeConfig
) -> None:
    """alpha buys 1 (the broker holds 1): its EXIT_ALL sells that 1. Then alpha buys 10 and the default strategy
    sells 15 (the broker is short 5): alpha's EXIT_ALL closes nothing (its long is not what the broker holds;
    buying would add to someone else's short) and the broker stays short 5."""
    config = make_config()
    client = await start(aiohttp_client, config)
    await post(client, alert(intraday(quantity="1"), secret=ALPHA))
    body = await post(client, alert(exit_all(), secret=ALPHA))
    assert [(r["status"], r["transaction"], r["quantity"]) for r in body["results"]] == [("success", "S", "1")]
    assert await net(client) == 0

    await post(client, alert(intraday(quantity="10"), secret=ALPHA))
    await post(client, alert(intraday(quantity="15", transactionType="S")))
    assert await net(client) == -5
    body = await post(client, alert(exit_all(), secret=ALPHA))
    assert body["results"][0]["message"].startswith("nothing to close"), body
    assert await net(client) == -5


async def test_an_exit_cancels_only_its_own_strategys_brackets(aiohttp_client: Any, make_config: MakeConfig) -> None:
    """alpha and beta each hold a bracket (entry filled, target and stop resting) in the same contract: alpha's
    EXIT_ALL cancels alpha's target and stop and sells its 10; beta's stop and target keep protecting beta's 4."""
    config = make_config()
    client = await start(aiohttp_client, config)
    alpha = await post(client, alert(intraday(quantity="10", target_price="3000", stoploss_price="2800"), secret=ALPHA))
    beta = await post(client, alert(intraday(quantity="4", target_price="3100", stoploss_price="2850"), secret=BETA))
    broker = client.app[BROKERS]["paper"]
    parts = {
        name: {p["order_id"] for p in body["results"][0]["bracket"] if p["part"] != "entry"}
        for name, body in (("alpha", alpha), ("beta", beta))
    }
    assert {o.order_id for o in await broker.open_orders()} == parts["alpha"] | parts["beta"]

    body = await post(client, alert(exit_all(), secret=ALPHA))

    [result] = body["results"]
    assert (result["transaction"], result["quantity"]) == ("S", "10"), result
    assert {o.order_id for o in await broker.open_orders()} == parts["beta"]
    assert await net(client) == 4


async def test_an_exit_names_every_bracket_of_its_strategy_it_cancelled(
    aiohttp_client: Any, make_config: MakeConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """alpha holds two brackets in the contract: its EXIT_ALL cancels both (one by one, by order id, each request
    under the alert's id and leg number) and its message names every part cancelled, not only the last
    bracket's."""
    client = await start(aiohttp_client, make_config())
    entries = [
        await post(client, alert(intraday(quantity=q, target_price="3000", stoploss_price="2800"), secret=ALPHA))
        for q in ("10", "5")
    ]
    resting = {p["order_id"] for body in entries for p in body["results"][0]["bracket"] if p["part"] != "entry"}
    broker = client.app[BROKERS]["paper"]
    assert {o.order_id for o in await broker.open_orders()} == resting

    requests = record_cancels(monkeypatch, broker)
    body = await post(client, alert(exit_all(), secret=ALPHA))

    [result] = body["results"]
    assert (result["transaction"], result["quantity"]) == ("S", "15"), result
    # one request a bracket, naming its entry (the broker cancels the bracket's resting parts), under this leg
    assert [(r.alert_id, r.leg_number, r.leg.order_id) for r in requests] == [
        (body["alert_id"], 1, entry["results"][0]["order_id"]) for entry in entries
    ]
    named = result["message"].rsplit("; cancelled bracket order(s) first: ", 1)[1]
    assert sorted(named.split(", ")) == sorted(resting), result["message"]
    assert await broker.open_orders() == []


async def test_cancel_order_by_symbol_cancels_only_the_strategys_orders(
    aiohttp_client: Any, make_config: MakeConfig
) -> None:
    """alpha and beta each have a limit order resting on RELIANCE: alpha's `cancel_order` for RELIANCE cancels
    alpha's, beta's keeps resting."""
    config = make_config()
    client = await start(aiohttp_client, config)
    # paper fills a resting buy when a later alert's price is at or below it: beta's is above alpha's
    mine = await post(client, alert(intraday(orderType="LMT", price="1990", quantity="1"), secret=ALPHA))
    theirs = await post(client, alert(intraday(orderType="LMT", price="2000", quantity="1"), secret=BETA))

    body = await post(client, alert({"symbol": "RELIANCE", "exchange": "NSE"}, secret=ALPHA, alertType="cancel_order"))

    [result] = body["results"]
    assert (result["status"], result["order_id"]) == ("success", mine["results"][0]["order_id"]), result
    open_ids = [o.order_id for o in await client.app[BROKERS]["paper"].open_orders()]
    assert open_ids == [theirs["results"][0]["order_id"]]


async def test_a_strategys_cancel_by_symbol_names_each_of_its_orders(
    aiohttp_client: Any, make_config: MakeConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """alpha has two limit orders resting on RELIANCE: its `cancel_order` cancels both, one by one by order id,
    each request under the alert's id and leg number, and the answer names both (not only the last the broker
    answered for)."""
    client = await start(aiohttp_client, make_config())
    requests = record_cancels(monkeypatch, client.app[BROKERS]["paper"])
    # paper fills a resting buy when a later alert's price is at or below it: the second's is above the first's
    first = await post(client, alert(intraday(orderType="LMT", price="1970", quantity="1"), secret=ALPHA))
    second = await post(client, alert(intraday(orderType="LMT", price="1980", quantity="2"), secret=ALPHA))
    ids = [first["results"][0]["order_id"], second["results"][0]["order_id"]]

    body = await post(client, alert({"symbol": "RELIANCE", "exchange": "NSE"}, secret=ALPHA, alertType="cancel_order"))

    [result] = body["results"]
    assert (result["status"], result["order_id"]) == ("success", ",".join(ids)), result
    assert result["message"] == f"cancelled 2 order(s): {', '.join(ids)}"
    assert await client.app[BROKERS]["paper"].open_orders() == []
    assert [(r.alert_id, r.leg_number, r.leg.order_id) for r in requests] == [(body["alert_id"], 1, i) for i in ids]


async def test_a_strategys_cancel_skips_an_order_that_finished_meanwhile_and_says_so_in_the_log(
    aiohttp_client: Any, make_config: MakeConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """alpha's two resting RELIANCE orders, the first traded by the time its cancel arrives (the broker refuses
    that cancel): the second is cancelled, the answer names it alone, and one `leg.cancel_skipped` line names the
    order skipped, its alert, leg and account, and the broker's reason."""
    client = await start(aiohttp_client, make_config())
    first = await post(client, alert(intraday(orderType="LMT", price="1970", quantity="1"), secret=ALPHA))
    second = await post(client, alert(intraday(orderType="LMT", price="1980", quantity="2"), secret=ALPHA))
    traded, resting = first["results"][0]["order_id"], second["results"][0]["order_id"]
    requests = record_cancels(monkeypatch, client.app[BROKERS]["paper"], refuse=frozenset({traded}))

    with capture_logs() as logs:
        body = await post(
            client, alert({"symbol": "RELIANCE", "exchange": "NSE"}, secret=ALPHA, alertType="cancel_order")
        )

    [result] = body["results"]
    assert (result["status"], result["order_id"], result["message"]) == (
        "success",
        resting,
        f"cancelled 1 order(s): {resting}",
    )
    assert [r.leg.order_id for r in requests] == [traded, resting]
    skipped = [e for e in logs if e["event"] == "leg.cancel_skipped"]
    assert skipped == [
        {
            "event": "leg.cancel_skipped",
            "log_level": "info",
            "alert_id": body["alert_id"],
            "leg": 1,
            "account": "paper",
            "order_id": traded,
            "reason": f"order {traded} is already traded",
        }
    ]
    assert [o.order_id for o in await client.app[BROKERS]["paper"].open_orders()] == [traded]


async def test_the_default_strategy_owns_what_the_named_ones_do_not(
    aiohttp_client: Any, make_config: MakeConfig
) -> None:
    """The global secret (`default`) trades beside a named strategy: its EXIT_ALL closes the broker's position
    beyond alpha's share (so nothing changes for a server without strategies)."""
    config = make_config()
    client = await start(aiohttp_client, config)
    await post(client, alert(intraday(quantity="10"), secret=ALPHA))
    await post(client, alert(intraday(quantity="3")))

    body = await post(client, alert(exit_all()))

    assert (body["results"][0]["transaction"], body["results"][0]["quantity"]) == ("S", "3")
    assert await net(client) == 10


async def test_a_target_position_moves_only_the_strategys_share(aiohttp_client: Any, make_config: MakeConfig) -> None:
    """beta holds 4 while alpha holds 10: beta's target of 6 buys 2 (from its own 4, not the account's 14)."""
    config = make_config()
    client = await start(aiohttp_client, config)
    await post(client, alert(intraday(quantity="10"), secret=ALPHA))
    await post(client, alert(intraday(quantity="4"), secret=BETA))
    target = intraday(position_size="6")
    target.pop("quantity")

    body = await post(client, alert(target, secret=BETA))

    [result] = body["results"]
    assert (result["transaction"], result["quantity"], result["position_before"]) == ("B", "2", 4), result
    assert await net(client) == 16


async def test_a_disagreement_between_broker_and_strategies_is_logged_and_shown(
    aiohttp_client: Any, make_config: MakeConfig
) -> None:
    """A position tvbridge did not place (bought in the broker's terminal) makes the broker's net differ from
    the strategies' sum: an EXIT_ALL logs `strategy.position_mismatch`, and /status has a mismatch row."""
    config = make_config()
    client = await start(aiohttp_client, config)
    await post(client, alert(intraday(quantity="10"), secret=ALPHA))
    broker = client.app[BROKERS]["paper"]
    from tvbridge.broker import OrderRequest  # noqa: PLC0415 - only here: an order outside tvbridge's alerts
    from tvbridge.models import Exchange, Instrument, OrderLeg, OrderType, Product, Side  # noqa: PLC0415

    manual = OrderLeg(
        side=Side.BUY,
        order_type=OrderType.MARKET,
        quantity=5,
        exchange=Exchange.NSE,
        symbol="RELIANCE",
        instrument=Instrument.EQUITY,
        product=Product.INTRADAY,
        price=__import__("decimal").Decimal(2900),
    )
    await broker.place(OrderRequest(client_order_id="MANUAL-1", alert_id="MANUAL", leg_number=1, leg=manual))

    with capture_logs() as events:
        await post(client, alert(exit_all(), secret=ALPHA))

    [mismatch] = [e for e in events if e["event"] == "strategy.position_mismatch"]
    assert (mismatch["broker_net"], mismatch["strategies_sum"], mismatch["by_strategy"]) == (15, 10, {"alpha": 10})
    assert await net(client) == 5
    status = await (await client.get("/status", headers={**admin(client), "Accept": "application/json"})).json()
    rows = status["strategy_positions"]
    assert [r for r in rows if r.get("mismatch")] == [
        {
            "account": "paper",
            "strategy": None,
            "contract": "NSE|RELIANCE|EQ||||I",
            "net_quantity": 5,
            "mismatch": "the broker holds 5, the strategies' fills add up to 0",
        }
    ]


# picking the strategy


async def test_a_wrong_strategy_secret_is_the_same_401_as_any(aiohttp_client: Any, make_config: MakeConfig) -> None:
    """A secret no strategy has, one that nearly matches a strategy's, and a wrong path token are all 401
    "Invalid webhook secret", word for word the same; nothing is placed."""
    config = make_config()
    client = await start(aiohttp_client, config)
    bodies = []
    for secret in ("nobody's secret at all", ALPHA[:-1] + "X", ALPHA + "0"):
        body = await post(client, alert(intraday(), secret=secret), status=401)
        bodies.append({k: v for k, v in body.items() if k != "alert_id"})
    assert bodies[0] == bodies[1] == bodies[2]
    assert bodies[0]["message"] == "Invalid webhook secret"
    response = await client.post(f"/webhook/{BETA_TOKEN}x", json=alert(intraday()))
    assert response.status == 401
    assert await net(client) == 0


async def test_the_path_token_picks_its_strategy(aiohttp_client: Any, make_config: MakeConfig) -> None:
    """An alert on /webhook/<beta's path token> runs as beta (its secret in the body is not needed)."""
    config = make_config()
    client = await start(aiohttp_client, config)
    body = alert(intraday(quantity="2"))
    body.pop("secret")
    response = await client.post(f"/webhook/{BETA_TOKEN}", json=body)
    assert response.status == 200, await response.text()
    answer = await response.json()
    stored = await (await client.get(f"/alerts/{answer['alert_id']}", headers=admin(client))).json()
    assert stored["strategy"] == "beta"


async def test_the_strategy_is_named_in_journal_order_log_log_lines_and_status(
    aiohttp_client: Any, make_config: MakeConfig
) -> None:
    """Each record names the alert's strategy (`default` for the global secret): the journal, the order log's
    last column (the older columns keep their places), every log line of the alert, the /status rows, the
    metrics' `strategy` label."""
    config = make_config()
    client = await start(aiohttp_client, config)
    with capture_logs(processors=[structlog.contextvars.merge_contextvars]) as events:
        first = await post(client, alert(intraday(), secret=ALPHA))
    second = await post(client, alert(intraday(symbol="INFY")))

    for body, name in ((first, "alpha"), (second, "default")):
        stored = await (await client.get(f"/alerts/{body['alert_id']}", headers=admin(client))).json()
        assert stored["strategy"] == name
        assert stored["legs"][0]["result"]["strategy"] == name
    header = config.data_path(config.order_log.file).read_text(encoding="utf-8").splitlines()[0].split(",")
    assert header[-1] == "strategy"
    assert header[:12] == [
        "timestamp",
        "alert_type",
        "symbol",
        "exchange",
        "transaction",
        "quantity",
        "order_type",
        "product_type",
        "price",
        "status",
        "order_id",
        "message",
    ]
    assert [(r["alert_id"], r["strategy"]) for r in csv_rows(config)] == [
        (first["alert_id"], "alpha"),
        (second["alert_id"], "default"),
    ]
    alert_lines = [e for e in events if e.get("alert_id") == first["alert_id"]]
    assert {e["event"] for e in alert_lines} & {"alert.done", "alert.processed"}, alert_lines  # the alert's summary
    assert all(e.get("strategy") == "alpha" for e in alert_lines), alert_lines
    status = await (await client.get("/status", headers={**admin(client), "Accept": "application/json"})).json()
    assert {a["alert_id"]: a["strategy"] for a in status["alerts"]} == {
        first["alert_id"]: "alpha",
        second["alert_id"]: "default",
    }
    assert {r["strategy"]: r["net_quantity"] for r in status["strategy_positions"]} == {"alpha": 10, "default": 10}
    metrics = await (await client.get("/metrics")).text()
    assert 'tvbridge_legs_total{account="paper",broker="paper",status="success",strategy="alpha"} 1.0' in metrics
    assert 'tvbridge_alerts_total{outcome="success",strategy="alpha"} 1.0' in metrics
    assert 'tvbridge_alerts_total{outcome="success",strategy="default"} 1.0' in metrics


async def test_the_same_alert_from_two_strategies_runs_twice(aiohttp_client: Any, make_config: MakeConfig) -> None:
    """Two strategies firing the same alert on the same bar are two trades, not a repeat: dedupe is per
    strategy (a repeat within one strategy is still a duplicate)."""
    config = make_config()
    client = await start(aiohttp_client, config)
    same = alert(intraday(quantity="3"))
    statuses = []
    for secret in (ALPHA, BETA, ALPHA):
        response = await client.post("/webhook", json={**same, "secret": secret})
        statuses.append((await response.json())["status"])
    assert statuses == ["success", "success", "duplicate"]
    assert await net(client) == 6


async def test_order_follow_up_lines_name_the_orders_strategy(aiohttp_client: Any, make_config: MakeConfig) -> None:
    """alpha's limit order rests, a later alert's price fills it: order follow-up's line about that fill, logged
    outside any request, names alpha."""
    followup = "[followup]\nfirst_interval_s = 0.05\nmax_interval_s = 0.2\nmax_lookups_per_s = 50"
    config = make_config(extra=followup)
    client = await start(aiohttp_client, config)
    resting = await post(client, alert(intraday(orderType="LMT", price="1990", quantity="1"), secret=ALPHA))
    with capture_logs(processors=[structlog.contextvars.merge_contextvars]) as events:
        await post(client, alert(intraday(price="1980", quantity="1")))  # the market at 1980: alpha's buy fills
        async with asyncio.timeout(10):
            while True:
                if [e for e in events if e["event"] == "order.state_changed"]:
                    break
                await asyncio.sleep(0.02)  # the pace of asking, not synchronisation: the loop waits for the line
    [changed] = [e for e in events if e["event"] == "order.state_changed"]
    assert (changed["alert_id"], changed["state"], changed["strategy"]) == (resting["alert_id"], "filled", "alpha")


# accounts, sides, symbols, entry window


async def test_a_strategy_goes_to_its_own_accounts(aiohttp_client: Any, make_config: MakeConfig) -> None:
    """`accounts` overrides routing.accounts: alpha's alert goes to the account `shadow` only."""
    config = make_config(alpha='accounts = ["shadow"]', extra='[accounts.shadow]\nbroker = "paper"')
    client = await start(aiohttp_client, config)
    body = await post(client, alert(intraday(), secret=ALPHA))
    assert [r["account"] for r in body["results"]] == ["shadow"]
    assert (await net(client, "shadow"), await net(client, "paper")) == (10, 0)
    body = await post(client, alert(intraday()))
    assert [r["account"] for r in body["results"]] == ["paper"]


async def test_allowed_sides_refuse_entries_not_exits(aiohttp_client: Any, make_config: MakeConfig) -> None:
    """long_only: a SELL that opens a short is refused (nothing sent); after a BUY of 10, a SELL of 10 (an exit)
    passes, while a SELL of 20 (a reversal into a short) is refused. short_only refuses the BUY entry."""
    config = make_config(alpha='allowed_sides = "long_only"', beta='allowed_sides = "short_only"')
    client = await start(aiohttp_client, config)

    refused = (await post(client, alert(intraday(transactionType="S"), secret=ALPHA)))["results"][0]
    assert refused["status"] == "failed"
    assert refused["message"].startswith("strategy: allowed_sides is long_only"), refused
    assert await net(client) == 0
    await post(client, alert(intraday(quantity="10"), secret=ALPHA))
    reversal = (await post(client, alert(intraday(transactionType="S", quantity="20"), secret=ALPHA)))["results"][0]
    assert reversal["status"] == "failed"
    closing = (await post(client, alert(intraday(transactionType="S", quantity="10"), secret=ALPHA)))["results"][0]
    assert closing["status"] == "success"
    assert await net(client) == 0
    short_only = (await post(client, alert(intraday(), secret=BETA)))["results"][0]
    assert short_only["message"].startswith("strategy: allowed_sides is short_only"), short_only


async def test_symbols_is_an_allowlist(aiohttp_client: Any, make_config: MakeConfig) -> None:
    """alpha may trade RELIANCE only: INFY is refused before sending, RELIANCE passes; beta trades anything."""
    config = make_config(alpha='symbols = ["RELIANCE"]')
    client = await start(aiohttp_client, config)
    infy = (await post(client, alert(intraday(symbol="INFY"), secret=ALPHA)))["results"][0]
    assert (infy["status"], infy["message"]) == (
        "failed",
        "strategy: symbol INFY is not in this strategy's symbols; nothing was sent",
    )
    assert (await post(client, alert(intraday(), secret=ALPHA)))["results"][0]["status"] == "success"
    assert (await post(client, alert(intraday(symbol="INFY"), secret=BETA)))["results"][0]["status"] == "success"


async def test_entry_window_refuses_entries_outside_it_and_never_exits(
    aiohttp_client: Any, make_config: MakeConfig
) -> None:
    """entry_window 09:30-15:00 (exchange time): an entry at 09:20 is refused, at 10:00 placed; at 15:10 another
    entry is refused while the EXIT_ALL of the position goes through."""
    config = make_config(alpha='entry_window = "09:30-15:00"')
    clock = Clock(MONDAY_10.replace(hour=9, minute=20))
    client = await start(aiohttp_client, config, clock)

    early = (await post(client, alert(intraday(), secret=ALPHA)))["results"][0]
    assert early["status"] == "failed"
    assert "outside its entry_window 09:30-15:00 (now 09:20 exchange time)" in early["message"]
    clock.at = MONDAY_10
    assert (await post(client, alert(intraday(), secret=ALPHA)))["results"][0]["status"] == "success"
    clock.at = MONDAY_10.replace(hour=15, minute=10)
    late = (await post(client, alert(intraday(), secret=ALPHA)))["results"][0]
    assert late["status"] == "failed"
    out = (await post(client, alert(exit_all(), secret=ALPHA)))["results"][0]
    assert (out["status"], out["transaction"], out["quantity"]) == ("success", "S", "10")
    assert await net(client) == 0


async def test_strategy_risk_limits_apply_besides_the_accounts(aiohttp_client: Any, make_config: MakeConfig) -> None:
    """alpha's own max_qty_per_order 5 and max_orders_per_day 2 (over its accounts); beta is not held to them."""
    config = make_config(alpha="max_qty_per_order = 5\nmax_orders_per_day = 2")
    client = await start(aiohttp_client, config)
    big = (await post(client, alert(intraday(quantity="6"), secret=ALPHA)))["results"][0]
    assert big["message"] == "strategy alpha: risk: quantity 6 is over max_qty_per_order 5"
    for _ in range(2):
        assert (await post(client, alert(intraday(quantity="5"), secret=ALPHA)))["results"][0]["status"] == "success"
    third = (await post(client, alert(intraday(quantity="5"), secret=ALPHA)))["results"][0]
    assert third["message"] == "risk: 2 order(s) already sent today by strategy alpha; max_orders_per_day is 2"
    assert (await post(client, alert(intraday(quantity="6"), secret=BETA)))["results"][0]["status"] == "success"


async def test_a_strategys_daily_count_survives_a_restart(aiohttp_client: Any, make_config: MakeConfig) -> None:
    """max_orders_per_day 2 for alpha: one order, a restart (the count is read again from the journal, without
    counting the next order's own journal mark), a second order passes, the third is refused."""
    config = make_config(alpha="max_orders_per_day = 2")
    clock = Clock(datetime.now(EXCHANGE_TZ))  # the journal's own timestamps are the machine's
    client = await start(aiohttp_client, config, clock)
    assert (await post(client, alert(intraday(), secret=ALPHA)))["results"][0]["status"] == "success"
    await client.close()

    client = await start(aiohttp_client, config, clock)
    assert (await post(client, alert(intraday(), secret=ALPHA)))["results"][0]["status"] == "success"
    third = (await post(client, alert(intraday(), secret=ALPHA)))["results"][0]
    assert third["message"] == "risk: 2 order(s) already sent today by strategy alpha; max_orders_per_day is 2"


# halt and rate limit


async def test_a_halted_strategy_is_refused_while_another_trades(aiohttp_client: Any, make_config: MakeConfig) -> None:
    """POST /admin/halt {"strategy": "alpha"}: alpha's alerts get 503 "strategy alpha halted: ..." and place
    nothing, beta and the default strategy trade; resume {"strategy": "alpha"} lets alpha trade again."""
    config = make_config()
    client = await start(aiohttp_client, config)
    response = await client.post("/admin/halt", json={"strategy": "alpha", "reason": "drawdown"}, headers=admin(client))
    assert (response.status, (await response.json())["strategy"]) == (200, "alpha")

    refused = await post(client, alert(intraday(), secret=ALPHA), status=503)
    assert refused["message"] == "strategy alpha halted: drawdown"
    assert (await post(client, alert(intraday(quantity="3"), secret=BETA)))["status"] == "success"
    assert (await post(client, alert(intraday(quantity="1"))))["status"] == "success"
    assert await net(client) == 4
    unknown = await client.post("/admin/halt", json={"strategy": "gamma"}, headers=admin(client))
    assert unknown.status == 400

    response = await client.post("/admin/resume", json={"strategy": "alpha"}, headers=admin(client))
    assert (await response.json())["was_halted"] is True
    assert (await post(client, alert(intraday(), secret=ALPHA)))["status"] == "success"


async def test_cli_halt_of_a_strategy_reaches_the_running_server(
    aiohttp_client: Any, make_config: MakeConfig, capsys: pytest.CaptureFixture[str]
) -> None:
    """`tvbridge halt --strategy beta` halts beta for the running server (its file), not alpha; `resume
    --strategy beta` ends it; an unknown strategy is exit 2."""
    config = make_config()
    client = await start(aiohttp_client, config)
    assert trading.main(config, ["halt", "--strategy", "beta", "--reason", "news"]) == 0
    assert "strategy beta halted: news" in capsys.readouterr().out
    assert (await post(client, alert(intraday(), secret=BETA), status=503))["message"] == "strategy beta halted: news"
    assert (await post(client, alert(intraday(), secret=ALPHA)))["status"] == "success"
    assert trading.main(config, ["resume", "--strategy", "beta"]) == 0
    assert (await post(client, alert(intraday(), secret=BETA)))["status"] == "success"
    assert trading.main(config, ["halt", "--strategy", "gamma"]) == 2


async def test_the_rate_limit_is_per_strategy(aiohttp_client: Any, make_config: MakeConfig) -> None:
    """per_strategy_burst 2: alpha's third alert (on other symbols, too) is 429, while beta still sends."""
    config = make_config(rate="per_strategy_per_s = 0.001\nper_strategy_burst = 2")
    client = await start(aiohttp_client, config)
    for symbol in ("RELIANCE", "INFY"):
        await post(client, alert(intraday(symbol=symbol), secret=ALPHA))
    limited = await client.post("/webhook", json=alert(intraday(symbol="TCS"), secret=ALPHA))
    assert limited.status == 429
    assert "too many alerts for this strategy" in (await limited.json())["message"]
    assert (await post(client, alert(intraday(symbol="TCS"), secret=BETA)))["status"] == "success"


# square-off


async def test_square_off_closes_the_strategys_intraday_positions_once_a_day(
    aiohttp_client: Any, make_config: MakeConfig
) -> None:
    """square_off_at 15:15: before it nothing happens; at 15:16 alpha's intraday 10 is closed and its resting
    limit order cancelled, journaled as a flatten under alpha, while beta's position and alpha's CNC holding
    stay; a second run that day (and after a restart) does nothing; the next trading day it runs again."""
    config = make_config(alpha='square_off_at = "15:15"')
    clock = Clock(MONDAY_10)
    client = await start(aiohttp_client, config, clock)
    await post(client, alert(intraday(quantity="10"), secret=ALPHA))
    await post(client, alert(intraday(quantity="4"), secret=BETA))
    await post(client, alert(leg(quantity="7", price="2900"), secret=ALPHA))  # CNC: not squared off
    resting = await post(client, alert(intraday(orderType="LMT", price="2000", quantity="1"), secret=ALPHA))
    resting_id = resting["results"][0]["order_id"]
    square_off = client.app[SQUARE_OFF]

    clock.at = MONDAY_10.replace(hour=15, minute=14)
    assert await square_off.run_due() == []
    clock.at = MONDAY_10.replace(hour=15, minute=16)
    [report] = await square_off.run_due()

    assert report.status == "success"
    assert sorted((r.order_type, r.transaction, r.quantity, r.strategy) for r in report.results) == [
        ("CANCEL", "B", "1", "alpha"),
        ("MKT", "S", "10", "alpha"),
    ]
    assert [r.order_id for r in report.results if r.order_type == "CANCEL"] == [resting_id]
    stored = await (await client.get(f"/alerts/{report.alert_id}", headers=admin(client))).json()
    assert (stored["alert_type"], stored["strategy"]) == ("flatten", "alpha")
    positions = {p.product.value: p.net_quantity for p in await client.app[BROKERS]["paper"].positions()}
    assert positions == {"I": 4, "C": 7}
    assert await square_off.run_due() == []
    await client.close()

    client = await start(aiohttp_client, config, clock)  # a restart the same day: already done
    assert await client.app[SQUARE_OFF].run_due() == []
    await post(client, alert(intraday(quantity="2"), secret=ALPHA))
    clock.at += timedelta(days=1)
    [report] = await client.app[SQUARE_OFF].run_due()
    assert [(r.transaction, r.quantity) for r in report.results] == [("S", "2")]


async def test_no_square_off_on_a_weekend(aiohttp_client: Any, make_config: MakeConfig) -> None:
    """On a Sunday past square_off_at nothing runs (not a trading day)."""
    config = make_config(alpha='square_off_at = "15:15"')
    clock = Clock(MONDAY_10 - timedelta(days=1) + timedelta(hours=6))
    client = await start(aiohttp_client, config, clock)
    assert await client.app[SQUARE_OFF].run_due() == []


# config


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ('[strategies.x]\naccounts = ["paper"]', "strategies.x: needs a secret or a path_token"),
        (f'[strategies.x]\nsecret = "{SECRET}"', "strategies.x.secret: is already used by another strategy or by"),
        ('[strategies."a b"]\nsecret = "0123456789abcdefXYZ"', "strategies.a b: a strategy name is 1-40 letters"),
        ('[strategies.default]\nsecret = "0123456789abcdefXYZ"', "strategies.default: a strategy name is"),
        ('[strategies.x]\nsecret = "0123456789abcdefXYZ"\naccounts = ["nope"]', "no [accounts.nope] table"),
        ('[strategies.x]\nsecret = "0123456789abcdefXYZ"\nallowed_sides = "long"', "allowed_sides"),
        ('[strategies.x]\nsecret = "0123456789abcdefXYZ"\nentry_window = "15:00-09:00"', "entry_window must be"),
        ('[strategies.x]\nsecret = "0123456789abcdefXYZ"\nsquare_off_at = "25:00"', "square_off_at must be"),
        ('[strategies.x]\nsecret = "0123456789abcdefXYZ"\nsecrett = "typo"', "secrett"),
    ],
)
def test_a_bad_strategy_table_stops_the_start(tmp_path: Path, table: str, message: str) -> None:
    """Each mistake in a [strategies.NAME] table is a config error naming it; none shows a secret."""
    path = tmp_path / "config.toml"
    path.write_text(table, encoding="utf-8")
    env = {"WEBHOOK_SECRET": SECRET, "TVBRIDGE_SERVER__DATA_DIR": str(tmp_path)}
    with pytest.raises(ConfigError, match=None) as caught:
        load_config(path, make_converter(), env, tmp_path)
    assert message in str(caught.value)
    assert SECRET not in str(caught.value)
    assert "0123456789abcdefXYZ" not in str(caught.value)


def test_check_config_masks_every_strategys_secret_and_path_token(make_config: MakeConfig) -> None:
    """`tvbridge check-config`'s effective settings show that a strategy's secret and path token are set, never
    their values."""
    config = make_config(alpha='accounts = ["paper"]')
    shown = json.dumps(effective_settings(config, make_converter()))
    for value in (ALPHA, BETA, BETA_TOKEN):
        assert value not in shown
    assert json.loads(shown)["strategies"]["beta"]["path_token"] == "********"


def test_a_weak_strategy_secret_is_refused_for_a_live_account(tmp_path: Path) -> None:
    """A strategy whose accounts include a live one needs a strong secret (16+ characters), like [auth]."""
    path = tmp_path / "config.toml"
    path.write_text(
        '[routing]\naccounts = ["paper"]\n[accounts.live]\nbroker = "paper"\nlive = true\n'
        '[strategies.x]\nsecret = "short-one"\naccounts = ["live"]\n',
        encoding="utf-8",
    )
    env = {"WEBHOOK_SECRET": SECRET, "TVBRIDGE_SERVER__DATA_DIR": str(tmp_path)}
    config = load_config(path, make_converter(), env, tmp_path)
    with pytest.raises(ConfigError, match=r"strategies\.x\.secret is shorter than 16 characters"):
        resolve_credentials(config)


async def test_alerts_of_two_strategies_committed_together_keep_their_own(
    aiohttp_client: Any, make_config: MakeConfig, store_env: dict[str, str]
) -> None:
    """Eight one-leg paper alerts of alpha and beta at once share the journal's group commits, and each is
    finished inside its own (the paper book joins it: one commit per alert). Each keeps its strategy: in the
    journal's alert and leg result, in the order log's `strategy` column, and the journal's stored answer is the
    one the client got, byte for byte (the in-commit finish runs under the alert's strategy, not the last one's)."""
    if store_env:
        pytest.skip("the paper book joins the SQLite journal only")
    config = make_config()
    client = await start(aiohttp_client, config)
    await post(client, alert(intraday(quantity="1"), secret=ALPHA))
    secrets = [ALPHA, BETA] * 4
    bodies = [alert(intraday(quantity="1"), secret=s, id=uuid.uuid4().hex) for s in secrets]
    responses = await asyncio.gather(*(client.post("/webhook", json=b) for b in bodies))
    texts = [await r.text() for r in responses]
    await client.app[JOURNAL].settle()
    rows = {row["alert_id"]: row for row in csv_rows(config)}
    conn = sqlite3.connect(config.data_path("tvbridge.sqlite3"))
    try:
        for response, text, secret in zip(responses, texts, secrets, strict=True):
            assert response.status == 200, text
            alert_id = json.loads(text)["alert_id"]
            want = "alpha" if secret == ALPHA else "beta"
            strategy, stored = conn.execute(
                "SELECT strategy, response FROM alerts WHERE alert_id = ?", (alert_id,)
            ).fetchone()
            (result,) = conn.execute("SELECT result FROM legs WHERE alert_id = ?", (alert_id,)).fetchone()
            assert (strategy, json.loads(result)["strategy"], rows[alert_id]["strategy"]) == (want, want, want)
            assert stored == text
    finally:
        conn.close()
