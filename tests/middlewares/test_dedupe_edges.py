"""The dedupe guard's edges, found by mutation testing (docs/testing.md): what is and is not the same alert, what a
repeat is answered, the journal's keys pruned at start, and dedupe across a restart on a machine not on UTC."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import time
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, cast

import attrs
import pytest
from helpers import alert, in_time_zone, leg, with_accounts
from structlog.testing import capture_logs

from tvbridge.config import Config, DedupeConfig
from tvbridge.journal import Journal
from tvbridge.keys import BROKERS, CLOCK, DEDUPER, JOURNAL, STATE
from tvbridge.middlewares.dedupe import Deduper, dedupe_key

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator, MutableMapping

    from helpers import ClientFactory

WAIT_S = 20.0


def scripted(config: Config, **settings: Any) -> Config:
    return with_accounts(config, {"s": {"broker": "scripted", **settings}})


def orders_received(config: Config) -> list[dict[str, Any]]:
    path = config.data_path("scripted-s.jsonl")
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_the_same_alert_with_its_keys_in_another_order_is_a_repeat() -> None:
    """JSON objects have no order: a resend whose keys come in another order is the same alert."""
    first = alert(leg(meta={"time": "2025-11-20T09:15:00Z", "interval": "1D"}))
    reordered = {key: first[key] for key in reversed(list(first))}
    reordered["order_legs"] = [dict(reversed(list(first["order_legs"][0].items())))]
    assert list(reordered) != list(first)
    assert dedupe_key(reordered) == dedupe_key(first)


def test_only_meta_timenow_is_left_out_of_the_key() -> None:
    """The root's and each leg's `meta.timenow` are left out (a resend's only difference); the root's `meta.time`
    (another bar) counts, and so does a `timenow` anywhere else: it is the strategy's own content."""
    bar = {"interval": "1D", "time": "2025-11-20T09:15:00Z"}
    first = alert(meta={**bar, "timenow": "2025-11-20T09:15:01Z"})
    resend = alert(meta={**bar, "timenow": "2025-11-20T09:15:09Z"})
    next_bar = alert(meta={**bar, "time": "2025-11-21T09:15:00Z", "timenow": "2025-11-20T09:15:01Z"})
    assert dedupe_key(first) == dedupe_key(resend)
    assert dedupe_key(first) != dedupe_key(next_bar)
    own = [alert(extra={"timenow": stamp}) for stamp in ("1", "2")]
    assert dedupe_key(own[0]) != dedupe_key(own[1])
    in_leg = [alert(leg(extra={"timenow": stamp})) for stamp in ("1", "2")]
    assert dedupe_key(in_leg[0]) != dedupe_key(in_leg[1])


def test_a_blank_id_is_no_id() -> None:
    """An `id` of spaces is not the trader's key: two different alerts carrying it are two alerts."""
    assert dedupe_key(alert(leg(symbol="INFY"), id="  ")) != dedupe_key(alert(leg(symbol="TCS"), id="  "))
    assert dedupe_key(alert(id="  ")).startswith("body:")


@pytest.mark.parametrize(
    "raw",
    [
        alert(id="\ud800"),
        alert(leg(symbol="\ud800")),
        alert(meta="\ud800"),
        {**alert(), "order_legs": [1, "leg"]},
    ],
    ids=["surrogate id", "surrogate symbol", "meta not an object", "legs not objects"],
)
async def test_odd_alerts_are_refused_not_crashed(make_client: ClientFactory, config: Config, raw: Any) -> None:
    """A lone surrogate in the alert's `id` or a field (JSON can spell one), a `meta` that is not an object, legs
    that are not objects: the dedupe key is computed all the same and the alert is refused with a 4xx, never a
    500; nothing is placed."""
    config = scripted(config)
    client = await make_client(config)
    response = await client.post("/webhook", json=raw)
    assert 400 <= response.status < 500, await response.text()
    assert orders_received(config) == []


async def test_a_repeat_is_answered_with_what_the_first_one_was(make_client: ClientFactory, config: Config) -> None:
    """While the first copy runs a repeat gets 202, a message pointing at `GET /alerts/<first>`, and no results or
    warnings yet; once it is done, 200 with its results and warnings and a message saying it was not run again.
    Each is logged as `dedupe.duplicate` with the reason and whether the first was still running."""
    config = scripted(config, delay_s=1.0)
    config = attrs.evolve(config, server=attrs.evolve(config.server, response_deadline_s=0.2))
    client = await make_client(config)
    raw = {**alert(), "colour": "red"}  # an unknown key: a warning in the answer
    first = await client.post("/webhook", json=raw)
    assert first.status == 202
    first_id = (await first.json())["alert_id"]
    with capture_logs() as events:
        running = await client.post("/webhook", json=raw)
    body = await running.json()
    assert running.status == 202
    assert body["message"] == f"duplicate of alert {first_id}, still running: GET /alerts/{first_id} for the outcome"
    assert body["first_status"] == "accepted"
    assert body["results"] == []
    assert body["warnings"] == []
    [line] = [e for e in events if e["event"] == "dedupe.duplicate"]
    assert (line["reason"], line["duplicate_of"], line["running"]) == ("same alert within the window", first_id, True)

    await asyncio.wait_for(asyncio.gather(*client.app[STATE].tasks), WAIT_S)
    with capture_logs() as events:
        done = await client.post("/webhook", json=raw)
    body = await done.json()
    assert done.status == 200
    assert body["message"] == f"duplicate of alert {first_id} (same alert within dedupe.window_s): not run again"
    assert body["warnings"] == ["colour: unknown key, ignored"]
    assert [r["status"] for r in body["results"]] == ["success"]
    [line] = [e for e in events if e["event"] == "dedupe.duplicate"]
    assert line["running"] is False
    assert len(orders_received(config)) == 1


async def test_a_copy_waiting_for_the_first_is_answered_when_it_is_done(
    make_client: ClientFactory, config: Config
) -> None:
    """A copy that arrives while the first runs is answered as soon as the first is done, not when its own wait
    (up to `server.response_deadline_s`, here a minute) runs out."""
    config = scripted(config, delay_s=0.3)
    config = attrs.evolve(config, server=attrs.evolve(config.server, response_deadline_s=60.0))
    client = await make_client(config)
    raw = alert()
    responses = await asyncio.wait_for(asyncio.gather(*(client.post("/webhook", json=raw) for _ in range(2))), WAIT_S)
    assert sorted([(await r.json())["status"] for r in responses]) == ["duplicate", "success"]
    assert len(orders_received(config)) == 1


@pytest.fixture
def india_time() -> Iterator[None]:
    """The process's local time zone is IST, as on a server in India (naive local times are 5.5 h ahead of UTC)."""
    with in_time_zone("Asia/Kolkata"):
        yield


@pytest.mark.usefixtures("india_time")
async def test_a_repeat_after_a_restart_is_caught_on_a_server_in_india(
    make_client: ClientFactory, config: Config
) -> None:
    """The journal's keys are compared in UTC: on a machine whose local time is IST, the restarted server's
    start-up prune keeps the key and its look-up finds it, so the repeat is a duplicate and places nothing."""
    config = scripted(config)
    client = await make_client(config)
    raw = alert()
    first = await (await client.post("/webhook", json=raw)).json()
    await client.close()
    restarted = await make_client(config)
    body = await (await restarted.post("/webhook", json=raw)).json()
    assert (body["status"], body["duplicate_of"]) == ("duplicate", first["alert_id"])
    assert len(orders_received(config)) == 1


@contextlib.asynccontextmanager
async def logged(name: str) -> AsyncIterator[list[MutableMapping[str, Any]]]:
    """Capture log lines; on leaving, wait (bounded) until a line called `name` was written, by a background
    task maybe, and hand over the lines so far."""
    seen = asyncio.Event()

    def watch(_logger: object, _method: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
        if event_dict.get("event") == name:
            seen.set()
        return event_dict

    with capture_logs(processors=[watch]) as events:
        yield events
        async with asyncio.timeout(WAIT_S):
            await seen.wait()


async def test_keys_out_of_the_window_are_cleared_at_start(make_client: ClientFactory, config: Config) -> None:
    """A restarted server clears the journal's dedupe keys older than the window and says how many: one line
    `dedupe.pruned` with `cleared`."""
    config = attrs.evolve(scripted(config), dedupe=DedupeConfig(window_s=0.001))
    client = await make_client(config)
    assert (await client.post("/webhook", json=alert())).status == 200
    await client.close()
    async with logged("dedupe.pruned") as events:
        await make_client(config)
    [line] = [e for e in events if e["event"] == "dedupe.pruned"]
    assert line["cleared"] == 1


@pytest.mark.sqlite_only
async def test_a_prune_that_fails_is_logged_and_trading_goes_on(
    make_client: ClientFactory, config: Config, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Clearing old keys is housekeeping: when the journal refuses it, `dedupe.prune_failed` is logged with the
    error and alerts are still placed."""

    async def refuse(self: Journal, since: str) -> int:
        raise OSError("disk I/O error")

    monkeypatch.setattr(Journal, "prune_dedupe_keys", refuse)
    config = scripted(config)
    async with logged("dedupe.prune_failed") as events:
        client = await make_client(config)
    [line] = [e for e in events if e["event"] == "dedupe.prune_failed"]
    assert line["log_level"] == "error"
    assert (await client.post("/webhook", json=alert())).status == 200
    assert len(orders_received(config)) == 1


async def test_a_journal_that_cannot_say_is_logged_with_the_503(make_client: ClientFactory, config: Config) -> None:
    """When the journal cannot tell whether the alert is a repeat, the 503 comes with a `dedupe.lookup_failed`
    error line carrying the journal's error, for the operator."""
    config = scripted(config)
    client = await make_client(config)
    await client.app[JOURNAL].close()
    with capture_logs() as events:
        response = await client.post("/webhook", json=alert())
    assert response.status == 503
    assert (await response.json())["message"] == (
        "journal unreadable: cannot tell whether this alert is a repeat; resend later"
    )
    [line] = [e for e in events if e["event"] == "dedupe.lookup_failed"]
    assert line["log_level"] == "error"
    assert orders_received(config) == []


async def test_a_repeat_is_answered_by_the_journal_and_no_claim_outlives_its_first_copy(
    make_client: ClientFactory, config: Config
) -> None:
    """A repeat within the window gets the first copy's answer and places nothing, also once the first copy is
    answered and its in-process claim is gone (the journal's row answers it); the claims table holds only the
    alerts still running, so a long-running server's memory stays flat whatever the rate x window."""
    config = scripted(config)
    client = await make_client(config)
    first = await client.post("/webhook", json=alert(leg(symbol="INFY")))
    assert first.status == 200
    first_body = await first.json()
    deduper = client.app[DEDUPER]
    assert deduper.claims == {}  # answered: nothing of it is kept in memory
    for _ in range(3):
        repeat = await client.post("/webhook", json=alert(leg(symbol="INFY")))
        assert repeat.status == 200
        body = await repeat.json()
        assert body["status"] == "duplicate"
        assert body["duplicate_of"] == first_body["alert_id"]
        assert body["results"] == first_body["results"]
    assert deduper.claims == {}
    assert [o["symbol"] for o in orders_received(config)] == ["INFY"]


async def test_a_claim_holds_while_its_first_copy_runs_and_a_failed_one_leaves_none() -> None:
    """The in-process claim answers copies arriving while the first one runs, for at most `window_s`; released
    (answered or failed) it is gone, and its waiters are told which."""
    deduper = Deduper(10.0, cast("Journal", None))
    running = deduper.claim("k-running", "A1", 0.0)
    assert deduper.live_claim("k-running", 10.0) is running  # its last instant
    assert deduper.live_claim("k-running", 10.001) is None
    answered = deduper.claim("k-answered", "A2", 1.0)
    deduper.release("k-answered", answered, answered=True)
    assert answered.answered.result() is True
    assert deduper.live_claim("k-answered", 1.0) is None
    failed = deduper.claim("k-failed", "A3", 2.0)
    deduper.release("k-failed", failed, answered=False)
    assert failed.answered.result() is False
    assert deduper.live_claim("k-failed", 2.0) is None  # a failed first copy leaves no claim: the next one runs
    assert sorted(deduper.claims) == ["k-running"]
    assert running.answered.done() is False


@pytest.mark.sqlite_only  # it makes the SQLite journal's look-up fail; PostgreSQL's repeat reads its claim row
async def test_a_repeat_whose_first_copy_the_journal_cannot_show_is_a_503(
    make_client: ClientFactory, config: Config, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first copy is still running (held at the broker); the repeat's claim reads the journal, which fails:
    the repeat is a 503 with the reason (TradingView resends it), logged, and places nothing."""
    config = scripted(config, hold_symbols=["INFY"])
    config = attrs.evolve(config, server=attrs.evolve(config.server, response_deadline_s=0.2))
    client = await make_client(config)
    first = await client.post("/webhook", json=alert(leg(symbol="INFY")))
    assert first.status == 202

    async def unreadable(self: Journal, key: str, since: str) -> None:
        raise OSError("disk I/O error")

    monkeypatch.setattr(Journal, "find_by_dedupe_key", unreadable)
    with capture_logs() as events:
        repeat = await client.post("/webhook", json=alert(leg(symbol="INFY")))
    assert repeat.status == 503
    assert (await repeat.json())["message"] == (
        "journal unreadable: cannot tell whether this alert is a repeat; resend later"
    )
    [line] = [e for e in events if e["event"] == "dedupe.lookup_failed"]
    assert line["log_level"] == "error"
    monkeypatch.undo()
    client.app[BROKERS]["s"].release()  # type: ignore[attr-defined]  # the scripted broker, behind its guard
    async with asyncio.timeout(10):  # bounded: the first copy's order reaches the broker once released
        while True:
            if orders_received(config):
                break
            await asyncio.sleep(0.05)
    assert len(orders_received(config)) == 1


# a first copy on another instance (PostgreSQL shared by several): the store's claim names its holder


def another_instance_holds_the_claim(
    client: Any, monkeypatch: pytest.MonkeyPatch, records: list[dict[str, Any] | None] | Exception
) -> list[str]:
    """The store answers this copy's claim with another instance's alert id `OTHER`, and the journal then shows
    that copy's record as `records` say, one read after another (the last one repeats), or fails with the
    exception. Returns the alert ids the claims were asked for."""
    journal = client.app[JOURNAL]
    asked: list[str] = []

    async def claimed_elsewhere(key: str, alert_id: str, since: str) -> str:
        asked.append(alert_id)
        return OTHER

    async def record_of_other(key: str, since: str) -> dict[str, Any] | None:
        if isinstance(records, Exception):
            raise records
        return records.pop(0) if len(records) > 1 else records[0]

    monkeypatch.setattr(journal, "claim_dedupe", claimed_elsewhere)
    monkeypatch.setattr(journal, "find_by_dedupe_key", record_of_other)
    return asked


OTHER = "A-other-instance"
OTHER_RESULT = {"leg_number": 1, "account": "s", "status": "success", "order_id": "X1"}
OTHER_RECORD = {
    "alert_id": OTHER,
    "status": "success",
    "response": {"alert_id": OTHER, "status": "success", "results": [OTHER_RESULT], "warnings": []},
}


async def test_a_copy_whose_first_runs_on_another_instance_waits_for_its_record(
    make_client: ClientFactory, config: Config, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The other instance's copy is not recorded yet at the first two reads: this copy waits (polling, within
    `server.response_deadline_s`) and is answered from that record once it appears: 200 duplicate of it, with its
    results, and nothing placed here."""
    config = scripted(config)
    config = attrs.evolve(config, server=attrs.evolve(config.server, response_deadline_s=WAIT_S))
    client = await make_client(config)
    asked = another_instance_holds_the_claim(client, monkeypatch, [None, None, OTHER_RECORD])

    response = await client.post("/webhook", json=alert())

    assert response.status == 200, await response.text()
    body = await response.json()
    assert (body["status"], body["duplicate_of"], body["first_status"]) == ("duplicate", OTHER, "success")
    assert body["results"] == [OTHER_RESULT]
    assert len(asked) == 3  # claimed again at each poll until the record showed
    assert orders_received(config) == []


async def test_a_copy_whose_first_is_never_recorded_elsewhere_is_a_503_naming_it(
    make_client: ClientFactory, config: Config, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Never a 2xx for an alert nobody recorded: past `server.response_deadline_s` without the other copy's
    record, 503 naming the copy that holds the claim (TradingView resends), and nothing placed."""
    config = scripted(config)
    config = attrs.evolve(config, server=attrs.evolve(config.server, response_deadline_s=0.2))
    client = await make_client(config)
    another_instance_holds_the_claim(client, monkeypatch, [None])

    started = time.monotonic()
    response = await client.post("/webhook", json=alert())

    assert response.status == 503
    assert (await response.json())["message"] == (
        f"an identical alert ({OTHER}) is being accepted elsewhere; resend later"
    )
    assert time.monotonic() - started >= 0.2  # it waited the deadline out before giving up
    assert orders_received(config) == []


async def test_a_first_copy_elsewhere_that_the_journal_cannot_show_is_a_503(
    make_client: ClientFactory, config: Config, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The claim names another instance's copy, then reading that copy's record fails: 503 with the reason, a
    `dedupe.lookup_failed` error line, nothing placed (it may be a repeat, so it is not run)."""
    config = scripted(config)
    client = await make_client(config)
    another_instance_holds_the_claim(client, monkeypatch, OSError("disk I/O error"))

    with capture_logs() as events:
        response = await client.post("/webhook", json=alert())

    assert response.status == 503
    assert (await response.json())["message"] == (
        "journal unreadable: cannot tell whether this alert is a repeat; resend later"
    )
    assert [e["log_level"] for e in events if e["event"] == "dedupe.lookup_failed"] == ["error"]
    assert orders_received(config) == []


async def test_a_claim_the_store_cannot_release_is_logged_and_the_refusal_stands(
    make_client: ClientFactory, config: Config, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A first copy refused (422) gives its store claim back; when the store fails to, the refusal is answered
    all the same and a `dedupe.release_failed` warning says so (the claim then expires by itself)."""
    config = scripted(config)
    client = await make_client(config)
    released: list[str] = []

    async def release_fails(key: str, alert_id: str) -> None:
        released.append(alert_id)
        raise OSError("connection lost")

    monkeypatch.setattr(client.app[JOURNAL], "release_dedupe", release_fails)
    with capture_logs() as events:
        response = await client.post("/webhook", json=alert(leg(quantity="0")))

    assert response.status == 422
    body = await response.json()
    assert released == [body["alert_id"]]
    assert [e["log_level"] for e in events if e["event"] == "dedupe.release_failed"] == ["warning"]
    assert orders_received(config) == []


async def test_a_first_copy_answered_keeps_its_store_claim_and_a_refused_one_gives_it_back(
    make_client: ClientFactory, config: Config, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The store's claim (several instances on PostgreSQL) is given back only by a first copy that was refused: one
    answered 2xx keeps it, so another instance's copy is answered from its record instead of running again."""
    config = scripted(config)
    client = await make_client(config)
    released: list[str] = []

    async def release(key: str, alert_id: str) -> None:
        released.append(alert_id)

    monkeypatch.setattr(client.app[JOURNAL], "release_dedupe", release)
    placed = await client.post("/webhook", json=alert(leg(symbol="INFY")))
    assert placed.status == 200
    assert released == []
    refused = await client.post("/webhook", json=alert(leg(quantity="0")))
    assert refused.status == 422
    assert released == [(await refused.json())["alert_id"]]
    assert len(orders_received(config)) == 1


class WatchedFuture(asyncio.Future[bool]):
    """A claim's future that says when a copy starts waiting on it (`asyncio.wait` adds a done callback)."""

    def __init__(self) -> None:
        super().__init__()
        self.waited = asyncio.Event()

    def add_done_callback(self, fn: Any, *, context: Any = None) -> None:
        super().add_done_callback(fn, context=context)
        self.waited.set()


@pytest.mark.parametrize(("failed", "status"), [(3, 200), (4, 503)])
async def test_a_copy_sits_through_three_failed_first_copies_then_is_told_to_resend(
    make_client: ClientFactory, config: Config, failed: int, status: int
) -> None:
    """A copy waiting on a first copy that fails may run, unless another copy claimed the alert meanwhile (it then
    waits on that one). After three such failed first copies it runs itself; a fourth is a 503 (TradingView
    resends later) rather than waiting on, and nothing is placed for it."""
    config = scripted(config)
    config = attrs.evolve(config, server=attrs.evolve(config.server, response_deadline_s=WAIT_S))
    client = await make_client(config)
    deduper = client.app[DEDUPER]
    raw = alert(leg(symbol="INFY"))
    key = dedupe_key(raw)

    def another_first_copy(n: int) -> WatchedFuture:
        claim = deduper.claim(key, f"F{n}", client.app[CLOCK]())
        claim.answered = WatchedFuture()
        return claim.answered

    answered = another_first_copy(1)
    waiting = asyncio.create_task(client.post("/webhook", json=raw))
    async with asyncio.timeout(WAIT_S):  # bounded: each step waits for the copy to wait on the claim
        for n in range(1, min(failed, 3) + 1):  # the copy waits on three; it sees a fourth and gives up
            await answered.waited.wait()
            deduper.release(key, deduper.claims[key], answered=False)  # that first copy failed...
            if n < failed:
                answered = another_first_copy(n + 1)  # ...and another one claimed it before the waiter woke
        response = await waiting
    assert response.status == status, await response.text()
    body = await response.json()
    if status == 503:
        assert body["message"] == "earlier copies of this alert failed; resend later"
        assert orders_received(config) == []
    else:
        assert body["status"] == "success"
        assert [o["symbol"] for o in orders_received(config)] == ["INFY"]


async def test_a_repeat_waits_no_longer_than_the_deadline_for_a_first_copy_not_yet_journaled(
    make_client: ClientFactory, config: Config, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first copy's journal write is stalled (a slow disk): when its repeat arrives it is neither recorded nor
    answered. The repeat waits for it no longer than `server.response_deadline_s`, then is answered 202
    `duplicate` of it, `first_status` `accepted` (running, not recorded yet), and places nothing; the first copy
    then runs, once."""
    config = scripted(config)
    config = attrs.evolve(config, server=attrs.evolve(config.server, response_deadline_s=0.2))
    client = await make_client(config)
    journal = client.app[JOURNAL]
    record_plan = journal.record_plan
    stalled, go_on = asyncio.Event(), asyncio.Event()

    async def stalled_record_plan(*args: Any, **kwargs: Any) -> Any:
        stalled.set()
        await go_on.wait()
        return await record_plan(*args, **kwargs)

    monkeypatch.setattr(journal, "record_plan", stalled_record_plan)
    raw = alert()
    first = asyncio.create_task(client.post("/webhook", json=raw))
    try:
        async with asyncio.timeout(WAIT_S):
            await stalled.wait()
        async with asyncio.timeout(5.0):  # far past the deadline: the repeat must not wait on the first copy
            repeat = await client.post("/webhook", json=raw)
            body = await repeat.json()
    finally:
        go_on.set()
    async with asyncio.timeout(WAIT_S):
        first_body = await (await first).json()
        await asyncio.gather(*client.app[STATE].tasks)
    assert repeat.status == 202
    first_id = first_body["alert_id"]
    assert (body["status"], body["duplicate_of"], body["first_status"]) == ("duplicate", first_id, "accepted")
    assert body["message"] == f"duplicate of alert {first_id}, still running: GET /alerts/{first_id} for the outcome"
    assert len(orders_received(config)) == 1


async def test_a_copy_whose_first_elsewhere_is_recorded_but_not_answered_yet_is_told_it_runs(
    make_client: ClientFactory, config: Config, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another instance's first copy is recorded with its plan (queued for the open) and its answer is not
    written yet: this copy gets 202 `duplicate` "still running" with that status, not a 200 "not run again" with
    no results; nothing is placed here."""
    config = scripted(config)
    client = await make_client(config)
    another_instance_holds_the_claim(client, monkeypatch, [{"alert_id": OTHER, "status": "queued", "response": None}])

    response = await client.post("/webhook", json=alert())

    assert response.status == 202, await response.text()
    body = await response.json()
    assert (body["status"], body["duplicate_of"], body["first_status"]) == ("duplicate", OTHER, "queued")
    assert body["message"] == f"duplicate of alert {OTHER}, still running: GET /alerts/{OTHER} for the outcome"
    assert orders_received(config) == []


async def test_copies_arriving_together_after_a_restart_are_answered_with_the_first_ones_id(
    make_client: ClientFactory, config: Config, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After a restart two copies of an alert run before it arrive together: the first is answered from the
    journal's record (its look-up is slow here), the second waits on that copy's claim and is answered as well,
    both `duplicate` of the alert that ran, with its results; nothing more is placed."""
    config = scripted(config)
    client = await make_client(config)
    raw = alert()
    ran = await (await client.post("/webhook", json=raw)).json()
    await client.close()
    restarted = await make_client(config)
    journal, deduper = restarted.app[JOURNAL], restarted.app[DEDUPER]
    find, claim = journal.find_by_dedupe_key, deduper.claim
    looking, go_on = asyncio.Event(), asyncio.Event()

    async def slow_find(key: str, since: str) -> dict[str, Any] | None:
        looking.set()
        await go_on.wait()
        return await find(key, since)

    def watched_claim(key: str, alert_id: str, now: float) -> Any:
        taken = claim(key, alert_id, now)
        taken.answered = WatchedFuture()
        return taken

    monkeypatch.setattr(journal, "find_by_dedupe_key", slow_find)
    monkeypatch.setattr(deduper, "claim", watched_claim)
    try:
        async with asyncio.timeout(WAIT_S):
            one = asyncio.create_task(restarted.post("/webhook", json=raw))
            await looking.wait()
            other = asyncio.create_task(restarted.post("/webhook", json=raw))
            await cast("WatchedFuture", deduper.claims[dedupe_key(raw)].answered).waited.wait()
    finally:
        go_on.set()
    async with asyncio.timeout(WAIT_S):
        responses = [await one, await other]
    for response in responses:
        assert response.status == 200, await response.text()
        body = await response.json()
        assert (body["status"], body["duplicate_of"]) == ("duplicate", ran["alert_id"])
        assert body["results"] == ran["results"]
    assert len(orders_received(config)) == 1


@pytest.mark.parametrize(
    ("extra", "key"),
    [
        (  # the canonical JSON: sorted keys, no spaces, other scripts as themselves (UTF-8), no secret or timenow
            {"note": "खरीद ₹"},
            "body:"
            + hashlib.sha256(
                '{"alertType":"multi_leg_order","note":"खरीद ₹","order_legs":[{"exchange":"NSE","instrument":"EQ",'
                '"meta":{"interval":"1D","time":"2025-11-20T09:15:00Z"},"orderType":"MKT","price":"0",'
                '"productType":"C","quantity":"10","sort_order":"1","symbol":"RELIANCE","transactionType":"B"}]}'.encode()
            ).hexdigest(),
        ),
        ({"id": " ट्रेड-7 "}, "id:" + hashlib.sha256("ट्रेड-7".encode()).hexdigest()),  # the trader's own, trimmed
    ],
    ids=["content", "own id"],
)
async def test_the_journal_records_an_alert_under_the_key_every_version_computes(
    make_client: ClientFactory, config: Config, extra: dict[str, str], key: str
) -> None:
    """The journal outlives the process: a resend that arrives after an upgrade is caught only if the new version
    computes the key the old one recorded. So the key is fixed: the SHA-256 of the alert's canonical text (or of
    the trader's own id) as written here, and the journal finds the alert under it."""
    config = scripted(config)
    client = await make_client(config)
    response = await client.post("/webhook", json=alert(**extra))
    assert response.status == 200, await response.text()
    since = (datetime.now(UTC) - timedelta(seconds=60)).isoformat()
    found = await client.app[JOURNAL].find_by_dedupe_key(key, since)
    assert found is not None
    assert found["alert_id"] == (await response.json())["alert_id"]
