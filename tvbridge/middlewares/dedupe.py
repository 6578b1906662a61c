"""Step 8: the same alert within `dedupe.window_s` runs once; the repeat is answered from the first one.

TradingView resends an alert after a 5xx, a trader's script can fire twice, and a replayed request must not
trade again. The key (`dedupe_key`):

* the trader's own root `id` (or `idempotency_key`) when the alert has one;
* otherwise a SHA-256 of the alert's canonical JSON (sorted keys, no whitespace) without `secret` and without
  `meta.timenow` (at the root and in each leg): a resend and a double-fired alert have the same content and
  differ at most in `timenow`, while two different bars differ in `meta.time` (or the price) and both run.

These records make "once" hold:

* an in-process claim (key -> the first copy's alert id and a future), taken without an `await` between the
  look-up and the claim, so fifty copies arriving at the same moment find one first copy and wait for it
  (up to `server.response_deadline_s`);
* the journal: the first copy's row carries the key (`request[DEDUPE_KEY]`, written by the webhook handler
  with the alert, before any order), so a copy that arrives after a restart is found there (the SQLite journal
  answers a key it never recorded without a query: `tvbridge/recentkeys.py`);
* with several instances on one PostgreSQL store, the store's claim (`Store.claim_dedupe`): a unique row, so
  of two copies arriving at two instances at the same moment one runs; the other waits (up to
  `server.response_deadline_s`) for the first one's record and is answered from it, or gets 503 to resend if
  none appears (never a 2xx for an alert nobody recorded). On SQLite the claim is the journal look-up above.

Under a `[strategies.NAME]` the key is prefixed with the strategy: two strategies firing the same alert are two
trades, not a repeat.

The repeat gets 200 with status `duplicate`, `duplicate_of` (the first copy's alert id) and the first one's
results from the journal, or 202 while the first one is still running. Nothing is journaled for a repeat: it
placed nothing. A first copy answered 4xx/5xx (invalid, stale, journal unwritable) releases its claim and
is not recorded under the key, so a corrected or resent alert runs (also a 429 from the per-strategy limit,
the step after this one). A first copy answered 200 stays the first even when its status is `failed` (the
broker rejected it): it was run, and running it again is a new decision (give it a new `id`).
A claim lives only while its first copy runs: once that copy is answered (2xx) its row in the journal answers
the repeats (every first copy reads the journal anyway, for the copies recorded before a restart), so the table
holds the alerts in flight, not a window's worth of them, and memory stays flat however long the server runs.
A background task clears the journal's keys once they are out of the window.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Final

import attrs
import structlog
from aiohttp import web

from tvbridge.config import DEFAULT_STRATEGY
from tvbridge.errors import JournalError, UnavailableError
from tvbridge.journal import UNFINISHED
from tvbridge.keys import ALERT_ID, CLOCK, CONFIG, DEDUPE_KEY, DEDUPER, JOURNAL, RAW_ALERT, STRATEGY
from tvbridge.metrics import dedupe_hit

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable, Mapping

    from tvbridge.config import DedupeConfig
    from tvbridge.store import Store

log = structlog.get_logger()

OWN_KEYS: Final = ("id", "idempotency_key")
MIN_PRUNE_EVERY_S: Final = 60.0
CLAIM_POLL_S: Final = 0.05
"""How often a copy whose first copy runs on another instance looks for that copy's record."""
MAX_ROUNDS: Final = 3
"""How many failed first copies a waiting copy sits through before it answers 503 (each wait is bounded)."""


def dedupe_key(raw: Mapping[str, Any], strategy: str = DEFAULT_STRATEGY) -> str:
    """The alert's dedupe key: `id:<hash>` from the trader's own key, else `body:<hash>` of its content; under a
    `[strategies.NAME]` prefixed with the strategy, so two strategies sending the same alert both run (issue 19)."""
    if strategy != DEFAULT_STRATEGY:
        return f"strategy:{strategy}|{dedupe_key(raw)}"
    for name in OWN_KEYS:
        own = raw.get(name)
        if isinstance(own, str | int) and not isinstance(own, bool) and str(own).strip():
            return "id:" + hashlib.sha256(str(own).strip().encode("utf-8", "surrogatepass")).hexdigest()
    content = {k: _without_timenow(v) if k == "meta" else v for k, v in raw.items() if k != "secret"}
    legs = content.get("order_legs")
    if isinstance(legs, list):
        content["order_legs"] = [
            {k: _without_timenow(v) if k == "meta" else v for k, v in leg.items()} if isinstance(leg, dict) else leg
            for leg in legs
        ]
    text = json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return "body:" + hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()  # the handler 422s those


def _without_timenow(meta: object) -> object:
    return {k: v for k, v in meta.items() if k != "timenow"} if isinstance(meta, dict) else meta


@attrs.define
class Claim:
    alert_id: str
    at: float
    answered: asyncio.Future[bool]
    """True: the first copy was answered 2xx and is in the journal; False: it failed. Either way the claim is gone."""


class Deduper:
    """The in-process claims; the durable half is the journal's `dedupe_key` column."""

    def __init__(self, window_s: float, journal: Store) -> None:
        self.window_s = window_s
        self.journal = journal
        self.claims: dict[str, Claim] = {}
        """The first copies still running, by key (see the module docstring)."""

    def live_claim(self, key: str, now: float) -> Claim | None:
        claim = self.claims.get(key)
        if claim is None or now - claim.at > self.window_s:
            return None
        return claim

    def claim(self, key: str, alert_id: str, now: float) -> Claim:
        claim = Claim(alert_id=alert_id, at=now, answered=asyncio.get_running_loop().create_future())
        self.claims[key] = claim
        return claim

    def release(self, key: str, claim: Claim, *, answered: bool) -> None:
        """The first copy is done: its waiters are woken, and a repeat from now on is answered by the journal."""
        if self.claims.get(key) is claim:
            del self.claims[key]
        if not claim.answered.done():
            claim.answered.set_result(answered)

    async def first_in_journal(self, key: str) -> dict[str, Any] | None:
        """The first copy's journal record within the window; `JournalError` (503) if the journal cannot say.

        Without an answer the alert might be a repeat, so it is refused (TradingView resends a 503), not run.
        """
        try:
            return await self.journal.find_by_dedupe_key(key, self._since())
        except Exception as e:
            log.exception("dedupe.lookup_failed")
            raise JournalError("journal unreadable: cannot tell whether this alert is a repeat; resend later") from e

    def _since(self) -> str:
        return (datetime.now(UTC) - timedelta(seconds=self.window_s)).isoformat()

    async def first_elsewhere(self, key: str, alert_id: str, wait_s: float) -> dict[str, Any] | None:
        """Claim `key` in the store for `alert_id`: None when this copy is the first (it runs), else the first
        copy's journal record. With several instances on one database the first copy may be running on another
        one and not recorded yet: wait for its record up to `wait_s`, then 503 (TradingView resends), because
        answering 2xx for an alert that the other copy may still fail to record would lose it."""
        deadline = asyncio.get_running_loop().time() + wait_s
        while True:
            since = self._since()
            try:
                holder = await self.journal.claim_dedupe(key, alert_id, since)
            except Exception as e:
                log.exception("dedupe.lookup_failed")
                message = "journal unreadable: cannot tell whether this alert is a repeat; resend later"
                raise JournalError(message) from e
            if holder is None:
                return None
            record = await self.first_in_journal(key)
            if record is not None:
                return record
            if asyncio.get_running_loop().time() >= deadline:
                raise UnavailableError(f"an identical alert ({holder}) is being accepted elsewhere; resend later")
            await asyncio.sleep(CLAIM_POLL_S)

    async def release_elsewhere(self, key: str, alert_id: str) -> None:
        """Give the store's claim back after a refusal (best effort: an unreleased claim expires by itself)."""
        try:
            await self.journal.release_dedupe(key, alert_id)
        except Exception:  # noqa: BLE001 - the refusal is answered either way
            log.warning("dedupe.release_failed")


def duplicate_answer(request: web.Request, first_id: str, record: Mapping[str, Any] | None) -> web.Response:
    """200 `duplicate` with the first copy's results, or 202 while the first copy is still running."""
    response: Mapping[str, Any] = (record or {}).get("response") or {}
    first_status = (record or {}).get("status", UNFINISHED)
    running = first_status == UNFINISHED or not response
    message = (
        f"duplicate of alert {first_id}, still running: GET /alerts/{first_id} for the outcome"
        if running
        else f"duplicate of alert {first_id} (same alert within dedupe.window_s): not run again"
    )
    body = {
        **response,
        "status": "duplicate",
        "message": message,
        "alert_id": request[ALERT_ID],
        "duplicate_of": first_id,
        "first_status": first_status,
        "results": response.get("results", []),
        "warnings": response.get("warnings", []),
    }
    log.info("dedupe.duplicate", reason="same alert within the window", duplicate_of=first_id, running=running)
    dedupe_hit(request.app)
    return web.json_response(body, status=202 if running else 200)


async def deduplicated(
    config: DedupeConfig, request: web.Request, run: Callable[[], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """`run()` (the later steps and the handler) for the first copy of an alert; a repeat is answered from the
    first copy (see the module docstring). Needs `RAW_ALERT`; sets `DEDUPE_KEY` for the journal."""
    if not config.enabled or not config.window_s or RAW_ALERT not in request:
        return await run()
    deduper = request.app[DEDUPER]
    clock = request.app[CLOCK]
    deadline_s = request.app[CONFIG].server.response_deadline_s
    raw: dict[str, Any] = request[RAW_ALERT]
    key = dedupe_key(raw, request.get(STRATEGY, DEFAULT_STRATEGY))
    rounds = 0
    while (claim := deduper.live_claim(key, clock())) is not None:
        rounds += 1
        if rounds > MAX_ROUNDS:
            raise UnavailableError("earlier copies of this alert failed; resend later")
        done, _pending = await asyncio.wait({claim.answered}, timeout=deadline_s)
        if done and not claim.answered.result():
            continue  # the first copy failed: this one may run
        return duplicate_answer(request, claim.alert_id, await deduper.first_in_journal(key))
    claim = deduper.claim(key, request[ALERT_ID], clock())
    answered = False
    try:
        record = await deduper.first_elsewhere(key, request[ALERT_ID], deadline_s)
        if record is not None:  # recorded before a restart, or by another instance
            claim.alert_id = record["alert_id"]
            answered = True
            return duplicate_answer(request, record["alert_id"], record)
        request[DEDUPE_KEY] = key
        response = await run()
        answered = response.status < 400
        return response
    finally:
        deduper.release(key, claim, answered=answered)
        if not answered and claim.alert_id == request[ALERT_ID]:
            await deduper.release_elsewhere(key, request[ALERT_ID])


async def dedupe_ctx(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx: the claims table, and a task that clears journal keys once they are out of the window."""
    config = app[CONFIG].dedupe
    journal = app[JOURNAL]
    app[DEDUPER] = Deduper(config.window_s, journal)
    task = asyncio.create_task(_prune_journal(journal, config.window_s), name="dedupe-prune")
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def _prune_journal(journal: Store, window_s: float) -> None:
    while True:
        try:
            cleared = await journal.prune_dedupe_keys((datetime.now(UTC) - timedelta(seconds=window_s)).isoformat())
            if cleared:
                log.info("dedupe.pruned", cleared=cleared)
        except Exception:
            log.exception("dedupe.prune_failed")
        await asyncio.sleep(max(window_s, MIN_PRUNE_EVERY_S))
