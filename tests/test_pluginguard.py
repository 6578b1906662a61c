"""A plugin cannot stall or crash the host (`tvbridge/pluginguard.py`): a hanging plugin is cut off at the
account's `broker_timeout_s` and its placement resolved by lookup, a plugin that blocks the event loop is named
in a warning, and a plugin whose `start()` or settings parser raises stops the start with one line."""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

import attrs
import pytest
from durability_server import scripted_orders, server_env
from helpers import alert, leg, typed_leg, with_accounts
from server_process import run_cli
from structlog.testing import capture_logs

from tvbridge.broker import BrokerUnavailableError, OrderRequest, OrderResult, OrderState
from tvbridge.errors import ConfigError
from tvbridge.keys import JOURNAL
from tvbridge.pluginguard import GuardedBroker
from tvbridge.registry import guard_brokers

if TYPE_CHECKING:
    from pathlib import Path

    from helpers import ClientFactory

    from tvbridge.config import Config


def scripted(**settings: object) -> dict[str, object]:
    return {"broker": "scripted", "broker_timeout_s": 0.3, **settings}


async def test_a_plugin_that_places_then_hangs_is_resolved_by_lookup(
    make_client: ClientFactory, config: Config, tmp_path: Path
) -> None:
    """`place()` places the order and never answers: after `broker_timeout_s` the host stops waiting, asks
    `lookup()`, and reports the order it finds, once, with a message (answer, journal, log line) that says
    the plugin did not answer in time; the next leg runs normally."""
    config = with_accounts(config, {"sim": scripted(hang_after_place_symbols=["TCS"])})
    client = await make_client(config)
    started = time.monotonic()
    with capture_logs() as logs:
        response = await client.post("/webhook", json=alert(leg(symbol="TCS"), leg(symbol="INFY", sort_order="2")))
    elapsed = time.monotonic() - started
    body = await response.json()
    assert response.status == 200
    assert elapsed < 2.5  # inside TradingView's budget: the hang cost broker_timeout_s, not forever
    assert [(r["symbol"], r["status"]) for r in body["results"]] == [("TCS", "success"), ("INFY", "success")]
    message = body["results"][0]["message"]
    assert "found by lookup after" in message
    assert "the 'scripted' broker plugin (account 'sim') did not answer place() within 0.3 s" in message
    orders = scripted_orders(tmp_path)
    assert [o["symbol"] for o in orders] == ["TCS", "INFY"]
    assert body["results"][0]["order_id"] == orders[0]["order_id"]
    [resolved] = [e for e in logs if e["event"] == "leg.resolved_by_lookup"]
    assert resolved["account"] == "sim"
    assert resolved["order_id"] == orders[0]["order_id"]
    assert "'scripted' broker plugin" in resolved["reason"]
    record = await client.app[JOURNAL].get_alert(body["alert_id"])
    assert record is not None
    assert record["legs"][0]["state"] == "placed"
    assert "found by lookup after" in record["legs"][0]["message"]


async def test_a_plugin_that_hangs_before_placing_is_unknown_and_nothing_is_sent_late(
    make_client: ClientFactory, config: Config, tmp_path: Path
) -> None:
    """`place()` hangs before placing: after `broker_timeout_s` the leg is `unknown` (the lookup finds
    nothing), the message blames the plugin, the later leg is skipped, no order ever reaches the broker (the
    hung call was cancelled, not left to place late), and the next alert is served normally."""
    config = with_accounts(config, {"sim": scripted(hang_symbols=["TCS"])})
    client = await make_client(config)
    response = await client.post("/webhook", json=alert(leg(symbol="TCS"), leg(symbol="INFY", sort_order="2")))
    body = await response.json()
    assert response.status == 200
    assert [r["status"] for r in body["results"]] == ["unknown", "skipped"]
    message = body["results"][0]["message"]
    assert "the 'scripted' broker plugin (account 'sim') did not answer place() within 0.3 s" in message
    assert "check before resending" in message
    response = await client.post("/webhook", json=alert(leg(symbol="WIPRO")))
    assert (await response.json())["status"] == "success"
    assert [o["symbol"] for o in scripted_orders(tmp_path)] == ["WIPRO"]


async def test_a_plugin_that_blocks_the_event_loop_is_named(make_client: ClientFactory, config: Config) -> None:
    """A plugin that runs a synchronous sleep inside `place()` (the whole server waits) is named in a
    `broker.blocked_event_loop` warning with the account, the plugin, the call and how long it blocked."""
    config = with_accounts(config, {"sim": scripted(block_loop_symbols=["TCS"], block_loop_s=0.4)})
    client = await make_client(config)
    with capture_logs() as logs:
        response = await client.post("/webhook", json=alert(leg(symbol="TCS")))
        ok = await client.post("/webhook", json=alert(leg(symbol="INFY")))
    assert response.status == 200
    assert ok.status == 200
    [warning] = [e for e in logs if e["event"] == "broker.blocked_event_loop"]
    assert warning["log_level"] == "warning"
    assert (warning["account"], warning["broker"], warning["operation"]) == ("sim", "scripted", "place")
    assert warning["blocked_s"] >= 0.4
    assert "asyncio.to_thread" in warning["detail"]


async def test_a_plugin_stuck_on_the_event_loop_is_named_while_it_is_stuck(
    make_client: ClientFactory, config: Config
) -> None:
    """While a plugin holds the event loop (here 1.6 s of synchronous sleep in `place()`), the watchdog thread
    logs `loop.blocked` naming that call, before the call ends: a plugin blocked for good is still named."""
    config = with_accounts(config, {"sim": scripted(block_loop_symbols=["TCS"], block_loop_s=1.6)})
    client = await make_client(config)
    with capture_logs() as logs:
        response = await client.post("/webhook", json=alert(leg(symbol="TCS")))
    assert response.status == 200
    blocked = [e for e in logs if e["event"] == "loop.blocked"]
    assert blocked, [e["event"] for e in logs]
    assert blocked[0]["in_call"] == "the 'scripted' broker plugin's place() (account 'sim')"
    assert blocked[0]["blocked_s"] >= 1.0
    order = [e["event"] for e in logs]
    assert order.index("loop.blocked") < order.index("broker.blocked_event_loop")


def test_a_plugin_whose_start_raises_stops_the_start_in_one_line(tmp_path: Path) -> None:
    """`start()` raising stops `tvbridge serve`: exit 1, one stderr line naming the account and the plugin and
    the plugin's own message, no traceback."""
    env = server_env(tmp_path, {"TVBRIDGE_ACCOUNTS__SIM__FAIL_START": "cannot reach the broker"})
    done = run_cli(tmp_path, env, "serve")
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "accounts.sim" in lines[0]
    assert "'scripted' broker plugin failed to start: RuntimeError: cannot reach the broker" in lines[0]
    assert "Traceback" not in done.stderr + done.stdout


@pytest.mark.parametrize("command", ["serve", "check-config"])
def test_a_plugin_whose_settings_parser_crashes_stops_the_start_in_one_line(tmp_path: Path, command: str) -> None:
    """A settings parser that raises something other than ValueError (a plugin bug) stops `serve` and
    `check-config` alike: exit 2, one stderr line naming the account and the plugin, no traceback."""
    env = server_env(tmp_path, {"TVBRIDGE_ACCOUNTS__SIM__SETTINGS_BUG": "true"})
    done = run_cli(tmp_path, env, command)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "accounts.sim" in lines[0]
    assert "the 'scripted' broker plugin's from_settings() failed: AttributeError" in lines[0]
    assert "Traceback" not in done.stderr + done.stdout


@pytest.mark.parametrize("value", [0, -1, "fast", True, 10_000])
def test_broker_timeout_must_be_a_positive_number(config: Config, value: object) -> None:
    """`broker_timeout_s` is checked at start like every key: a bad value names the key."""
    config = with_accounts(config, {"sim": {"broker": "scripted", "broker_timeout_s": value}})
    with pytest.raises(ConfigError, match=r"accounts\.sim\.broker_timeout_s"):
        config.broker_timeout_of("sim")


class _HangingExtras:
    """A plugin's own coroutine method that never answers, and a plain attribute."""

    label = "extras"

    async def positions(self) -> list[str]:
        await asyncio.Event().wait()  # never set
        return []


async def test_a_plugins_own_coroutine_methods_are_guarded_too() -> None:
    """A method beyond the interface (`positions()`, used by flatten and exits) runs under `broker_timeout_s`
    as well: a hang there is `BrokerUnavailableError` naming the plugin, not a stalled request."""
    guarded: Any = GuardedBroker(_HangingExtras(), account="sim", plugin="extras", timeout_s=0.2)  # type: ignore[arg-type]  # only the methods under test
    assert guarded.label == "extras"
    with pytest.raises(
        BrokerUnavailableError, match=r"'extras' broker plugin \(account 'sim'\) did not answer positions\(\)"
    ):
        await guarded.positions()


class _SteppedExtras:
    """Coroutine methods that finish within their first step, or block the loop and then await."""

    def __init__(self) -> None:
        self.finished = False

    async def positions(self) -> list[str]:  # an in-process plugin: answers without awaiting anything
        return ["RELIANCE"]

    async def open_orders(self) -> list[str]:
        raise ValueError("the plugin's own error")

    async def refresh(self) -> None:
        raise TimeoutError("the plugin's own timeout")

    async def slow_then_await(self) -> str:
        time.sleep(0.3)  # noqa: ASYNC251 - the mistake under test: past the 0.2 s bound before the first await
        await asyncio.sleep(0.15)
        self.finished = True
        return "late"

    async def slow_then_hang(self) -> str:
        time.sleep(0.3)  # noqa: ASYNC251 - the mistake under test, then a wait that never ends
        await asyncio.Event().wait()
        return "never"


class _SyncClientBroker:
    """A plugin with a synchronous HTTP client on the loop (the mistake `broker.blocked_event_loop` names): its
    `place()` places the order in a blocking first step longer than the bound, then awaits its bookkeeping."""

    def __init__(self) -> None:
        self.placed: list[str] = []

    async def place(self, request: OrderRequest) -> OrderResult:
        time.sleep(0.3)  # noqa: ASYNC251 - the synchronous client under test: 0.3 s of a 0.2 s bound
        self.placed.append(request.client_order_id)
        await asyncio.sleep(0.05)  # e.g. an async write of its own ledger
        return OrderResult(order_id="B-1", state=OrderState.OPEN, client_order_id=request.client_order_id)


async def test_a_call_that_answers_without_awaiting_returns_its_result_or_its_own_error() -> None:
    """A plugin method that is done within its first step (paper on SQLite) answers as it would unguarded: its
    result, its own exception, its own `TimeoutError` (not taken for the host's bound)."""
    plugin = _SteppedExtras()
    guarded: Any = GuardedBroker(plugin, account="sim", plugin="extras", timeout_s=0.2)  # type: ignore[arg-type]  # only the methods under test
    assert await guarded.positions() == ["RELIANCE"]
    with pytest.raises(ValueError, match="the plugin's own error"):
        await guarded.open_orders()
    with pytest.raises(TimeoutError, match="the plugin's own timeout"):
        await guarded.refresh()


async def test_a_first_step_that_blocks_past_the_bound_still_gets_its_answer() -> None:
    """A plugin that blocks the loop past `broker_timeout_s` before it first awaits (0.3 s of 0.2) is named in
    `broker.blocked_event_loop`, and the bound counts from that await: it answers 0.15 s later, and that answer
    is the call's (cutting it off there would report a call that was about to answer as not answering)."""
    plugin = _SteppedExtras()
    guarded: Any = GuardedBroker(plugin, account="sim", plugin="extras", timeout_s=0.2)  # type: ignore[arg-type]  # only the methods under test
    with capture_logs() as logs:
        assert await guarded.slow_then_await() == "late"
    assert plugin.finished
    [blocked] = [e for e in logs if e["event"] == "broker.blocked_event_loop"]
    assert blocked["operation"] == "slow_then_await"
    assert blocked["blocked_s"] >= 0.3


async def test_a_place_that_blocks_past_the_bound_is_its_answer_not_an_unknown_outcome() -> None:
    """`place()` with a synchronous client: the order is placed in a first step longer than the bound, then the
    plugin awaits. The leg's answer is the plugin's own order, not `BrokerUnknownOutcomeError` (which would leave
    the trader an order to check by hand, or to find by lookup); it is placed once."""
    plugin = _SyncClientBroker()
    guarded = GuardedBroker(plugin, account="sim", plugin="syncclient", timeout_s=0.2)  # type: ignore[arg-type]  # only place() under test
    request = OrderRequest(
        client_order_id="a-1",
        alert_id="a",
        leg_number=1,
        leg=typed_leg(quantity=1, symbol="INFY"),
    )
    answer = await guarded.place(request)
    assert (answer.order_id, answer.state) == ("B-1", OrderState.OPEN)
    assert plugin.placed == ["a-1"]


async def test_a_plugin_that_blocks_then_hangs_is_still_cut_off() -> None:
    """The bound still holds after a blocking first step: a plugin that then waits forever is cut off
    `broker_timeout_s` after its first await (0.3 s blocked + 0.2 s), `BrokerUnavailableError` naming it."""
    plugin = _SteppedExtras()
    guarded: Any = GuardedBroker(plugin, account="sim", plugin="extras", timeout_s=0.2)  # type: ignore[arg-type]  # only the methods under test
    started = time.monotonic()
    with pytest.raises(BrokerUnavailableError, match=r"did not answer slow_then_hang\(\) within 0.2 s"):
        async with asyncio.timeout(30):  # a guard that never cut it off fails here instead of hanging the suite
            await guarded.slow_then_hang()
    assert time.monotonic() - started >= 0.5  # the bound ran from the first await, not from the call


@pytest.mark.parametrize("shared", [False, True])
async def test_with_a_shared_journal_the_bound_counts_from_the_call(config: Config, shared: bool) -> None:
    """With PostgreSQL (`journal.url`, several instances) a send must be over within `journal.leader_lease_s`,
    or another instance takes the alert over while this call may still send: there, the bound counts from the
    call itself, so a first step that blocked past it is cut off at its first await and never goes on
    (`BrokerUnavailableError` for a method of its own, as any timeout). On SQLite (one instance) the same call
    gets its answer (the test above)."""
    journal = attrs.evolve(config.journal, url="postgresql://tvbridge@127.0.0.1:9/none" if shared else "")
    config = attrs.evolve(with_accounts(config, {"sim": scripted(broker_timeout_s=0.2)}), journal=journal)
    plugin = _SteppedExtras()
    guarded: Any = guard_brokers(config, {"sim": plugin})["sim"]  # type: ignore[dict-item]  # only its own methods
    if not shared:
        assert await guarded.slow_then_await() == "late"
        assert plugin.finished
        return
    with pytest.raises(BrokerUnavailableError, match=r"did not answer slow_then_await\(\) within 0.2 s"):
        await guarded.slow_then_await()
    assert not plugin.finished
