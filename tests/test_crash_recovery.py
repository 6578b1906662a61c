"""Nothing lost, nothing twice, with real processes: kill -9 at random and at named points, restart, count.

The server runs against a broker that forgives nothing, and the orders are counted where the broker received
them: the strict `scripted` broker (its JSON lines, which it reads back on start like a real broker remembers its
orders; a repeated client order id is a second order there) and live Dhan (the dhan plugin with `live = true`
and the real dhanhq client) against the fake Dhan API, which runs in this test process and so outlives every
kill and keeps a second placement with the same correlationId as a second order. After every scenario: each
leg of every alert answered 2xx is there exactly once, no order is there twice or without a journaled alert, no
alert is left unfinished, and SQLite's `integrity_check` passes.

The random tests draw their kill moments and crash points from a seed (`TVBRIDGE_TEST_SEED` replays one); any
failure of theirs, whatever the assertion, names it.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import csv
import os
import random
import shutil
import sqlite3
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import aiohttp
import attrs
import pytest
from durability_server import KillableServer, alert_record, journal_rows, scripted_orders
from fake_dhan import CLIENT_ID, TOKEN, FakeDhan
from helpers import alert, leg

from tvbridge.crashpoints import POINTS
from tvbridge.halt import clear_halt, halt_path, read_halt
from tvbridge_brokers.dhan.instruments import sample_master_path

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator
    from pathlib import Path

LEGS = 2
NAMED_POINTS = sorted(POINTS - {"after_claim", "in_join", "after_refusal"})
"""The send path; the queue's point is in test_tradingday.py, `in_join` (only a broker that joins the journal, the
paper book, reaches it) in the paper test below and test_paper_join.py, `after_refusal` (only a refused leg
reaches it) in the halt test below."""


@attrs.frozen(kw_only=True)
class Venue:
    """Where the orders go: the server's environment for it, and the client order ids it received, in order."""

    name: str
    env: dict[str, str]
    orders: Callable[[], list[str]]
    kill_within_s: tuple[float, float] = (0.02, 0.4)
    """The random kill moment's range after a burst starts: live Dhan (a real HTTP round trip per order and per
    token check) answers its first alerts later than the in-process scripted broker."""


@pytest.fixture(params=["scripted", "dhan"])
async def venue(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Venue]:
    """The strict scripted broker, or live Dhan against a fake Dhan API served by this process."""
    if request.param == "scripted":
        env = {"TVBRIDGE_ACCOUNTS__SIM__DELAY_S": "0.003"}  # a little time in flight for the kills to cut into
        yield Venue(name="scripted", env=env, orders=lambda: [o["client_order_id"] for o in scripted_orders(tmp_path)])
        return
    fake = FakeDhan()
    await fake.start()
    master = tmp_path / "master.csv"
    shutil.copyfile(sample_master_path(), master)  # a live account refuses the shipped sample itself
    env = {
        "TVBRIDGE_ROUTING__ACCOUNTS": '["dhan"]',
        "DHAN_CLIENT_ID": CLIENT_ID,
        "DHAN_ACCESS_TOKEN": TOKEN,
        "ENABLE_DHAN": "true",
        "TVBRIDGE_ACCOUNTS__DHAN__BASE_URL": fake.base_url,
        "TVBRIDGE_ACCOUNTS__DHAN__INSTRUMENTS_PATH": str(master),
        "TVBRIDGE_ACCOUNTS__DHAN__MAX_ORDERS_PER_S": "1000",
    }
    try:
        yield Venue(
            name="dhan",
            env=env,
            orders=lambda: [str(o.get("correlationId")) for o in fake.placed()],
            kill_within_s=(0.2, 1.5),
        )
    finally:
        await fake.close()


def two_leg_alert(i: int) -> dict[str, Any]:
    """Two legs on symbols both venues know; the quantity makes each alert's content (its dedupe key) its own."""
    return alert(
        leg(symbol="RELIANCE", quantity=str(i + 1)),
        leg(symbol="INFY", quantity=str(i + 1), sort_order="2", transactionType="S"),
    )


async def post(session: aiohttp.ClientSession, url: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]] | None:
    """(status, body), or None when the server died before answering."""
    try:
        async with session.post(f"{url}/webhook", json=body, timeout=aiohttp.ClientTimeout(total=10)) as response:
            return response.status, await response.json()
    except (aiohttp.ClientError, TimeoutError):
        return None


def paper_orders(data_dir: Path) -> list[str]:
    """The client order ids in the paper book, which joined the journal (its tables are in the journal's file),
    after the file's integrity check."""
    conn = sqlite3.connect(data_dir / "tvbridge.sqlite3")
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        return [row[0] for row in conn.execute("SELECT client_order_id FROM paper_orders WHERE account = 'paper'")]
    finally:
        conn.close()


def order_log_rows(data_dir: Path) -> collections.Counter[tuple[str, str, str]]:
    """How many rows `webhook_orders.csv` has for each (alert id, leg number, account)."""
    with (data_dir / "webhook_orders.csv").open(newline="", encoding="utf-8") as f:
        return collections.Counter((r["alert_id"], r["leg_number"], r["account"]) for r in csv.DictReader(f))


def check_exactly_once(data_dir: Path, answered_2xx: set[str], orders: list[str]) -> None:
    """The invariants, read from the files the server left behind and the orders the broker received; the order
    log has exactly one row per leg of every journaled alert (a repeated row reads as a double order)."""
    alerts, legs, integrity = journal_rows(data_dir)
    assert integrity == "ok"
    assert [a for a, status in alerts.items() if status == "accepted"] == [], "an alert was left unfinished"
    counts = collections.Counter(orders)
    assert [cid for cid, n in counts.items() if n > 1] == [], "an order was placed twice"
    for cid in counts:
        alert_id = cid.rsplit("-", 1)[0]
        assert alert_id in alerts, f"order {cid} has no journaled alert"
    rows = order_log_rows(data_dir)
    assert {key: n for key, n in rows.items() if n > 1} == {}, "a leg has more than one row in the order log"
    assert {a for a, _, _ in rows} == set(alerts), "the order log and the journal list different alerts"
    for alert_id in answered_2xx:
        assert alert_id in alerts, f"alert {alert_id} was answered 2xx but is not in the journal"
        assert {n for a, n, _ in rows if a == alert_id} == {str(n) for n in range(1, LEGS + 1)}
        for n in range(1, LEGS + 1):
            assert counts[f"{alert_id}-{n}"] == 1, f"leg {n} of answered alert {alert_id} is missing"
            assert legs[alert_id, n] == "placed"


def start(data_dir: Path, env: dict[str, str] | None = None, name: str = "server") -> KillableServer:
    return KillableServer(data_dir, env, name=name).start()


@pytest.mark.parametrize("point", NAMED_POINTS)
async def test_kill_at_a_named_point_then_restart(tmp_path: Path, venue: Venue, point: str) -> None:
    """Killed with SIGKILL at a named point of the send path (on its 3rd hit), a restarted server finishes the
    interrupted alert: what the broker already has is recorded, what it lacks is sent, nothing twice."""
    server = await asyncio.to_thread(start, tmp_path, {**venue.env, "TVBRIDGE_TEST_CRASH_AT": f"{point}:3"}, "crash")
    answered: set[str] = set()
    async with aiohttp.ClientSession() as session:
        for i in range(6):
            outcome = await post(session, server.url, two_leg_alert(i))
            if outcome is None:
                break
            status, body = outcome
            assert status == 200
            answered.add(body["alert_id"])
    assert await asyncio.to_thread(server.wait, 10) == -9
    alerts_before, legs_before, _ = journal_rows(tmp_path)
    interrupted = [a for a, s in alerts_before.items() if s == "accepted"]
    assert len(interrupted) == 1
    expected_state = {"after_record": "pending", "before_send": "sending", "after_send": "sending"}
    if point in expected_state:
        assert expected_state[point] in {legs_before[interrupted[0], n] for n in (1, 2)}

    restarted = await asyncio.to_thread(start, tmp_path, venue.env, "restarted")
    assert any(e["event"] == "recovery.alert" and e["alert_id"] == interrupted[0] for e in restarted.events())
    assert await asyncio.to_thread(restarted.terminate) == 0
    # the interrupted alert was young: recovery completed it, so it counts like an answered one
    check_exactly_once(tmp_path, answered | set(interrupted), venue.orders())
    with (tmp_path / "webhook_orders.csv").open(newline="") as f:
        logged = {(r["alert_id"], r["leg_number"]) for r in csv.DictReader(f)}
    assert {(interrupted[0], "1"), (interrupted[0], "2")} <= logged


def position_leg(kind: str) -> dict[str, Any]:
    """A Pine strategy's target of long 10 INFY (no side, no quantity), or an EXIT_ALL of what is held."""
    if kind == "exit":
        return leg(symbol="INFY", transactionType="S", quantity="", manage_position="EXIT_ALL")
    target = leg(symbol="INFY", position_size="10")
    del target["transactionType"], target["quantity"]
    return target


@pytest.mark.parametrize("point", ["before_send", "after_send"])
@pytest.mark.parametrize("kind", ["target", "exit"])
async def test_a_target_or_an_exit_killed_at_its_send_is_sent_once_after_restart(
    tmp_path: Path, kind: str, point: str
) -> None:
    """A target (flat to long 10) or an EXIT_ALL (of the 10 an earlier alert bought), the server killed with
    SIGKILL just before or just after its order goes to the unforgiving scripted broker, whose position outlives
    the kill. Restarted while the alert is young, recovery finishes it: looked up first, sent only if the broker
    lacks it, worked out again from the position then. The broker ends with exactly one order for that leg and the
    position the trader asked for; the journal and the order log have the alert finished."""
    env = {"TVBRIDGE_ACCOUNTS__SIM__POSITIONS_ANSWER": "held"}
    hit = 2 if kind == "exit" else 1  # an exit's own send is the point's second hit (the entry's is the first)
    server = await asyncio.to_thread(start, tmp_path, {**env, "TVBRIDGE_TEST_CRASH_AT": f"{point}:{hit}"}, "crash")
    try:
        async with aiohttp.ClientSession() as session:
            if kind == "exit":
                entry = await post(session, server.url, alert(leg(symbol="INFY", quantity="10")))
                assert entry is not None
                assert (entry[0], entry[1]["status"]) == (200, "success")
            assert await post(session, server.url, alert(position_leg(kind))) is None
        assert await asyncio.to_thread(server.wait, 10) == -9
    finally:
        await asyncio.to_thread(server.kill)  # a server that did not die at its point is not left running
    alerts, legs, _ = journal_rows(tmp_path)
    [interrupted] = [a for a, state in alerts.items() if state == "accepted"]
    assert legs[interrupted, 1] == "sending"
    placed_before = len(scripted_orders(tmp_path))

    restarted = await asyncio.to_thread(start, tmp_path, env, "restarted")
    try:
        assert any(e["event"] == "recovery.alert" and e["alert_id"] == interrupted for e in restarted.events())
    finally:
        assert await asyncio.to_thread(restarted.terminate) == 0

    orders = scripted_orders(tmp_path)
    assert [(o["side"], o["quantity"]) for o in orders if o["client_order_id"] == f"{interrupted}-1"] == [
        ("S", 10) if kind == "exit" else ("B", 10)
    ]
    assert len(orders) == placed_before + (1 if point == "before_send" else 0)  # nothing twice
    net = sum(o["quantity"] if o["side"] == "B" else -o["quantity"] for o in orders)
    assert net == (0 if kind == "exit" else 10)
    alerts, legs, integrity = journal_rows(tmp_path)
    assert integrity == "ok"
    assert (alerts[interrupted], legs[interrupted, 1]) == ("success", "placed")
    assert order_log_rows(tmp_path)[interrupted, "1", "sim"] == 1


@pytest.fixture
def seed(request: pytest.FixtureRequest) -> int:
    """The random schedule's seed: `TVBRIDGE_TEST_SEED` when set (to replay a failure), else a new one. It is
    also attached to the test's report, so even a failure outside `seed_on_failure` shows it."""
    chosen = int(os.environ.get("TVBRIDGE_TEST_SEED", str(random.randrange(1 << 30))))  # noqa: S311 - a test schedule, not a secret
    request.node.add_report_section("setup", "seed", f"TVBRIDGE_TEST_SEED={chosen}")
    return chosen


@contextlib.contextmanager
def seed_on_failure(seed: int) -> Iterator[None]:
    """Any failure inside (an assertion, a timeout, a server that did not start) is reported with the seed."""
    try:
        yield
    except Exception as e:
        raise AssertionError(f"seed {seed} (replay: TVBRIDGE_TEST_SEED={seed}): {type(e).__name__}: {e}") from e


async def kill_bursts(
    tmp_path: Path,
    env: dict[str, str],
    rng: random.Random,
    kill_within_s: tuple[float, float] = (0.02, 0.4),
    *,
    rounds: int = 3,
    points: Sequence[str] = NAMED_POINTS,
) -> set[str]:
    """`rounds` concurrent bursts of two-leg alerts, each followed by a restart, each cut by SIGKILL either at a
    random moment or at a random named crash point on a random hit; returns the ids of the alerts answered 2xx.
    Ends with a clean start and SIGTERM."""
    answered: set[str] = set()
    counter = 0
    for round_ in range(rounds):
        at_point = rng.random() < 0.5
        crash = {"TVBRIDGE_TEST_CRASH_AT": f"{rng.choice(points)}:{rng.randint(10, 60)}"} if at_point else {}
        server = await asyncio.to_thread(start, tmp_path, {**env, **crash}, f"round{round_}")

        async def burst(url: str, first: int) -> list[tuple[int, dict[str, Any]] | None]:
            semaphore = asyncio.Semaphore(6)
            async with aiohttp.ClientSession() as session:

                async def one(i: int) -> tuple[int, dict[str, Any]] | None:
                    async with semaphore:
                        return await post(session, url, two_leg_alert(i))

                return await asyncio.gather(*(one(first + i) for i in range(40)))

        task = asyncio.create_task(burst(server.url, counter))
        counter += 40
        if at_point:  # the server kills itself at the point, or the burst ends without reaching it
            await asyncio.wait_for(asyncio.shield(task), 60)
        else:
            await asyncio.sleep(rng.uniform(*kill_within_s))  # the random kill moment, not a wait for a result
        server.kill()
        for outcome in await asyncio.wait_for(task, 60):
            if outcome is not None and 200 <= outcome[0] < 300:
                answered.add(outcome[1]["alert_id"])
    final = await asyncio.to_thread(start, tmp_path, env, "final")
    assert await asyncio.to_thread(final.terminate) == 0
    assert answered, "no alert was answered before the kills"
    return answered


async def test_random_kills_during_a_burst(tmp_path: Path, venue: Venue, seed: int) -> None:
    """Three rounds of a concurrent burst of two-leg alerts, each cut by SIGKILL at a random moment or at a
    random crash point, each followed by a restart: every alert answered 2xx has each leg exactly once at the
    broker, none extra."""
    with seed_on_failure(seed):
        rng = random.Random(seed)  # noqa: S311 - a test schedule, not a secret
        answered = await kill_bursts(tmp_path, venue.env, rng, venue.kill_within_s)
        check_exactly_once(tmp_path, answered, venue.orders())


async def test_random_kills_with_the_paper_broker(tmp_path: Path, seed: int) -> None:
    """The same with the paper broker (its book in the journal's file, each alert's first order in the alert's
    own commit; idempotent on client order id), crash point `in_join` included: every alert answered 2xx has each
    leg exactly once in paper's orders, no order without a journaled alert, the file intact."""
    (tmp_path / "config.toml").write_text(
        '[accounts.paper]\nbroker = "paper"\n[accounts.paper.prices]\nRELIANCE = 100\nINFY = 100\n'
    )
    with seed_on_failure(seed):
        env = {"TVBRIDGE_ROUTING__ACCOUNTS": '["paper"]'}
        rng = random.Random(seed)  # noqa: S311 - a test schedule, not a secret
        answered = await kill_bursts(tmp_path, env, rng, points=[*NAMED_POINTS, "in_join"])
        check_exactly_once(tmp_path, answered, paper_orders(tmp_path))


async def test_unsent_leg_expires_after_max_age(tmp_path: Path) -> None:
    """An alert killed before its leg was sent and restarted after `alerts.max_age_s` is not sent: the leg is
    `expired` in the journal and the order log, with a `recovery.leg_expired` warning naming it.

    The alert's age comes from its own `meta.timenow` (60 s before now), not from time passing in the test: it
    is young enough for the first server (`max_age_s` 300) and too old for the restarted one (30)."""
    env = {"TVBRIDGE_TEST_CRASH_AT": "before_send", "TVBRIDGE_ALERTS__MAX_AGE_S": "300"}
    server = await asyncio.to_thread(start, tmp_path, env, "crashing")
    timenow = (datetime.now(UTC) - timedelta(seconds=60)).strftime("%Y-%m-%dT%H:%M:%SZ")
    body = alert(leg(symbol="INFY", meta={"interval": "1D", "time": "2025-11-20T09:15:00Z", "timenow": timenow}))
    async with aiohttp.ClientSession() as session:
        assert await post(session, server.url, body) is None
    assert await asyncio.to_thread(server.wait, 10) == -9
    alerts, _, _ = journal_rows(tmp_path)
    (alert_id,) = alerts
    restarted = await asyncio.to_thread(start, tmp_path, {"TVBRIDGE_ALERTS__MAX_AGE_S": "30"}, "restarted")
    assert await asyncio.to_thread(restarted.terminate) == 0
    alerts, legs, integrity = journal_rows(tmp_path)
    assert integrity == "ok"
    assert alerts[alert_id] == "failed"
    assert legs[alert_id, 1] == "expired"
    assert scripted_orders(tmp_path) == []
    expired = [e for e in restarted.events() if e["event"] == "recovery.leg_expired"]
    assert [(e["alert_id"], e["client_order_id"]) for e in expired] == [(alert_id, f"{alert_id}-1")]
    with (tmp_path / "webhook_orders.csv").open(newline="") as f:
        assert [(r["alert_id"], r["status"]) for r in csv.DictReader(f)] == [(alert_id, "expired")]


ALPHA_SECRET = "alpha-secret-0123456789abcdef"


@pytest.mark.parametrize("scope", ["account", "strategy"])
async def test_a_leg_refused_by_the_daily_count_is_not_sent_by_recovery(tmp_path: Path, scope: str) -> None:
    """`max_orders_per_day = 1` over the remote `sim` account (or over strategy alpha's orders): the first alert is
    sent, the second is refused by the daily count, and the process is killed after the order log rows and before
    the journal's results commit. The restarted server must not send the refused leg: the unforgiving broker ends
    with one order, the refused alert's leg is `failed`, never sent past the limit that refused it."""
    limit = {"TVBRIDGE_RISK__MAX_ORDERS_PER_DAY": "1"} if scope == "account" else {}
    if scope == "strategy":
        (tmp_path / "config.toml").write_text(
            f'[strategies.alpha]\nsecret = "{ALPHA_SECRET}"\nmax_orders_per_day = 1\n', encoding="utf-8"
        )
    secret = {"secret": ALPHA_SECRET} if scope == "strategy" else {}
    server = await asyncio.to_thread(start, tmp_path, {**limit, "TVBRIDGE_TEST_CRASH_AT": "after_order_log:2"}, "crash")
    async with aiohttp.ClientSession() as session:
        first = await post(session, server.url, {**alert(leg(symbol="INFY")), **secret})
        assert first is not None
        assert first[1]["status"] == "success", first
        assert await post(session, server.url, {**alert(leg(symbol="TCS")), **secret}) is None  # killed: no answer
    assert await asyncio.to_thread(server.wait, 10) == -9
    restarted = await asyncio.to_thread(start, tmp_path, limit, "restarted")
    assert await asyncio.to_thread(restarted.terminate) == 0
    alerts, legs, integrity = journal_rows(tmp_path)
    assert integrity == "ok"
    (refused,) = (a for a in alerts if a != first[1]["alert_id"])
    assert [o["client_order_id"] for o in scripted_orders(tmp_path)] == [f"{first[1]['alert_id']}-1"]
    assert legs[refused, 1] == "failed"


async def test_a_leg_killed_before_its_send_is_resent_within_the_daily_limit_it_already_counts_in(
    tmp_path: Path,
) -> None:
    """`max_orders_per_day = 1`: the day's first leg passes its checks, is journaled `sending` and the process is
    killed before the broker call. The restarted server resends it (the broker lacks it): the journal's count
    of today's orders already holds that `sending` leg, so the resend is neither counted again nor refused for
    a limit it is itself the one order of. Then the day's limit holds: the next alert is refused."""
    limit = {"TVBRIDGE_RISK__MAX_ORDERS_PER_DAY": "1"}
    server = await asyncio.to_thread(start, tmp_path, {**limit, "TVBRIDGE_TEST_CRASH_AT": "before_send"}, "crash")
    async with aiohttp.ClientSession() as session:
        assert await post(session, server.url, alert(leg(symbol="INFY"))) is None  # killed: no answer
    assert await asyncio.to_thread(server.wait, 10) == -9
    alerts, legs, _ = journal_rows(tmp_path)
    (interrupted,) = alerts
    assert legs[interrupted, 1] == "sending"
    assert scripted_orders(tmp_path) == []

    restarted = await asyncio.to_thread(start, tmp_path, limit, "restarted")
    async with aiohttp.ClientSession() as session:
        later = await post(session, restarted.url, alert(leg(symbol="TCS")))
    assert await asyncio.to_thread(restarted.terminate) == 0
    assert [o["client_order_id"] for o in scripted_orders(tmp_path)] == [f"{interrupted}-1"]
    alerts, legs, integrity = journal_rows(tmp_path)
    assert integrity == "ok"
    assert legs[interrupted, 1] == "placed"
    assert later is not None
    assert later[1]["results"][0]["message"] == (
        "risk: 1 order(s) already sent today on account sim; max_orders_per_day is 1"
    )


HALTING_SIM = '[accounts.sim]\nbroker = "scripted"\nquantity_multiplier = 2\nlot_size = 1\n'
"""A remote account whose first leg is journaled `sending` with the alert (no daily count) and whose derivative
legs are sized through the broker's `instrument_info()` (the multiplier): the moment the test halts trading."""


async def test_a_first_leg_refused_by_a_halt_after_its_commit_is_not_sent_by_recovery(tmp_path: Path) -> None:
    """The kill switch comes between the alert's commit (its first leg journaled `sending`) and the leg's checks:
    the leg is refused, and the process is killed right after the refusal's commit, before the alert's results.
    The operator lifts the halt and restarts while the alert is young: recovery must not send the order of an
    alert answered "refused". The unforgiving broker received nothing; the journal, the order log and
    `GET /alerts/<id>` say failed with the halt's reason."""
    reason = "desk says stop"
    (tmp_path / "config.toml").write_text(f'{HALTING_SIM}halt_when_sizing = "{reason}"\n', encoding="utf-8")
    server = await asyncio.to_thread(start, tmp_path, {"TVBRIDGE_TEST_CRASH_AT": "after_refusal"}, "crash")
    async with aiohttp.ClientSession() as session:
        assert await post(session, server.url, alert(leg(symbol="NIFTY", instrument="FUT", productType="M"))) is None
    assert await asyncio.to_thread(server.wait, 10) == -9
    alerts, legs, _ = journal_rows(tmp_path)
    (alert_id,) = alerts
    assert (alerts[alert_id], legs[alert_id, 1]) == ("accepted", "failed")  # killed before the results' commit
    halt = read_halt(halt_path(tmp_path))
    assert halt is not None
    assert halt.reason == reason

    assert clear_halt(halt_path(tmp_path))  # the operator resumes trading, then restarts
    (tmp_path / "config.toml").write_text(HALTING_SIM, encoding="utf-8")
    restarted = await asyncio.to_thread(start, tmp_path, None, "restarted")
    record = await alert_record(restarted.url, alert_id)
    assert await asyncio.to_thread(restarted.terminate) == 0
    assert scripted_orders(tmp_path) == []
    assert record["status"] == "failed"
    assert [(leg_["state"], reason in leg_["message"]) for leg_ in record["legs"]] == [("failed", True)]
    alerts, legs, integrity = journal_rows(tmp_path)
    assert integrity == "ok"
    assert (alerts[alert_id], legs[alert_id, 1]) == ("failed", "failed")
    with (tmp_path / "webhook_orders.csv").open(newline="") as f:
        rows = [(r["alert_id"], r["status"], reason in r["message"]) for r in csv.DictReader(f)]
    assert rows == [(alert_id, "failed", True)]


async def killed_after_its_refusal(tmp_path: Path, env: dict[str, str], body: dict[str, Any]) -> str:
    """Post `body` to a server killed at `env`'s crash point (`after_refusal`): nothing answered, the alert left
    unfinished with its leg already `failed` (the refusal's own commit). Its id."""
    server = await asyncio.to_thread(start, tmp_path, env, "crash")
    async with aiohttp.ClientSession() as session:
        assert await post(session, server.url, body) is None
    assert await asyncio.to_thread(server.wait, 10) == -9
    alerts, legs, _ = journal_rows(tmp_path)
    (alert_id,) = alerts
    assert (alerts[alert_id], legs[alert_id, 1]) == ("accepted", "failed")
    return alert_id


async def restarted_without_sending(tmp_path: Path, env: dict[str, str] | None) -> list[tuple[str, str, str]]:
    """Restart (`env`: a broker that would take the order now) and stop: the broker received nothing, the one
    alert and its leg are `failed`; the order log's rows (alert id, status, message)."""
    restarted = await asyncio.to_thread(start, tmp_path, env, "restarted")
    assert await asyncio.to_thread(restarted.terminate) == 0
    assert scripted_orders(tmp_path) == []
    alerts, legs, integrity = journal_rows(tmp_path)
    assert integrity == "ok"
    assert [(state, legs[alert_id, 1]) for alert_id, state in alerts.items()] == [("failed", "failed")]
    with (tmp_path / "webhook_orders.csv").open(newline="") as f:
        return [(r["alert_id"], r["status"], r["message"]) for r in csv.DictReader(f)]


async def test_a_leg_the_broker_refused_is_not_sent_by_recovery(tmp_path: Path) -> None:
    """The broker refuses the first leg (nothing placed: `BrokerRejectedError`), and the process is killed right
    after that refusal's commit, before the alert's results. Restarted while the alert is young, with a broker that
    would take the order now: recovery must not send the order of an alert answered "failed". The broker received
    nothing; the journal and the order log say failed with the broker's reason."""
    env = {"TVBRIDGE_ACCOUNTS__SIM__REJECT_SYMBOLS": '["TCS"]', "TVBRIDGE_TEST_CRASH_AT": "after_refusal"}
    alert_id = await killed_after_its_refusal(tmp_path, env, alert(leg(symbol="TCS")))
    rows = await restarted_without_sending(tmp_path, None)  # the broker takes TCS now
    assert rows == [(alert_id, "failed", "TCS is not tradeable here")]


async def test_a_target_whose_position_could_not_be_read_is_not_sent_by_recovery(tmp_path: Path) -> None:
    """A target position (`position_size` 10) whose position read fails (the broker's positions API is down): the
    leg is answered failed, nothing sent, and the process is killed right after that refusal's commit. Restarted
    young, with the positions readable again (flat): recovery must not send the BUY 10 the trader was told was not
    sent. The broker received nothing; the order log says why."""
    target = leg(symbol="INFY", position_size="10")
    del target["transactionType"], target["quantity"]
    env = {"TVBRIDGE_ACCOUNTS__SIM__POSITIONS_ANSWER": "unavailable", "TVBRIDGE_TEST_CRASH_AT": "after_refusal"}
    alert_id = await killed_after_its_refusal(tmp_path, env, alert(target))
    rows = await restarted_without_sending(tmp_path, {"TVBRIDGE_ACCOUNTS__SIM__POSITIONS_ANSWER": "flat"})
    assert rows == [(alert_id, "failed", "not sent: the current position could not be read: positions API down")]
