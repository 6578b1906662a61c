"""The host's guard around every broker plugin: a plugin can be slow, hang or block, but not stall tvbridge.

Each account's plugin is seen through a `GuardedBroker` (built in `registry.brokers_ctx`, so every caller gets
it: the executor, `/health`, flatten, the status page):

* Every call (`place`, `cancel`, `lookup`, `health`, `aclose`, and the plugin's own coroutine methods such as
  `positions()`) runs under the account's `broker_timeout_s` (default 2.5 s; `start()` under
  `START_TIMEOUT_S`), counted from the call's first await: no timer can cut a synchronous step, and a first
  step that blocked past the bound (a synchronous client, reported below) still gets the bound for what it
  awaits next, so its answer, not an unknown outcome, reaches the trader. A `place` or `cancel` that has not
  answered by then is an unknown outcome (`BrokerUnknownOutcomeError`): the executor asks `lookup()` before
  reporting anything, so an order the plugin places late is found, or the leg is `unknown` and says to check
  the broker; never a silent late order and never a resend. With a shared journal (`journal.url`: several
  instances, each send within `journal.leader_lease_s`) the bound counts from the call itself, first step
  included: past the lease another instance may take the alert over, so this one must not send any more. A
  `lookup` that does not answer is `BrokerUnavailableError` (the leg stays unknown); a `health` that does not
  answer is unhealthy.
* The synchronous part of every call is timed, step by step (each stretch the plugin's coroutine runs before
  it awaits something). A step longer than `BLOCKED_WARN_S` blocked the event loop: every other alert and
  `/health` waited on it, and no timeout can fire meanwhile. It is logged as `broker.blocked_event_loop`
  naming the account, the plugin and the operation, so the operator knows whom to blame.
* A `LoopWatchdog` thread notices a loop that has not turned for `LOOP_STALL_S` while it is still stuck (a
  step that never ends is never timed) and logs `loop.blocked`, naming the plugin call running then.

What it cannot name: a plugin that blocks the loop from a task or callback of its own (not inside one of our
calls); the watchdog still reports the stall, with `in_call` empty.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import threading
import time
from typing import TYPE_CHECKING, Any, Final, TypeVar

import structlog

from tvbridge.broker import BrokerUnavailableError, BrokerUnknownOutcomeError, Health

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Generator

    from tvbridge.broker import Broker, CancelRequest, OrderRequest, OrderResult

log = structlog.get_logger()

T = TypeVar("T")

BLOCKED_WARN_S: Final = 0.2
"""A plugin step that kept the event loop this long is reported: TradingView's whole budget is 3 s."""
LOOP_STALL_S: Final = 1.0
"""`LoopWatchdog` reports an event loop that has not turned for this long (a third of TradingView's budget)."""
START_TIMEOUT_S: Final = 60.0
"""`start()` may load reference data (an instrument master): longer than a call, but never forever."""


class PluginTimeoutError(Exception):
    """A plugin call did not answer within its bound (internal: turned into the broker error that fits)."""


class LoopWatchdog(threading.Thread):
    """Notices, from its own thread, an event loop that stopped turning, and names the plugin call that is
    running then. The step timing below reports a block only once the step ends; a plugin that blocks for
    good (a synchronous call without a timeout) would never be reported without this.

    The loop stamps `beat` every `every_s`; this thread looks as often, and logs `loop.blocked` once per stall
    longer than `after_s`, with `in_call` naming what `GuardedBroker` had running (or none: not a plugin call)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, *, every_s: float = 0.1, after_s: float = LOOP_STALL_S) -> None:
        super().__init__(name="tvbridge-loop-watchdog", daemon=True)
        self._loop = loop
        self._every_s = every_s
        self._after_s = after_s
        self._stopping = threading.Event()
        self.beat = time.monotonic()
        self.in_call = ""
        """The plugin call whose synchronous step is running on the loop now (empty: none)."""
        self.stalls = 0

    def _stamp(self) -> None:
        self.beat = time.monotonic()
        if not self._stopping.is_set():
            self._loop.call_later(self._every_s, self._stamp)

    def start(self) -> None:
        self._loop.call_soon(self._stamp)
        super().start()

    def run(self) -> None:
        reported = 0.0
        while not self._stopping.wait(self._every_s):
            beat = self.beat
            stalled = time.monotonic() - beat
            if stalled > self._after_s and beat != reported:
                reported = beat
                self.stalls += 1
                log.warning(
                    "loop.blocked",
                    blocked_s=round(stalled, 2),
                    in_call=self.in_call or None,
                    detail=f"the event loop has not turned for {stalled:.1f} s"
                    + (f": {self.in_call} is running without yielding" if self.in_call else ""),
                )

    def stop(self) -> None:
        self._stopping.set()
        if self.is_alive():
            self.join()


class _Stepped:
    """Awaits a coroutine while timing each step it runs synchronously; `on_step(seconds)` after each, and
    `watchdog.in_call` names the call while a step runs.

    `first()` runs the first step before the awaiting starts: a call that finishes without awaiting anything (a
    plugin that lives in the process, such as paper) is done there, and `GuardedBroker._call` arms no timeout
    for it (none could fire during a synchronous step anyway)."""

    def __init__(
        self, coro: Any, on_step: Callable[[float], None], watchdog: LoopWatchdog | None = None, label: str = ""
    ) -> None:
        self._coro = coro
        self._on_step = on_step
        self._watchdog = watchdog
        self._label = label
        self._yielded: Any = _NOT_STARTED

    def _step(self, value: Any, error: BaseException | None) -> tuple[bool, Any]:
        """One synchronous stretch of the coroutine, timed: (True, its result) once it returned, else (False,
        what it yielded to the event loop)."""
        watchdog = self._watchdog
        if watchdog is not None:
            watchdog.in_call = self._label
        started = time.perf_counter()
        try:
            yielded = self._coro.throw(error) if error is not None else self._coro.send(value)
        except StopIteration as stop:
            return True, stop.value
        finally:
            self._on_step(time.perf_counter() - started)
            if watchdog is not None:
                watchdog.in_call = ""
        return False, yielded

    def first(self) -> tuple[bool, Any]:
        """Runs the first step now: (True, the result) when the call is done already."""
        done, value = self._step(None, None)
        if not done:
            self._yielded = value
        return done, value

    def __await__(self) -> Generator[Any, Any, Any]:
        yielded, self._yielded = self._yielded, _NOT_STARTED
        if yielded is _NOT_STARTED:
            done, yielded = self._step(None, None)
            if done:
                return yielded
        while True:
            try:
                value, error = (yield yielded), None
            except BaseException as e:  # noqa: BLE001 - handed to the coroutine, as `await` would
                value, error = None, e
            done, yielded = self._step(value, error)
            if done:
                return yielded


_NOT_STARTED: Final = object()
"""`_Stepped`: no first step has run yet (a coroutine may yield None itself, so None cannot say it)."""


class GuardedBroker:
    """An account's plugin behind the host's timeouts and loop-blocking detector (see the module docstring).
    Every other attribute is the plugin's own (`capabilities`, `positions()`, `reconfigure()`...)."""

    def __init__(
        self,
        broker: Broker,
        *,
        account: str,
        plugin: str,
        timeout_s: float,
        watchdog: LoopWatchdog | None = None,
        from_the_call: bool = False,
    ) -> None:
        self._broker = broker
        self._account = account
        self._plugin = plugin
        self._timeout_s = timeout_s
        self._watchdog = watchdog
        self._from_the_call = from_the_call
        """The bound counts from the call itself, not its first await: with a shared journal (PostgreSQL, several
        instances) a send must be over before `journal.leader_lease_s` runs out (`config._check_lease`), or
        another instance takes the alert over and may send it while this call still can."""

    def __getattr__(self, name: str) -> Any:
        """The plugin's own attribute; a method of its own that returns a coroutine (`positions()`,
        `reconfigure()`...) runs under the same guard, a timeout there being `BrokerUnavailableError`."""
        value = getattr(self._broker, name)
        if not callable(value) or isinstance(value, type):
            return value

        @functools.wraps(value)
        def guarded(*args: Any, **kwargs: Any) -> Any:
            result = value(*args, **kwargs)
            return self._other(name, result) if inspect.iscoroutine(result) else result

        return guarded

    async def _other(self, operation: str, call: Awaitable[T]) -> T:
        try:
            return await self._call(operation, call, self._timeout_s)
        except PluginTimeoutError as e:
            log.warning("broker.timed_out", account=self._account, broker=self._plugin, operation=operation)
            raise BrokerUnavailableError(str(e)) from None

    @property
    def plugin(self) -> Broker:
        """The plugin instance itself (for tests and for features that need its own type)."""
        return self._broker

    @property
    def capabilities(self) -> Any:
        return self._broker.capabilities

    def _who(self) -> str:
        return f"the {self._plugin!r} broker plugin (account {self._account!r})"

    async def _call(self, operation: str, call: Awaitable[T], timeout_s: float) -> T:
        blocked = 0.0

        def on_step(seconds: float) -> None:
            nonlocal blocked
            blocked = max(blocked, seconds)

        label = f"the {self._plugin!r} broker plugin's {operation}() (account {self._account!r})"
        stepped: Awaitable[T] = _Stepped(call, on_step, self._watchdog, label) if inspect.iscoroutine(call) else call
        deadline: asyncio.Timeout | None = None
        called = asyncio.get_running_loop().time() if self._from_the_call else 0.0
        try:
            if isinstance(stepped, _Stepped):
                done, value = stepped.first()  # done within its first step: no timer to arm (none could fire)
                if done:
                    result: T = value
                    return result
            # the bound counts from the plugin's first await: a first step that blocked the loop past it (reported
            # below) would otherwise be cut off at that await, the moment it may be about to confirm an order it
            # just placed: an unknown outcome for the trader to check, where a moment more gives the answer
            deadline = asyncio.timeout_at(called + timeout_s) if self._from_the_call else asyncio.timeout(timeout_s)
            async with deadline:
                return await stepped
        except TimeoutError:
            if deadline is None or not deadline.expired():  # the plugin's own TimeoutError: its to report
                raise
            raise PluginTimeoutError(
                f"{self._who()} did not answer {operation}() within {timeout_s:g} s (broker_timeout_s)"
            ) from None
        finally:
            if blocked >= BLOCKED_WARN_S and operation != "start":  # nothing is served before start ends
                log.warning(
                    "broker.blocked_event_loop",
                    account=self._account,
                    broker=self._plugin,
                    operation=operation,
                    blocked_s=round(blocked, 3),
                    detail=f"{self._who()} ran {blocked:.2f} s without yielding in {operation}(): every other"
                    " request waited; a synchronous client must run in asyncio.to_thread()",
                )

    async def start(self) -> None:
        await self._call("start", self._broker.start(), START_TIMEOUT_S)

    async def place(self, request: OrderRequest) -> OrderResult:
        try:
            return await self._call("place", self._broker.place(request), self._timeout_s)
        except PluginTimeoutError as e:
            log.warning("broker.timed_out", account=self._account, broker=self._plugin, operation="place")
            raise BrokerUnknownOutcomeError(f"{e}: the order may or may not exist") from None

    async def cancel(self, request: CancelRequest) -> list[OrderResult]:
        try:
            return await self._call("cancel", self._broker.cancel(request), self._timeout_s)
        except PluginTimeoutError as e:
            log.warning("broker.timed_out", account=self._account, broker=self._plugin, operation="cancel")
            raise BrokerUnknownOutcomeError(f"{e}: orders may or may not be cancelled") from None

    async def lookup(self, client_order_id: str) -> OrderResult | None:
        try:
            return await self._call("lookup", self._broker.lookup(client_order_id), self._timeout_s)
        except PluginTimeoutError as e:
            log.warning("broker.timed_out", account=self._account, broker=self._plugin, operation="lookup")
            raise BrokerUnavailableError(str(e)) from None

    async def health(self) -> Health:
        try:
            return await self._call("health", self._broker.health(), self._timeout_s)
        except PluginTimeoutError as e:
            return Health(ok=False, detail=str(e))

    async def aclose(self) -> None:
        try:
            await self._call("aclose", self._broker.aclose(), self._timeout_s)
        except PluginTimeoutError as e:
            log.warning("broker.close_timed_out", account=self._account, broker=self._plugin, detail=str(e))
