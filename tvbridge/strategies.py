"""Strategies (`[strategies.NAME]`, issue 19): which strategy an alert runs under, and the strategy's own rules.

An alert's secret (or the path token of its URL) picks its strategy: `pick()` compares the credential with every
strategy's, in constant time and without stopping at a match, so neither the answer's timing nor its body tells
which strategy a guess nearly matched; a credential no strategy has is the same 401 as any wrong secret. The
global `auth.secret` / `auth.path_token` is the strategy `default`, which has no table and no rules of its own.

The strategy an alert runs under is held in a context variable (`use_strategy()`, also bound into structlog's
context so every log line names it): set by `auth` for a webhook request, and by whoever runs a journaled alert
again (crash recovery, the closed-market queue, the daily square-off), from the journal's `strategy` column.
The executor, the risk guard, the journal and the order log read it with `current_strategy()`, so the alert's
path needs no new argument through every call.

The rules are pure functions returning a refusal (the trader's message) or None: `check_symbols`,
`check_sides`, `check_window`. An exit (a leg that only reduces the strategy's own position, or EXIT_ALL) is never
refused by sides or window: closing must never be harder than opening. Halting one strategy (`tvbridge halt
--strategy NAME`, `POST /admin/halt {"strategy": NAME}`) is the kill switch's file with the strategy's name
(`tvbridge/halt.py`): its alerts get 503 while the others trade.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
from contextvars import ContextVar
from datetime import UTC, datetime, time
from typing import TYPE_CHECKING, Final

import attrs
import structlog

from tvbridge.config import DEFAULT_STRATEGY
from tvbridge.errors import HaltedError
from tvbridge.halt import halt_path, read_halt
from tvbridge.models import Side
from tvbridge.positions import book, book_key, clamp, closing_leg, position_of_key, share
from tvbridge.sessions import EXCHANGE_TZ

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Mapping, Sequence
    from pathlib import Path
    from typing import Any

    from tvbridge.broker import Broker, Position
    from tvbridge.config import Config, StrategyConfig
    from tvbridge.followup import FollowUp
    from tvbridge.models import CancelLeg, OrderLeg
    from tvbridge.store import Store

log = structlog.get_logger()

DEFAULT: Final = DEFAULT_STRATEGY
_CURRENT: ContextVar[str] = ContextVar("tvbridge_strategy", default=DEFAULT)


def _wall_now() -> datetime:
    return datetime.now(UTC)


def current_strategy() -> str:
    """The strategy the running alert is under (`default` outside any)."""
    return _CURRENT.get()


@contextlib.contextmanager
def use_strategy(name: str) -> Iterator[None]:
    """Run the block under strategy `name`: `current_strategy()` and every log line's `strategy` field."""
    token = _CURRENT.set(name)
    with structlog.contextvars.bound_contextvars(strategy=name):
        try:
            yield
        finally:
            _CURRENT.reset(token)


def enter_strategy(name: str) -> None:
    """Set the strategy for the rest of the current task (a webhook request's task: `auth`)."""
    _CURRENT.set(name)
    structlog.contextvars.bind_contextvars(strategy=name)


def _digest(value: str) -> bytes:
    # surrogatepass: a lone surrogate in the JSON must be a wrong secret, not a 500 (as middlewares/auth.py)
    return hashlib.sha256(value.encode("utf-8", "surrogatepass")).digest()


def pick(table: Sequence[tuple[str, str]], given: object) -> str | None:
    """The name whose credential equals `given`, or None. Every entry is compared, in constant time, on digests
    of equal length (so not even a credential's length shows in the timing), whatever matched before."""
    if not isinstance(given, str):
        return None
    wanted = _digest(given)
    found: str | None = None
    for name, expected in table:
        if hmac.compare_digest(wanted, _digest(expected)) and expected and found is None:
            found = name
    return found


def secrets_table(config: Config, default_secret: str) -> tuple[tuple[str, str], ...]:
    """(strategy, secret) for `pick()`: the global secret as `default`, then each strategy's."""
    rows = [(DEFAULT, default_secret)] if default_secret else []
    rows += [(name, s.secret) for name, s in config.strategies.items() if s.secret]
    return tuple(rows)


def path_tokens_table(config: Config) -> tuple[tuple[str, str], ...]:
    """(strategy, path token) for `pick()`: `auth.path_token` as `default`, then each strategy's."""
    rows = [(DEFAULT, config.auth.path_token)] if config.auth.path_token else []
    rows += [(name, s.path_token) for name, s in config.strategies.items() if s.path_token]
    return tuple(rows)


def strategy_halt_path(data_dir: Path, name: str) -> Path:
    """The kill switch of one strategy: `HALTED.<name>` beside the global `HALTED` (same format, same rules)."""
    return halt_path(data_dir).with_name(f"{halt_path(data_dir).name}.{name}")


def check_halted(data_dir: Path, name: str) -> None:
    """`HaltedError` (503, nothing recorded) while strategy `name` is halted."""
    if name == DEFAULT:
        return  # the default strategy's kill switch is the global one
    halt = read_halt(strategy_halt_path(data_dir, name))
    if halt is not None:
        raise HaltedError(f"strategy {name} halted: {halt.reason}" if halt.reason else f"strategy {name} halted")


def halted_reason(data_dir: Path, name: str) -> str | None:
    """Why strategy `name` is halted, or None (for the risk guard, before every order)."""
    if name == DEFAULT:
        return None
    halt = read_halt(strategy_halt_path(data_dir, name))
    return None if halt is None else (halt.reason or "halted")


def _norm(symbol: str) -> str:
    return symbol.strip().upper()


def check_symbols(strategy: StrategyConfig, leg: OrderLeg) -> str | None:
    """Refusal for a leg whose symbol is not in the strategy's `symbols` (an allowlist; empty: any)."""
    if strategy.symbols and _norm(leg.symbol) not in {_norm(s) for s in strategy.symbols}:
        return f"strategy: symbol {leg.symbol} is not in this strategy's symbols"
    return None


def is_exit(leg: OrderLeg, own: int) -> bool:
    """Whether `leg` only reduces the strategy's own position `own` (signed units) without crossing zero:
    EXIT_ALL always; a plain order on the other side of the position, no larger than it."""
    if leg.manage_position is not None:
        return True
    if own == 0:
        return False
    reduces = (leg.side is Side.SELL) if own > 0 else (leg.side is Side.BUY)
    return reduces and leg.quantity <= abs(own)


def check_sides(strategy: StrategyConfig, leg: OrderLeg, own: int) -> str | None:
    """Refusal for an entry against `allowed_sides` (a reversal counts as an entry on its new side)."""
    if strategy.allowed_sides == "both" or is_exit(leg, own):
        return None
    if strategy.allowed_sides == "long_only" and leg.side is Side.SELL:
        return "strategy: allowed_sides is long_only: a SELL that opens or adds to a short is refused"
    if strategy.allowed_sides == "short_only" and leg.side is Side.BUY:
        return "strategy: allowed_sides is short_only: a BUY that opens or adds to a long is refused"
    return None


def check_window(strategy: StrategyConfig, leg: OrderLeg, own: int, now: datetime) -> str | None:
    """Refusal for an entry outside `entry_window` (exchange time, start inclusive, end exclusive)."""
    if not strategy.entry_window or is_exit(leg, own):
        return None
    start, end = (time.fromisoformat(part) for part in strategy.entry_window.split("-"))
    local = now.astimezone(EXCHANGE_TZ).time()
    if start <= local < end:
        return None
    return (
        f"strategy: outside its entry_window {strategy.entry_window} (now {local.strftime('%H:%M')} exchange"
        " time): entries are refused, exits are not"
    )


class StrategyBook:
    """Each strategy's own position per account and contract, from the fills of tvbridge's own orders in the
    journal (`Journal.fills`, summed by `positions.book`): nothing is kept in memory, so a restart, the queue
    and crash recovery all see the same book."""

    def __init__(
        self,
        journal: Store,
        strategies: Mapping[str, StrategyConfig],
        wall: Callable[[], datetime] = _wall_now,
        followup: FollowUp | None = None,
    ) -> None:
        self._journal = journal
        self._strategies = strategies
        self._followup = followup
        self._wall = wall
        """The journal's own clock (its stamps are wall time): what "today" is for intraday fills."""

    def _since(self) -> str:
        """The start of today's exchange day as the journal stamps it: intraday fills before it are gone."""
        local = self._wall().astimezone(EXCHANGE_TZ)
        return local.replace(hour=0, minute=0, second=0, microsecond=0).astimezone(UTC).isoformat()

    async def _book(self, account: str, key: str | None = None, *, settle: bool = True) -> dict[tuple[str, str], int]:
        if settle and self._followup is not None:
            # a fill the broker made since order follow-up's last look would be missing from the share
            unsettled = await self._journal.unsettled(account, key)
            if unsettled:
                await self._followup.settle(account, unsettled)
        return book(await self._journal.fills(account, key), intraday_since=self._since())

    async def own(self, strategy: str, account: str, leg: OrderLeg, broker: Broker | None = None) -> int:
        """The strategy's net position (signed units) in `leg`'s contract and product on `account`, cut to what
        the broker holds there (`positions.clamp`) when `broker` is given and the book is not flat."""
        key = book_key(leg)
        own = (await self._book(account, key)).get((strategy, key), 0)
        if own == 0 or broker is None or not broker.capabilities.positions:
            return own
        held = sum(p.net_quantity for p in await broker.positions(leg) if p.product is leg.product)
        return clamp(own, held)

    async def share(self, account: str, leg: OrderLeg, found: list[Position]) -> list[Position]:
        """The running strategy's share of the broker's positions `found` in `leg`'s contract: a named
        strategy's own fills; `default`'s, what the broker holds beyond the named strategies'; either cut to the
        broker's net (`positions.clamp`: never more than it holds, never the other side). A broker net that
        is not the sum of every strategy's fills is logged (`strategy.position_mismatch`)."""
        strategy = current_strategy()
        key = book_key(leg)
        net = await self._book(account, key)
        held = sum(p.net_quantity for p in found if p.product is leg.product)
        ours = {s: v for (s, _key), v in net.items()}
        if sum(ours.values()) != held:
            log.warning(
                "strategy.position_mismatch",
                account=account,
                contract=key,
                broker_net=held,
                strategies_sum=sum(ours.values()),
                by_strategy=ours,
            )
        named = sum(v for s, v in ours.items() if s != DEFAULT)
        mine = held - named if strategy == DEFAULT else ours.get(strategy, 0)
        return share(leg, found, clamp(mine, held))

    async def own_brackets(self, account: str, leg: OrderLeg) -> list[str]:
        """Order ids of the running strategy's brackets still open in `leg`'s contract on `account`: EXIT_ALL
        cancels these, not every bracket in the contract (another strategy's stop keeps protecting its share)."""
        return await self._journal.open_brackets(current_strategy(), account, book_key(leg))

    async def own_orders(self, account: str, leg: CancelLeg) -> list[str]:
        """Order ids of the running strategy's open orders that a `cancel_order` leg by symbol names: with
        strategies, a strategy cancels its own orders only."""
        return await self._journal.open_orders_of(
            current_strategy(),
            account,
            symbol=(leg.symbol or "").strip(),
            exchange=leg.exchange.value if leg.exchange else None,
            side=leg.side.value if leg.side else None,
        )

    async def rows(self, account: str, positions: Sequence[Position]) -> list[dict[str, Any]]:
        """For `/status`: every strategy's position on `account`, and each contract where the broker's net
        (`positions`, all of the account's) is not the strategies' sum (`mismatch`)."""
        net = await self._book(account, settle=False)  # the status page asks no broker
        held: dict[str, int] = {}
        for p in positions:
            key = book_key(closing_leg(p))
            held[key] = held.get(key, 0) + p.net_quantity
        out: list[dict[str, Any]] = [
            {"account": account, "strategy": s, "contract": key, "net_quantity": v}
            for (s, key), v in sorted(net.items())
        ]
        for key in sorted({k for _s, k in net} | set(held)):
            total = sum(v for (_s, k), v in net.items() if k == key)
            if total != held.get(key, 0):
                out.append(
                    {
                        "account": account,
                        "strategy": None,
                        "contract": key,
                        "net_quantity": held.get(key, 0),
                        "mismatch": f"the broker holds {held.get(key, 0)}, the strategies' fills add up to {total}",
                    }
                )
        return out

    async def open_positions(self, strategy: str, account: str, broker: Broker) -> list[Position]:
        """The strategy's open positions on `account`, as flatten closes them (square-off): each cut to what the
        broker holds in that contract (`positions.clamp`), so a position closed elsewhere is not closed again."""
        net = await self._book(account)
        mine = [position_of_key(key, v) for (s, key), v in sorted(net.items()) if s == strategy]
        if not mine:
            return []
        held: dict[str, int] = {}
        for p in await broker.positions():
            key = book_key(closing_leg(p))
            held[key] = held.get(key, 0) + p.net_quantity
        out = []
        for p in mine:
            key = book_key(closing_leg(p))
            cut = clamp(p.net_quantity, held.get(key, 0))
            if cut != p.net_quantity:
                log.warning(
                    "strategy.position_mismatch",
                    account=account,
                    contract=key,
                    broker_net=held.get(key, 0),
                    strategy_net=p.net_quantity,
                    closes=cut,
                )
            if cut:
                out.append(attrs.evolve(p, net_quantity=cut))
        return out
