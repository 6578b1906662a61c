"""Running an accepted alert: its legs on each routed account, then the records of what happened.

Per account, legs run one after another in `sort_order`; when one fails, the later ones are skipped unless
`alerts.on_leg_failure = "continue"` (a half-placed bracket is worse than none). An unknown outcome always stops
the account's remaining legs. Accounts run side by side and independently: one account's failure never blocks
another's legs. Every broker exception that is not a typed rejection is treated as an unknown outcome and
resolved with `lookup()` by client order id before anything is reported, so nothing is ever placed twice.

A leg with `manage_position: EXIT_ALL` is resolved here, for every broker alike (`positions.py`): the broker's
position in the leg's contract is read through `Broker.positions(leg)` and the plain order that closes it is
what is sent, journaled and logged (its side and quantity, not the alert's); flat sends nothing and says so.
EXIT_ALL legs of one account run one at a time, so two exits read one position once each, in turn; an exit
order this process sent that the broker still lists as open (`capabilities.orders`) counts as already closing
its part, so a second exit before the first one fills does not close the same position again.

A target-position leg (`position_size`, `market_position`: strategy alerts) is the same mechanism with any
target: under the same per-account lock the position (and the still-open orders this process sent for that
contract) is read and the difference is sent (`positions.to_target`), through the risk limits on its final
quantity; already there sends nothing. Before any of that, each order leg is prepared per account: a relative
strike or expiry is resolved from the broker's listings (`contracts.py`) and the quantity sized (`sizing.py`:
quantity type, the account's multiplier, lots to units).

Each leg is marked `sending` in the journal (committed) before its broker call; the mark carries the previous
leg's result, and the last leg's result goes with the alert's final status, so a leg costs one commit. If the
mark cannot be written the leg is not sent. Crash recovery (`recovery.py`) runs an unfinished alert through
the same path with a `Resume`: settled legs are reused, open ones are looked up first and sent only when the
broker does not have them and the alert is still young enough.

A broker that joined the SQLite journal (`JournalJoiner.join_journal`: the paper book) has the first leg of each
account booked inside the alert's own commit (`alerts/joined.py`): `prepare_joined` runs that leg's checks
(sizing, capabilities, halts, risk limits) before `record_plan`, and `run(joined=...)` reads the outcome the
commit kept instead of calling `place()`. When that leg is the whole alert (one leg, every account joined), the
commit also settles it (`_finish_joined`: results, status and answer, written by `record_plan`): `_run` then
writes the order log row, tells the journal (`order_log_written`) and skips `record_results`: one commit in all.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Literal

import attrs
import structlog

from tvbridge.accessline import Access, alert_done
from tvbridge.alerts.answer import response_body
from tvbridge.alerts.joined import HaltedError, Joined, JoinedLeg, JoinGuard
from tvbridge.alerts.plan import client_order_id
from tvbridge.alerts.records import Finished
from tvbridge.brackets import parts_of
from tvbridge.broker import (
    BrokerError,
    BrokerRejectedError,
    BrokerUnknownOutcomeError,
    BrokerUnsupportedError,
    CancelRequest,
    OpenOrder,
    OrderRequest,
    OrderResult,
    OrderState,
    Position,
    check_supported,
)
from tvbridge.config import DEFAULT_STRATEGY
from tvbridge.contracts import is_relative, resolve
from tvbridge.crashpoints import crash_point
from tvbridge.errors import JournalError
from tvbridge.metrics import Metrics, error_code
from tvbridge.models import (
    Alert,
    CancelLeg,
    LegResult,
    LegStatus,
    OrderLeg,
    QuantityUnit,
    summarize,
)
from tvbridge.parsing import is_target
from tvbridge.positions import Move, SentExits, SentMoves, book_key, exit_all, to_target
from tvbridge.risk import RiskLimitError
from tvbridge.sizing import size
from tvbridge.strategies import current_strategy, use_strategy

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Sequence

    from tvbridge.broker import Broker, JournalJoiner
    from tvbridge.followup import FollowUp
    from tvbridge.notify import Notifier
    from tvbridge.orderlog import OrderLog
    from tvbridge.sessions import Calendar
    from tvbridge.store import Store

log = structlog.get_logger()

FAILED_STATES = frozenset({OrderState.REJECTED, OrderState.CANCELLED, OrderState.EXPIRED})


@attrs.frozen(kw_only=True)
class Prepared:
    """A leg made ready for one account: its contract chosen (`contracts.py`) and its quantity sized
    (`sizing.py`), or why it cannot be sent."""

    leg: OrderLeg
    refusal: str | None = None
    contract: str | None = None
    note: str | None = None


@attrs.frozen(kw_only=True)
class Resume:
    """What crash recovery found in the journal for one unfinished alert."""

    settled: Mapping[tuple[str, int], LegResult]
    """(account, leg number) -> the journaled result of legs that need nothing more."""
    may_send: bool
    """False once the alert is older than `alerts.max_age_s`: what the broker lacks is marked expired."""
    age_s: float
    max_age_s: float
    logged: frozenset[tuple[str, int]] = frozenset()
    """(account, leg number) of the legs whose order log row the crashed run wrote already: not written twice."""
    counted: frozenset[tuple[str, int]] = frozenset()
    """(account, leg number) of the legs the journal shows `sending` or `unknown`: the daily order count read from
    the journal has them already, so resending one does not count it again (`RiskGuard.before_send`)."""


def leg_status(state: OrderState) -> LegStatus:
    """A placed order's leg status: dry run -> test_mode, rejected or cancelled -> failed, else success."""
    if state is OrderState.DRY_RUN:
        return LegStatus.TEST_MODE
    if state in FAILED_STATES:
        return LegStatus.FAILED
    return LegStatus.SUCCESS


def _leg_fields(leg: OrderLeg | CancelLeg) -> dict[str, Any]:
    if isinstance(leg, OrderLeg):
        return {
            "symbol": leg.symbol,
            "exchange": leg.exchange.value,
            "transaction": leg.side.value,
            "quantity": str(leg.quantity),
            "order_type": leg.order_type.value,
            "product_type": leg.product.value,
            "price": str(leg.price),
        }
    return {
        "symbol": leg.symbol or "",
        "exchange": leg.exchange.value if leg.exchange else "",
        "transaction": leg.side.value if leg.side else "",
        "quantity": "",
        "order_type": "CANCEL",
        "product_type": "",
        "price": "",
    }


def _sent_scope(account: str) -> str:
    """Whose exit and target orders still to fill count (`SentExits`, `SentMoves`): the running strategy's on
    `account`. Each strategy moves only its own share, so another strategy's resting exit is not this one's."""
    return f"{account}|{current_strategy()}"


class Executor:
    def __init__(
        self,
        *,
        brokers: Mapping[str, Broker],
        broker_names: Mapping[str, str],
        journal: Store,
        order_log: OrderLog,
        on_leg_failure: Literal["stop", "continue"],
        metrics: Metrics | None = None,
        notifier: Notifier | None = None,
        before_send: Callable[[str, OrderLeg, bool], Awaitable[None]] | None = None,
        quantity_units: Mapping[str, QuantityUnit] | None = None,
        followup: FollowUp | None = None,
        multipliers: Mapping[str, Decimal] | None = None,
        clock: Callable[[], datetime] | None = None,
        calendar: Calendar | None = None,
        share: Callable[[str, OrderLeg, list[Position]], Awaitable[list[Position]]] | None = None,
        own_brackets: Callable[[str, OrderLeg], Awaitable[list[str]]] | None = None,
        own_orders: Callable[[str, CancelLeg], Awaitable[list[str]]] | None = None,
        joined: Mapping[str, JournalJoiner] | None = None,
        give_back: Callable[[str], None] | None = None,
        halted: Callable[[str], str | None] | None = None,
    ) -> None:
        self._brokers = brokers
        self._broker_names = broker_names
        self._journal = journal
        self._order_log = order_log
        self._continue = on_leg_failure == "continue"
        self._metrics = metrics or Metrics()
        self._notifier = notifier
        self._before_send = before_send
        """Risk limits and the kill switch (`risk.RiskGuard`): raises `RiskLimitError` to refuse a leg unsent."""
        self._quantity_units = quantity_units or {}
        """Per account, what an alert's quantity counts when its leg does not say (`lots.py`)."""
        self._followup = followup
        """Order follow-up: gets each finished alert's results, after they are journaled, so the placement's
        answer is on record before any later state of the order is."""
        self._exit_locks: dict[str, asyncio.Lock] = {}
        """Per account: an EXIT_ALL reads the position and sends its close before the next one reads."""
        self._sent_exits = SentExits()
        """Exit orders sent and maybe not filled yet: a second EXIT_ALL does not close their part again."""
        self._sent_moves = SentMoves()
        """Target-position orders sent and maybe not filled yet: a resent target does not move twice."""
        self._multipliers = multipliers or {}
        """Per account `quantity_multiplier` (`sizing.py`); 1 when absent."""
        self._clock = clock or (lambda: datetime.now(UTC))
        """The app's wall clock: what `current_week` means (`contracts.py`)."""
        if calendar is None:
            from tvbridge.sessions import Calendar  # noqa: PLC0415 - only for an executor built without the app's

            calendar = Calendar()
        self._calendar = calendar
        self._share = share
        """The running strategy's share of the broker's positions (`strategies.StrategyBook.share`): what
        EXIT_ALL closes and a target moves. None: the broker's whole position."""
        self._own_brackets = own_brackets
        """With strategies: the running strategy's open brackets in a contract (`StrategyBook.own_brackets`), the
        ones its EXIT_ALL cancels (by order id). None: every bracket in the contract (`Broker.cancel_brackets`)."""
        self._own_orders = own_orders
        """With strategies: the running strategy's open orders a `cancel_order` by symbol names
        (`StrategyBook.own_orders`), cancelled by order id. None: the broker cancels by symbol."""
        self._joined = joined or {}
        """Per account whose plugin joined the SQLite journal, the plugin (`prepare_joined`)."""
        self._give_back = give_back
        """Undo `before_send`'s daily count of one leg of the account (`RiskGuard.give_back`): `unprepare_joined`."""
        self._halted = halted
        """Strategy -> the halts' refusal or None (`RiskGuard.halted`), asked again inside the joined commit."""
        self._join_guard = JoinGuard()
        """What joining plugins may do on the journal's connection: one authorizer, installed once (`JoinGuard`)."""

    async def prepare_joined(
        self,
        alert_id: str,
        alert: Alert,
        first_sends: frozenset[tuple[str, int]],
        *,
        accounts: Sequence[str] = (),
        warnings: Sequence[str] = (),
    ) -> Joined | None:
        """The legs of `first_sends` (journaled `sending` with the alert) whose account joined the journal, checked
        as a send checks them (`_prepare`, `_refuse_before_send`: sizing, capabilities, halts, risk limits, the
        daily count taken), to be booked inside the alert's commit (`alerts/joined.py`). None: nothing joins.

        When they are every leg of the alert on `accounts` (one leg, each account joined), the join also settles
        the alert inside the commit (`_finish_joined`, with `warnings` for its answer): one commit in all."""
        legs: list[JoinedLeg] = []
        for account, number in sorted(first_sends):
            leg = alert.legs[number - 1]
            if account not in self._joined or not isinstance(leg, OrderLeg):
                continue
            prepared = await self._prepare(alert_id, account, number, leg)
            refused = await self._refuse_before_send(alert_id, account, number, prepared.leg, prepared.refusal)
            request = None
            if refused is None:
                client_id = client_order_id(alert_id, number)
                request = OrderRequest(
                    client_order_id=client_id, alert_id=alert_id, leg_number=number, leg=prepared.leg
                )
            legs.append(
                JoinedLeg(
                    account=account,
                    number=number,
                    leg=prepared.leg,
                    request=request,
                    refused=refused,
                    contract=prepared.contract,
                    note=prepared.note,
                )
            )
        if not legs:
            return None
        strategy = current_strategy()
        halted = functools.partial(self._halted, strategy) if self._halted is not None else None
        finish = None
        if len(alert.legs) == 1 and accounts and sorted(accounts) == [leg.account for leg in legs]:
            finish = functools.partial(
                self._finish_joined,
                alert_id=alert_id,
                alert_type=alert.alert_type.value,
                accounts=tuple(accounts),
                warnings=tuple(warnings),
                strategy=strategy,
            )
        return Joined(legs=tuple(legs), plugins=self._joined, halted=halted, guard=self._join_guard, finish=finish)

    def _finish_joined(
        self,
        joined: Joined,
        *,
        alert_id: str,
        alert_type: str,
        accounts: Sequence[str],
        warnings: Sequence[str],
        strategy: str,
    ) -> Finished | None:
        """Inside the alert's commit (`Joined.__call__`), after the bookings: the alert's outcome, as `_run` builds
        it after the commit (the same `_joined_definite` per leg, `summarize`, `response_body`); None when a leg's
        outcome is not definite (only `lookup()`, after the commit, can settle it). Pure: the group commit may run
        it twice, on the event loop or the journal's thread (`full`), in whichever alert's context: the strategy is
        the alert's own, passed in."""
        scope = use_strategy(strategy) if strategy != current_strategy() else contextlib.nullcontext()
        with scope:
            results: list[LegResult] = []
            for account in accounts:
                leg = joined.leg(account, 1)
                result = (
                    self._joined_definite(alert_id, leg, joined.outcomes.get((account, 1))) if leg is not None else None
                )
                if result is None:
                    return None
                results.append(result)
        status = summarize(results).value
        body = response_body(alert_id, alert_type, status, results, warnings)
        return Finished(status=status, response=body, results=tuple(results))

    def unprepare_joined(self, joined: Joined) -> None:
        """The alert's `record_plan` failed (nothing recorded, nothing booked): give back the daily order count
        `prepare_joined` took for each leg it passed, as if the alert had never come (main's order: the count is
        taken only after the alert is recorded)."""
        if self._give_back is None:
            return
        for leg in joined.legs:
            if leg.request is not None:
                self._give_back(leg.account)

    async def run(
        self,
        alert_id: str,
        alert: Alert,
        accounts: Sequence[str],
        warnings: Sequence[str],
        *,
        resume: Resume | None = None,
        premarked: frozenset[tuple[str, int]] = frozenset(),
        arrived: float | None = None,
        strategy: str | None = None,
        access: Access | None = None,
        joined: Joined | None = None,
    ) -> dict[str, Any]:
        """Place the alert's legs, hand over the results to the journal, and return the response body.

        `premarked`: (account, leg number) already journaled `sending` with the alert (`alerts/plan.py`'s
        `first_send`), so their own mark is not written again. `arrived`: the request's arrival
        (`time.perf_counter()`), for the arrival-to-broker histogram and the timings of `alert.done`.
        The results are handed over (`Journal.record_results`), not waited for: crash recovery settles an
        alert whose results were lost by client order id. `strategy`: the strategy it runs
        under when not the running one (crash recovery and the queue pass the journaled one). `access`: the
        webhook request's, which writes `alert.done` with its answer (`tvbridge/accessline.py`). `joined`: the
        legs booked in the alert's commit (`prepare_joined`), their outcome read, not sent again."""
        scope = (
            use_strategy(strategy)
            if strategy is not None and strategy != current_strategy()
            else contextlib.nullcontext()
        )
        with scope:
            return await self._run(
                alert_id,
                alert,
                accounts,
                warnings,
                resume,
                premarked=premarked,
                arrived=arrived,
                access=access,
                joined=joined,
            )

    async def _run(
        self,
        alert_id: str,
        alert: Alert,
        accounts: Sequence[str],
        warnings: Sequence[str],
        resume: Resume | None,
        *,
        premarked: frozenset[tuple[str, int]],
        arrived: float | None,
        access: Access | None = None,
        joined: Joined | None = None,
    ) -> dict[str, Any]:
        started = time.perf_counter()
        if joined is not None:
            self._observe_bookings(joined)
        timings: dict[tuple[str, int], float] = {}
        """(account, leg number) -> the leg's milliseconds, for `alert.done`."""
        per_account: Sequence[list[LegResult] | BaseException]
        if len(accounts) == 1:  # the usual case: no task and gather for one account
            try:
                per_account = [
                    await self._run_account(
                        alert_id,
                        alert,
                        accounts[0],
                        resume,
                        premarked=premarked,
                        arrived=arrived,
                        timings=timings,
                        joined=joined,
                    )
                ]
            except Exception as e:  # noqa: BLE001 - handled below like gather's exceptions
                per_account = [e]
        else:
            per_account = await asyncio.gather(
                *(
                    self._run_account(
                        alert_id, alert, a, resume, premarked=premarked, arrived=arrived, timings=timings, joined=joined
                    )
                    for a in accounts
                ),
                return_exceptions=True,
            )
        results: list[LegResult] = []
        for account, outcome in zip(accounts, per_account, strict=True):
            if isinstance(outcome, BaseException):
                if not isinstance(outcome, Exception):  # cancellation, exit: not ours to swallow
                    raise outcome
                results.extend(self._account_crashed(alert_id, alert, account, outcome))
            else:
                results.extend(outcome)
        finished = joined.finished if joined is not None else None
        if finished is not None:  # settled and written in the alert's own commit (`_finish_joined`)
            results = list(finished.results)
            status_text, body = finished.status, dict(finished.response)
        else:
            status_text = summarize(results).value
            body = response_body(alert_id, alert.alert_type.value, status_text, results, warnings)
        self._metrics.alert_finished(status_text)
        if finished is not None:
            await self._log_finished(alert_id, alert.alert_type.value, results)
        else:
            await self._hand_over(alert_id, alert.alert_type.value, status_text, body, results, resume=resume)
        now = time.perf_counter()
        alert_done(
            access,
            {
                "alert_id": alert_id,
                "alert_type": alert.alert_type.value,
                "status": status_text,
                "legs": [_leg_line(r, timings.get((r.account, r.leg_number))) for r in results],
                "warnings": list(warnings) or None,
                "latency_ms": round((now - started) * 1000, 3),
                "since_arrival_ms": round((now - arrived) * 1000, 3) if arrived is not None else None,
            },
        )
        return body

    async def _hand_over(
        self,
        alert_id: str,
        alert_type: str,
        status: str,
        body: dict[str, Any],
        results: list[LegResult],
        *,
        resume: Resume | None,
    ) -> None:
        """The order log rows, then the results handed to the journal (`record_results`), not waited for."""
        crash_point("before_finish")
        crash_point("before_order_log")
        # the order log first: a crash between the two leaves the alert unfinished, and recovery finds the rows
        # already written (`Resume.logged`) and writes only the missing ones: each leg's row once, never none
        rows = results if resume is None else [r for r in results if (r.account, r.leg_number) not in resume.logged]
        try:
            await self._order_log.append(rows, alert_id=alert_id, alert_type=alert_type)
        except Exception:
            log.exception("order_log.write_failed", alert_id=alert_id)
        crash_point("after_order_log")
        written = self._journal.record_results(alert_id, status, body, results)
        written.add_done_callback(lambda task: self._recorded(alert_id, results, task))

    async def _log_finished(self, alert_id: str, alert_type: str, results: Sequence[LegResult]) -> None:
        """An alert finished in its own commit: its order log rows now (crash point `before_order_log` just
        before), then the journal is told so (`order_log_written`: the alert's "row pending" mark is cleared by the
        next write's transaction). A crash before that leaves the mark, and recovery writes the rows not in the
        log, once (`recovery.write_pending_rows`). A failed write leaves the mark too: the next start writes the
        rows. Order follow-up gets the results at once: they are committed."""
        crash_point("before_order_log")
        try:
            await self._order_log.append(results, alert_id=alert_id, alert_type=alert_type)
        except Exception:
            log.exception("order_log.write_failed", alert_id=alert_id)
        else:
            crash_point("after_order_log")
            self._journal.order_log_written(alert_id)
        if self._followup is not None:
            self._followup.follow(alert_id, results)

    def _observe_bookings(self, joined: Joined) -> None:
        """The broker-call histogram and error count for the legs booked in the alert's commit, as `TimedBroker`
        records a `place()`: the booking's own time (`Joined.booked_s`), not the commit around it."""
        for (account, number), seconds in joined.booked_s.items():
            self._metrics.child(self._metrics.broker_latency, account, "place").observe(seconds)
            outcome = joined.outcomes.get((account, number))
            if isinstance(outcome, Exception):
                self._metrics.broker_errors.labels(account=account, operation="place", code=error_code(outcome)).inc()

    def _recorded(self, alert_id: str, results: Sequence[LegResult], written: asyncio.Task[bool]) -> None:
        """After the results' commit: order follow-up gets them (the placement's answer is on record before any
        later state of the order is), and a failed write is a notification."""
        if (written.cancelled() or not written.result()) and self._notifier is not None:
            self._notifier.event("journal_error", f"alert {alert_id}: its final state could not be journaled")
        if self._followup is not None:
            self._followup.follow(alert_id, results)

    def _account_crashed(self, alert_id: str, alert: Alert, account: str, error: Exception) -> list[LegResult]:
        """A bug while running one account must not cost the other accounts their records: this account's legs
        are reported `unknown` (some may have been sent) and the journal keeps them for a check. At recovery, an
        account the config no longer has ends here too: the message says so, for the trader to know what to check."""
        log.error("account.failed", alert_id=alert_id, account=account, error=f"{type(error).__name__}: {error}")
        message = "outcome unknown (internal error while sending): check the broker before resending"
        if account not in self._brokers:  # recovery of an alert whose account was renamed or removed since
            message = (
                f"outcome unknown: account {account} is not configured any more, so nothing was looked up or sent:"
                " check its broker before resending"
            )
        legs: tuple[OrderLeg | CancelLeg, ...] = alert.legs
        return [
            self.result_for(
                account,
                n,
                leg,
                LegStatus.UNKNOWN,
                message,
                client_id=client_order_id(alert_id, n) if isinstance(leg, OrderLeg) else None,
            )
            for n, leg in enumerate(legs, start=1)
        ]

    async def _run_account(
        self,
        alert_id: str,
        alert: Alert,
        account: str,
        resume: Resume | None,
        *,
        premarked: frozenset[tuple[str, int]] = frozenset(),
        arrived: float | None = None,
        timings: dict[tuple[str, int], float] | None = None,
        joined: Joined | None = None,
    ) -> list[LegResult]:
        results: list[LegResult] = []
        stop_reason = ""
        legs: tuple[OrderLeg | CancelLeg, ...] = alert.legs
        unjournaled: LegResult | None = None
        for number, leg in enumerate(legs, start=1):
            if stop_reason:
                results.append(self.result_for(account, number, leg, LegStatus.SKIPPED, f"skipped: {stop_reason}"))
                continue
            started = time.perf_counter()
            result = await self._leg(
                alert_id,
                account,
                number,
                leg,
                resume=resume,
                done=unjournaled,
                premarked=(account, number) in premarked,
                arrived=arrived,
                joined=joined.leg(account, number) if joined is not None else None,
                booked=joined.outcomes if joined is not None else None,
                finished=joined.finished if joined is not None else None,
            )
            unjournaled = result
            results.append(result)
            self._metrics.leg_finished(result)
            if self._notifier is not None:
                self._notifier.leg_finished(alert_id, result)
            latency_ms = round((time.perf_counter() - started) * 1000, 3)
            if timings is not None:
                timings[(account, number)] = latency_ms
            log.debug(  # the alert's one info line is `alert.done`, with every leg in it
                "leg.done" if result.status in {LegStatus.SUCCESS, LegStatus.TEST_MODE} else "leg.failed",
                alert_id=alert_id,
                leg=number,
                account=account,
                broker=result.broker,
                status=result.status.value,
                order_id=result.order_id,
                message=result.message,
                latency_ms=latency_ms,
            )
            if result.status is LegStatus.UNKNOWN:
                stop_reason = f"leg {number} has an unknown outcome"
            elif result.status is LegStatus.FAILED and not self._continue:
                stop_reason = f"leg {number} failed"
        return results

    async def _leg(
        self,
        alert_id: str,
        account: str,
        number: int,
        leg: OrderLeg | CancelLeg,
        *,
        resume: Resume | None,
        done: LegResult | None,
        premarked: bool = False,
        arrived: float | None = None,
        joined: JoinedLeg | None = None,
        booked: Mapping[tuple[str, int], OrderResult | Exception] | None = None,
        finished: Finished | None = None,
    ) -> LegResult:
        """One leg: its contract and quantity for this account (`_prepare`), (on recovery: reuse or look up first),
        mark `sending` (unless `premarked` with the alert), call the broker. A `joined` leg was checked and booked
        in the alert's commit: its outcome (in `booked`) is read instead."""
        if resume is not None and (account, number) in resume.settled:
            return resume.settled[(account, number)]
        if joined is not None and isinstance(leg, OrderLeg):
            outcome = (booked or {}).get((account, number))
            return await self._joined_result(alert_id, joined, outcome, arrived, finished)
        if isinstance(leg, OrderLeg):
            prepared = await self._prepare(alert_id, account, number, leg)
            sent = await self._order_leg(
                alert_id, account, number, prepared, resume=resume, done=done, premarked=premarked, arrived=arrived
            )
            return _noted(sent, prepared)
        if resume is not None:
            recovered = await self._recovered(alert_id, account, number, leg, resume)
            if recovered is not None:
                return recovered
        return await self._send(alert_id, account, number, leg, done)

    async def _order_leg(
        self,
        alert_id: str,
        account: str,
        number: int,
        prepared: Prepared,
        *,
        resume: Resume | None,
        done: LegResult | None,
        premarked: bool = False,
        arrived: float | None = None,
    ) -> LegResult:
        """An order leg whose contract and size are worked out: recovery first, then a target position, an exit
        or a plain order."""
        leg = prepared.leg
        if resume is not None:
            recovered = await self._recovered(alert_id, account, number, leg, resume)
            if recovered is not None:
                return recovered
        if prepared.refusal is None and is_target(leg):
            async with self.exit_lock(account):
                return await self._move(alert_id, account, number, leg, done)
        counted = resume is not None and (account, number) in resume.counted
        refused = await self._refuse_before_send(alert_id, account, number, leg, prepared.refusal, counted=counted)
        if refused is not None:
            return await self._journal_refusal(alert_id, refused)
        if leg.manage_position is not None:
            async with self.exit_lock(account):
                return await self._exit(alert_id, account, number, leg, done)
        return await self._send(alert_id, account, number, leg, done, premarked=premarked, arrived=arrived)

    def exit_lock(self, account: str) -> asyncio.Lock:
        """One reader of `account`'s positions at a time (EXIT_ALL, targets, square-off): two exits reading the
        same position would each close it."""
        return self._exit_locks.setdefault(account, asyncio.Lock())

    async def _send(
        self,
        alert_id: str,
        account: str,
        number: int,
        leg: OrderLeg | CancelLeg,
        done: LegResult | None,
        *,
        premarked: bool = False,
        arrived: float | None = None,
    ) -> LegResult:
        """Mark the leg `sending` (unless the alert's own transaction did: `premarked`), then place or cancel it."""
        try:
            if not premarked:
                await self._journal.mark_sending(alert_id, account, number, done)
        except JournalError as e:
            log.error("leg.not_sent", alert_id=alert_id, leg=number, account=account, error=str(e))
            client_id = client_order_id(alert_id, number) if isinstance(leg, OrderLeg) else None
            return self.result_for(account, number, leg, LegStatus.FAILED, f"not sent: {e}", client_id=client_id)
        crash_point("before_send")
        if arrived is not None:
            self._metrics.to_broker(time.perf_counter() - arrived)
        if isinstance(leg, CancelLeg):
            result = await self._cancel(alert_id, account, number, leg)
        else:
            result = await self._place(alert_id, account, number, leg)
        crash_point("after_send")
        return result

    def _joined_definite(
        self, alert_id: str, joined: JoinedLeg, outcome: OrderResult | Exception | None
    ) -> LegResult | None:
        """A joined leg's result when its outcome settles it (refused by the checks, halted in the commit, booked,
        refused by the book); None when only `lookup()` can say (unknown, a plugin bug, no outcome kept). Pure:
        inside the commit (`_finish_joined`) and after it (`_joined_result`) alike."""
        account, number = joined.account, joined.number
        prepared = Prepared(leg=joined.leg, contract=joined.contract, note=joined.note)
        if joined.refused is not None:
            return _noted(joined.refused, prepared)
        leg, client_id = prepared.leg, client_order_id(alert_id, number)
        if isinstance(outcome, OrderResult):
            result = self._from_order(account, number, leg, outcome, client_id)
        elif isinstance(outcome, HaltedError) or (
            isinstance(outcome, BrokerError) and not isinstance(outcome, BrokerUnknownOutcomeError)
        ):
            result = self.result_for(account, number, leg, LegStatus.FAILED, str(outcome), client_id=client_id)
        else:
            return None
        return _noted(result, prepared)

    async def _joined_result(
        self,
        alert_id: str,
        joined: JoinedLeg,
        outcome: OrderResult | Exception | None,
        arrived: float | None,
        finished: Finished | None = None,
    ) -> LegResult:
        """A leg booked in the alert's commit (`alerts/joined.py`), read as `_place` reads a `place()` answer; when
        the commit settled the whole alert (`finished`), the result written there."""
        account, number = joined.account, joined.number
        definite = (
            _result_of(finished, account, number)
            if finished is not None
            else self._joined_definite(alert_id, joined, outcome)
        )
        if definite is not None and (joined.refused is not None or isinstance(outcome, HaltedError)):
            if joined.refused is None and self._give_back is not None:
                # as a send the halt refused: never sent, not one of today's orders
                self._give_back(account)
            return definite
        if arrived is not None:
            self._metrics.to_broker(time.perf_counter() - arrived)
        if isinstance(outcome, OrderResult):
            self._nudge(account, outcome)
        if definite is not None:
            crash_point("after_send")
            return definite
        # unknown, a plugin bug, or no outcome kept: ask the book
        prepared = Prepared(leg=joined.leg, contract=joined.contract, note=joined.note)
        leg, client_id = prepared.leg, client_order_id(alert_id, number)
        if outcome is not None and not isinstance(outcome, BrokerError):
            log.error("broker.unexpected_error", alert_id=alert_id, leg=number, account=account, error=repr(outcome))
        reason = "the booking's answer was lost"
        if isinstance(outcome, BrokerError):
            reason = str(outcome)
        elif isinstance(outcome, Exception):
            reason = self._plugin_bug(account, outcome)
        result = await self._resolve_unknown(alert_id, account, number, leg, client_id=client_id, reason=reason)
        crash_point("after_send")
        return _noted(result, prepared)

    async def _recovered(
        self, alert_id: str, account: str, number: int, leg: OrderLeg | CancelLeg, resume: Resume
    ) -> LegResult | None:
        """On recovery: what the broker already has for the leg, or `expired` when it must not be sent any more;
        None when it may be sent."""
        if isinstance(leg, OrderLeg):
            found = await self._recovery_lookup(alert_id, account, number, leg)
            if found is not None:
                return found
        if not resume.may_send:
            return self._expired(alert_id, account, number, leg, resume)
        return None

    async def _prepare(self, alert_id: str, account: str, number: int, leg: OrderLeg) -> Prepared:
        """The leg's contract chosen when relative (`contracts.py`), then its quantity in units for this account
        (`sizing.py`: quantity type, multiplier, lots); or why it cannot be sent (nothing sent)."""
        broker = self._brokers[account]
        contract: str | None = None
        account_unit = self._quantity_units.get(account, QuantityUnit.UNITS)
        multiplier = self._multipliers.get(account, Decimal(1))
        try:
            if is_relative(leg):
                chosen = await resolve(broker, leg, now=self._clock(), calendar=self._calendar)
                leg, contract = chosen.leg, chosen.contract
                log.info("leg.contract_chosen", alert_id=alert_id, leg=number, account=account, contract=contract)
            sized = await size(broker, leg, account_unit, multiplier)
        except BrokerError as e:
            return Prepared(leg=leg, refusal=f"not sent: {e}", contract=contract)
        except Exception as e:  # a failing conversion must never let the leg through in the wrong size
            log.exception("leg.check_failed", alert_id=alert_id, leg=number, account=account)
            message = f"not sent: the contract or quantity could not be worked out ({type(e).__name__})"
            return Prepared(leg=leg, refusal=message, contract=contract)
        return Prepared(leg=sized.leg, contract=contract, note=sized.note)

    async def _move(self, alert_id: str, account: str, number: int, leg: OrderLeg, done: LegResult | None) -> LegResult:
        """A target position: read the position (and what this process's earlier target orders still have to
        fill), send the difference (or nothing), through the same checks and journal marks as any order."""
        client_id = client_order_id(alert_id, number)
        broker = self._brokers[account]
        target = leg.position_size or 0
        if not broker.capabilities.positions:
            message = (
                "not sent: a target position (position_size / market_position) needs the broker capability"
                " `positions` (reading the current position), which this broker does not declare"
            )
            return self.result_for(account, number, leg, LegStatus.FAILED, message, client_id=client_id)
        try:
            listed: list[OpenOrder] | None = None
            if broker.capabilities.orders and (
                self._sent_moves.may_be_open(_sent_scope(account), leg) or self._sent_exits.has(_sent_scope(account))
            ):
                # open orders before positions: an order filling in between is then counted twice (sends too
                # little, corrected by the next alert), never not at all (would send it again)
                listed = await broker.open_orders()
            found = await self._positions(account, leg)
            pending: list[OpenOrder] = []
            if listed is not None:  # this process's target and exit orders for the contract, still to fill
                pending = self._sent_moves.still_open(_sent_scope(account), leg, listed)
                pending += self._sent_exits.still_open(_sent_scope(account), leg, found, listed)
        except BrokerError as e:
            message = f"not sent: the current position could not be read: {e}"
            return await self._journal_refusal(
                alert_id, self.result_for(account, number, leg, LegStatus.FAILED, message, client_id=client_id)
            )
        except Exception as e:  # a plugin bug while reading: nothing was sent
            log.exception("broker.unexpected_error", alert_id=alert_id, leg=number, account=account)
            message = f"not sent: reading the current position failed ({type(e).__name__}: {e})"
            return await self._journal_refusal(
                alert_id, self.result_for(account, number, leg, LegStatus.FAILED, message, client_id=client_id)
            )
        move = to_target(leg, target, found, pending)
        log.info("leg.target", alert_id=alert_id, leg=number, account=account, before=move.before, target=target)
        return _moved(await self._send_move(alert_id, account, number, leg, move=move, done=done), move)

    async def _send_move(
        self, alert_id: str, account: str, number: int, leg: OrderLeg, *, move: Move, done: LegResult | None
    ) -> LegResult:
        """The order of a target move, through the risk limits (on its final quantity) and the journal mark."""
        client_id = client_order_id(alert_id, number)
        if move.leg is None:
            there = attrs.evolve(leg, quantity=0)
            result = self.result_for(account, number, there, LegStatus.SUCCESS, "", client_id=client_id)
            return attrs.evolve(result, transaction="")  # no order, so no side (the leg's is a placeholder)
        refused = await self._refuse_before_send(alert_id, account, number, move.leg)
        if refused is not None:
            return await self._journal_refusal(alert_id, refused)
        try:
            await self._journal.mark_sending(alert_id, account, number, done)
        except JournalError as e:
            log.error("leg.not_sent", alert_id=alert_id, leg=number, account=account, error=str(e))
            return self.result_for(account, number, move.leg, LegStatus.FAILED, f"not sent: {e}", client_id=client_id)
        crash_point("before_send")
        result = await self._place(alert_id, account, number, move.leg)
        crash_point("after_send")
        if result.status is not LegStatus.FAILED:  # placed, or maybe placed: a resend must count it
            self._sent_moves.remember(_sent_scope(account), client_id, move.leg)
        return result

    async def _exit(self, alert_id: str, account: str, number: int, leg: OrderLeg, done: LegResult | None) -> LegResult:
        """EXIT_ALL: read the position through the interface, send the plain order that closes it (or nothing)."""
        client_id = client_order_id(alert_id, number)
        broker = self._brokers[account]
        cancelled = await self._cancel_brackets(alert_id, account, number, leg)
        if isinstance(cancelled, LegResult):
            return await self._journal_refusal(alert_id, cancelled)
        try:
            found = await self._positions(account, leg)
            pending: list[OpenOrder] = []
            if broker.capabilities.orders and self._sent_exits.may_be_open(_sent_scope(account), leg, found):
                pending = self._sent_exits.still_open(_sent_scope(account), leg, found, await broker.open_orders())
        except BrokerError as e:
            message = f"not sent: the position to close could not be read: {e}"
            return await self._journal_refusal(
                alert_id, self.result_for(account, number, leg, LegStatus.FAILED, message, client_id=client_id)
            )
        except Exception as e:  # a plugin bug while reading: nothing was sent
            log.exception("broker.unexpected_error", alert_id=alert_id, leg=number, account=account)
            message = f"not sent: reading the position to close failed ({type(e).__name__}: {e})"
            return await self._journal_refusal(
                alert_id, self.result_for(account, number, leg, LegStatus.FAILED, message, client_id=client_id)
            )
        exit_order = exit_all(leg, found, pending)
        log.info("leg.exit_all", alert_id=alert_id, leg=number, account=account, net_quantity=exit_order.net_quantity)
        if exit_order.leg is None:
            flat = attrs.evolve(leg, quantity=0)
            message = exit_order.message + cancelled
            return self.result_for(account, number, flat, LegStatus.SUCCESS, message, client_id=client_id)
        try:
            await self._journal.mark_sending(alert_id, account, number, done)
        except JournalError as e:
            log.error("leg.not_sent", alert_id=alert_id, leg=number, account=account, error=str(e))
            return self.result_for(
                account, number, exit_order.leg, LegStatus.FAILED, f"not sent: {e}", client_id=client_id
            )
        crash_point("before_send")
        result = await self._place(alert_id, account, number, exit_order.leg)
        crash_point("after_send")
        if result.status is not LegStatus.FAILED:  # placed, or maybe placed: a later exit must not close it again
            self._sent_exits.remember(_sent_scope(account), client_id, exit_order.leg, found)
        return attrs.evolve(result, message=f"{exit_order.message}; {result.message}{cancelled}")

    async def _positions(self, account: str, leg: OrderLeg) -> list[Position]:
        """The position an exit or a target reads: the running strategy's share of the broker's."""
        found = list(await self._brokers[account].positions(leg))
        return found if self._share is None else await self._share(account, leg, found)

    async def _cancel_brackets(self, alert_id: str, account: str, number: int, leg: OrderLeg) -> str | LegResult:
        """EXIT_ALL first cancels the brackets resting in the contract (`Broker.cancel_brackets`): a stop left
        behind a closed position would open it again the wrong way. Returns the note for the leg's message, or
        the failed result when they could not be cancelled (then nothing is sent: the stops still protect the
        position)."""
        broker = self._brokers[account]
        if not broker.capabilities.brackets:
            return ""
        try:
            if self._own_brackets is None:
                cancelled = await broker.cancel_brackets(leg)
            else:  # a strategy's exit cancels its own brackets only
                cancelled = []
                for order_id in await self._own_brackets(account, leg):
                    request = CancelRequest(alert_id=alert_id, leg_number=number, leg=CancelLeg(order_id=order_id))
                    cancelled += await broker.cancel(request)
        except Exception as e:
            if not isinstance(e, BrokerError):
                log.exception("broker.unexpected_error", alert_id=alert_id, leg=number, account=account)
            message = f"not sent: the brackets on {leg.symbol} could not be cancelled first ({e})"
            return self.result_for(
                account, number, leg, LegStatus.FAILED, message, client_id=client_order_id(alert_id, number)
            )
        ids = [c.order_id for c in cancelled if c.order_id]
        if not ids:
            return ""
        log.info("leg.brackets_cancelled", alert_id=alert_id, leg=number, account=account, order_ids=ids)
        return f"; cancelled bracket order(s) first: {', '.join(ids)}"

    async def _recovery_lookup(self, alert_id: str, account: str, number: int, leg: OrderLeg) -> LegResult | None:
        """Does the broker already have this leg? None when it has not; an `unknown` result when it cannot say."""
        client_id = client_order_id(alert_id, number)
        try:
            found = await self._brokers[account].lookup(client_id)
        except Exception as e:  # noqa: BLE001 - cannot tell: never resend blind
            message = f"recovery: lookup of {client_id} failed ({e}): check the broker before resending"
            return self.result_for(account, number, leg, LegStatus.UNKNOWN, message, client_id=client_id)
        if found is None:
            return None
        log.info("recovery.leg_found", alert_id=alert_id, leg=number, account=account, order_id=found.order_id)
        return self._from_order(account, number, leg, found, client_id)

    def _expired(
        self, alert_id: str, account: str, number: int, leg: OrderLeg | CancelLeg, resume: Resume
    ) -> LegResult:
        client_id = client_order_id(alert_id, number) if isinstance(leg, OrderLeg) else None
        message = (
            f"expired: not sent after a restart; the alert is {resume.age_s:.0f} s old and alerts.max_age_s is"
            f" {resume.max_age_s:.0f} s" + (f"; the broker has no order {client_id}" if client_id else "")
        )
        log.warning(
            "recovery.leg_expired",
            alert_id=alert_id,
            leg=number,
            account=account,
            client_order_id=client_id,
            age_s=round(resume.age_s, 1),
            max_age_s=resume.max_age_s,
        )
        return self.result_for(account, number, leg, LegStatus.EXPIRED, message, client_id=client_id)

    def result_for(
        self,
        account: str,
        number: int,
        leg: OrderLeg | CancelLeg,
        status: LegStatus,
        message: str,
        *,
        order: OrderResult | None = None,
        client_id: str | None = None,
    ) -> LegResult:
        return LegResult(
            leg_number=number,
            account=account,
            broker=self._broker_names.get(account, account),
            status=status,
            message=message,
            order_id=order.order_id if order else None,
            client_order_id=client_id,
            order_state=order.state.value if order else None,
            filled_quantity=order.filled_quantity if order and order.state is not OrderState.DRY_RUN else None,
            average_price=str(order.average_price) if order and order.average_price is not None else None,
            bracket=parts_of(order.details) if order else (),
            strategy=current_strategy(),
            position_key=book_key(leg) if isinstance(leg, OrderLeg) else None,
            **_leg_fields(leg),
        )

    async def _refuse_before_send(
        self,
        alert_id: str,
        account: str,
        number: int,
        leg: OrderLeg,
        not_sized: str | None = None,
        *,
        counted: bool = False,
    ) -> LegResult | None:
        """Quantity unit, capabilities and risk limits, checked before the leg is marked `sending`: a refused leg
        never counts as (possibly) sent, neither for recovery nor for `max_orders_per_day`. `not_sized` is why
        the quantity could not be converted to units (`_in_units`)."""
        client_id = client_order_id(alert_id, number)
        if not_sized is not None:
            return self.result_for(account, number, leg, LegStatus.FAILED, not_sized, client_id=client_id)
        try:
            check_supported(self._brokers[account].capabilities, leg)
            if self._before_send is not None:
                await self._before_send(account, leg, counted)
        except BrokerUnsupportedError as e:
            return self.result_for(account, number, leg, LegStatus.FAILED, f"not sent: {e}", client_id=client_id)
        except RiskLimitError as e:
            return self.result_for(account, number, leg, LegStatus.FAILED, str(e), client_id=client_id)
        except Exception as e:  # a failing check must never let the leg through; nothing was sent
            log.exception("leg.check_failed", alert_id=alert_id, leg=number, account=account)
            message = f"not sent: the pre-send checks failed ({type(e).__name__})"
            return self.result_for(account, number, leg, LegStatus.FAILED, message, client_id=client_id)
        return None

    async def _journal_refusal(self, alert_id: str, refused: LegResult) -> LegResult:
        """Commit a leg's refusal (`failed`, with its reason) before the executor goes on: refused by its checks
        before the send, or by the broker (a `BrokerError` that is not an unknown outcome: nothing placed). The leg
        is journaled `sending` (marked with the alert, or before the send) or `pending`, and its result would
        otherwise come only with the alert's results, which the answer does not wait for. A crash in between left
        it open: recovery looked it up, did not find it and, once the halt that refused it was lifted (or the
        broker would take it), SENT the order of an alert answered "refused". Only refusals pay this commit,
        never a placed leg. If it cannot be written, the leg is still refused (not sent again), its message says
        so, and `leg.refusal_unjournaled` records the moment (docs/durability.md)."""
        try:
            await self._journal.record_leg(alert_id, refused)
        except JournalError as e:
            log.error(
                "leg.refusal_unjournaled",
                alert_id=alert_id,
                leg=refused.leg_number,
                account=refused.account,
                error=str(e),
            )
            return attrs.evolve(refused, message=f"{refused.message}; the refusal could not be journaled: {e}")
        crash_point("after_refusal")
        return refused

    async def _place(self, alert_id: str, account: str, number: int, leg: OrderLeg) -> LegResult:
        broker = self._brokers[account]
        client_id = client_order_id(alert_id, number)
        request = OrderRequest(client_order_id=client_id, alert_id=alert_id, leg_number=number, leg=leg)
        try:
            order = await broker.place(request)
            result = self._from_order(account, number, leg, order, client_id)
            self._nudge(account, order)
        except BrokerUnknownOutcomeError as e:
            return await self._resolve_unknown(alert_id, account, number, leg, client_id=client_id, reason=str(e))
        except BrokerError as e:  # nothing placed: refused now, never by a restart's recovery later
            refused = self.result_for(account, number, leg, LegStatus.FAILED, str(e), client_id=client_id)
            return await self._journal_refusal(alert_id, refused)
        except Exception as e:  # a plugin bug: the order may exist, so it is an unknown outcome
            log.exception("broker.unexpected_error", alert_id=alert_id, leg=number, account=account)
            return await self._resolve_unknown(
                alert_id, account, number, leg, client_id=client_id, reason=self._plugin_bug(account, e)
            )
        return result

    def _nudge(self, account: str, order: OrderResult) -> None:
        """A placement that changed earlier orders (`details["moved_orders"]`, e.g. paper limits it filled) has
        follow-up look those up now rather than at their next poll."""
        moved = order.details.get("moved_orders")
        if self._followup is not None and isinstance(moved, list | tuple):
            self._followup.nudge(account, [str(order_id) for order_id in moved])

    def _plugin_bug(self, account: str, error: Exception) -> str:
        """Whose fault it was, for the leg's message: the plugin's, not tvbridge's."""
        plugin = self._broker_names.get(account, account)
        return f"the {plugin!r} broker plugin raised {type(error).__name__}: {error}"

    def _from_order(self, account: str, number: int, leg: OrderLeg, order: OrderResult, client_id: str) -> LegResult:
        status = leg_status(order.state)
        message = order.message or f"order {order.state.value}"
        return self.result_for(account, number, leg, status, message, order=order, client_id=client_id)

    async def _resolve_unknown(
        self, alert_id: str, account: str, number: int, leg: OrderLeg, *, client_id: str, reason: str
    ) -> LegResult:
        """Ask `lookup()` what became of a placement whose answer was lost; the leg's message (journaled, in
        the order log and the answer) keeps the reason, and the resolution is logged."""
        broker = self._brokers[account]
        try:
            found = await broker.lookup(client_id)
        except Exception as e:  # noqa: BLE001 - still unknown; reported as such
            return self.result_for(
                account,
                number,
                leg,
                LegStatus.UNKNOWN,
                f"outcome unknown ({reason}); lookup failed too ({e}): check the broker before resending",
                client_id=client_id,
            )
        if found is None:
            return self.result_for(
                account,
                number,
                leg,
                LegStatus.UNKNOWN,
                f"outcome unknown ({reason}); the broker has no order {client_id} yet: check before resending",
                client_id=client_id,
            )
        resolved = self._from_order(account, number, leg, found, client_id)
        log.warning(
            "leg.resolved_by_lookup",
            alert_id=alert_id,
            leg=number,
            account=account,
            broker=resolved.broker,
            order_id=found.order_id,
            status=resolved.status.value,
            reason=reason,
        )
        return attrs.evolve(resolved, message=f"{resolved.message} (found by lookup after: {reason})")

    async def _cancel(self, alert_id: str, account: str, number: int, leg: CancelLeg) -> LegResult:
        broker = self._brokers[account]
        try:
            if not broker.capabilities.cancel:
                raise BrokerUnsupportedError("this broker cannot cancel orders")  # noqa: TRY301 - same handling
            if leg.order_id is None and self._own_orders is not None:
                cancelled = await self._cancel_own(alert_id, account, number, leg)
            elif self._own_orders is not None and (refusal := await self._not_own(account, leg.order_id)):
                return await self._journal_refusal(
                    alert_id, self.result_for(account, number, leg, LegStatus.FAILED, refusal)
                )
            else:
                cancelled = await broker.cancel(CancelRequest(alert_id=alert_id, leg_number=number, leg=leg))
            ids = [c.order_id for c in cancelled if c.order_id]
            dry_run = any(c.state is OrderState.DRY_RUN for c in cancelled)
        except BrokerUnknownOutcomeError as e:
            message = f"cancel outcome unknown ({e}): check the broker"
            return self.result_for(account, number, leg, LegStatus.UNKNOWN, message)
        except BrokerError as e:  # nothing cancelled: refused now, never redone by a restart's recovery later
            return await self._journal_refusal(
                alert_id, self.result_for(account, number, leg, LegStatus.FAILED, str(e))
            )
        except Exception as e:  # a plugin bug: some orders may be cancelled already
            log.exception("broker.unexpected_error", alert_id=alert_id, leg=number, account=account)
            message = f"cancel outcome unknown ({self._plugin_bug(account, e)}): check the broker"
            return self.result_for(account, number, leg, LegStatus.UNKNOWN, message)
        message = f"cancelled {len(ids)} order(s)" + (f": {', '.join(ids)}" if ids else "")
        status = LegStatus.TEST_MODE if dry_run else LegStatus.SUCCESS
        result = self.result_for(account, number, leg, status, message)
        return result if not ids else _with_order_id(result, ",".join(ids))

    async def _not_own(self, account: str, order_id: str | None) -> str | None:
        """With strategies, why a `cancel_order` by order id is refused: the order is another strategy's (a named
        strategy cancels only orders it placed; `default` also orders tvbridge never placed). None: allowed."""
        if order_id is None:
            return None
        strategy = current_strategy()
        try:
            owners = await self._journal.order_strategies(account, order_id)
        except JournalError as e:  # nothing asked of the broker: a refusal, not a plugin's unknown outcome
            return f"not cancelled: whose order {order_id} is could not be read from the journal ({e})"
        if strategy in owners or (strategy == DEFAULT_STRATEGY and not owners):
            return None
        whose = "another strategy's order" if owners else "an order tvbridge did not place under it"
        return f"not cancelled: order {order_id} is {whose}; strategy {strategy} cancels only its own orders"

    async def _cancel_own(self, alert_id: str, account: str, number: int, leg: CancelLeg) -> list[OrderResult]:
        """A strategy's `cancel_order` by symbol: its own open orders, one by one by order id; an order that
        finished meanwhile (the broker refuses its cancel) is skipped."""
        assert self._own_orders is not None  # noqa: S101 - only called with the hook
        cancelled: list[OrderResult] = []
        for order_id in await self._own_orders(account, leg):
            request = CancelRequest(alert_id=alert_id, leg_number=number, leg=CancelLeg(order_id=order_id))
            try:
                cancelled += await self._brokers[account].cancel(request)
            except BrokerRejectedError as e:
                log.info(
                    "leg.cancel_skipped",
                    alert_id=alert_id,
                    leg=number,
                    account=account,
                    order_id=order_id,
                    reason=str(e),
                )
        return cancelled


def _leg_line(result: LegResult, latency_ms: float | None) -> dict[str, Any]:
    """One leg inside `alert.done`: what `leg.done` / `leg.failed` said, the message only when it did not go."""
    line: dict[str, Any] = {
        "leg": result.leg_number,
        "account": result.account,
        "broker": result.broker,
        "status": result.status.value,
        "order_id": result.order_id,
        "latency_ms": latency_ms,
    }
    if result.status not in {LegStatus.SUCCESS, LegStatus.TEST_MODE}:
        line["message"] = result.message
    return line


def _moved(result: LegResult, move: Move) -> LegResult:
    """A target leg's result shows the position found, the target and what was sent (in its message too)."""
    message = f"{move.message}; {result.message}" if result.message else move.message
    return attrs.evolve(result, message=message, position_before=move.before, position_target=move.target)


def _noted(result: LegResult, prepared: Prepared) -> LegResult:
    """The chosen contract and how the quantity was sized, in front of the leg's message (so the order log's
    row shows them too) and the contract in its own field."""
    notes = [note for note in (prepared.contract, prepared.note) if note]
    if not notes or result.message.startswith(notes[0]):
        return result
    return attrs.evolve(result, message="; ".join([*notes, result.message]), contract=prepared.contract)


def _result_of(finished: Finished, account: str, number: int) -> LegResult | None:
    """The leg's result among those the alert's commit settled (`_finish_joined`)."""
    for result in finished.results:
        if result.account == account and result.leg_number == number:
            return result
    return None


def _with_order_id(result: LegResult, order_id: str) -> LegResult:
    return attrs.evolve(result, order_id=order_id)
