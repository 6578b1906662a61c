"""`DhanBroker`: the `tvbridge.broker.Broker` plugin for Dhan, on the official dhanhq 2.3 client.

It owns the order lifecycle and the safety rules; the pieces live next to it: `settings` (the account table),
`instruments` (security ids), `mapping` (leg -> `place_order` arguments), `client` (dhanhq off the loop with a
timeout), `errors` (Dhan's error codes), `orders` (Dhan's order JSON -> `OrderResult`), `portfolio` (positions
and the order book -> `Position` / `OpenOrder`), `throttle`, `ledger`.

The rules, in the order `place()` applies them:

1. Everything that can be checked locally is checked before anything is sent (capabilities, correlation id,
   contract, every mapped field); a refusal names the alert field.
2. Dry-run (`live = false`) stops here: no HTTP at all, the result carries what would have been sent.
3. After a DH-901 the account tries once to get a new token (`token.TokenKeeper.recover`: one renewed meanwhile,
   or one generated from PIN + TOTP) and resends; if that fails every order fails fast with `BrokerAuthError`
   until `reconfigure()` (SIGHUP) or the next minute's maintenance brings a token.
4. If the ledger shows this client order id was tried before (a retry, or a restart after a crash), the order
   is looked up by correlation id first and returned if Dhan has it: one order, never two.
5. The throttle waits for a slot, the intent is fsynced to the ledger, then the order is sent with
   `tag = client_order_id` (Dhan's correlationId).
6. A definite Dhan error raises the typed error. Anything ambiguous (timeout, dropped connection, empty or HTML
   body, DH-908+) is resolved by `get_order_by_correlationID` before returning: found -> that order; not found
   -> `BrokerUnknownOutcomeError` (the order may still appear; nothing is re-sent here).
"""

from __future__ import annotations

import asyncio
import json
import time
from datetime import datetime, timedelta, timezone
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING, ClassVar, Final, Self

import attrs
import structlog

from tvbridge.brackets import has_open_part, is_bracket, parts_of
from tvbridge.broker import (
    API_VERSION,
    BrokerAuthError,
    BrokerError,
    BrokerRejectedError,
    BrokerUnavailableError,
    BrokerUnknownOutcomeError,
    CancelRequest,
    Capabilities,
    ClusterError,
    Health,
    InstrumentInfo,
    Listings,
    OrderResult,
    OrderState,
    ReadinessCheck,
    check_supported,
)
from tvbridge_brokers.dhan.client import DhanClient
from tvbridge_brokers.dhan.errors import NO_DATA, REAUTH_HELP, TOKEN_EXPIRED, Answer
from tvbridge_brokers.dhan.instruments import InstrumentMaster, MasterFormatError, load_master, sample_master_path
from tvbridge_brokers.dhan.ledger import Entry, OrderLedger, ledger_path
from tvbridge_brokers.dhan.mapping import (
    build_place_order,
    check_client_order_id,
    listings_of,
    resolve_contract,
    segment_for,
)
from tvbridge_brokers.dhan.master_refresh import SHARED_NAME as MASTER_SHARED
from tvbridge_brokers.dhan.master_refresh import MasterRefresher
from tvbridge_brokers.dhan.orders import OPEN_STATES, to_result
from tvbridge_brokers.dhan.portfolio import open_order_of, position_of
from tvbridge_brokers.dhan.preopen import clock_check, health_check, master_check, token_check
from tvbridge_brokers.dhan.refresh import RefreshError, download_master
from tvbridge_brokers.dhan.settings import DhanSettings, default_instruments_path, parse_settings
from tvbridge_brokers.dhan.superorders import open_legs, placed_result, super_order_kwargs, super_result
from tvbridge_brokers.dhan.throttle import TokenBucket
from tvbridge_brokers.dhan.token import TokenKeeper

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping
    from pathlib import Path

    from tvbridge.broker import BrokerContext, OpenOrder, OrderRequest, Position
    from tvbridge.models import OrderLeg
    from tvbridge_brokers.dhan.mapping import PlaceOrder

log = structlog.get_logger()

IST: Final = timezone(timedelta(hours=5, minutes=30), "IST")
MAINTAIN_EVERY_S: Final = 60.0
"""How often the token and the instrument master are looked at while one server runs alone; several on one
PostgreSQL store look every `cluster.poll_s` (half the leader's lease), so a follower uses the leader's renewed
token, and a new leader takes the renewal over, within seconds."""
KEY_HELP: Final = (
    "This instance neither uses nor renews the token the others share until every instance has the same"
    " journal.shared_secret_key (docs/postgresql.md: rotating the key)"
)
NO_SHARED_KEY: Final = (
    "journal.shared_secret_key is not set: with several instances on PostgreSQL only the leader renews the Dhan"
    " token and shares it, encrypted with that key (every instance needs the same one: `tvbridge db new-key`);"
    " without it each instance would renew its own and break the others' token (docs/postgresql.md)"
)
HEALTH_CACHE_S: Final = 10.0
"""/health may be polled every few seconds; one fund-limit call per 10 s is plenty to notice an expired token."""


class DhanBroker:
    """Orders on one Dhan account. Build with `from_settings`; see the module docstring for the rules."""

    api_version: ClassVar[int] = API_VERSION

    def __init__(
        self, settings: DhanSettings, context: BrokerContext, *, clock: Callable[[], datetime] | None = None
    ) -> None:
        self._settings = settings
        self._context = context
        self._clock = clock or (lambda: context.clock().astimezone(IST))
        self._client: DhanClient | None = None
        self._retired: list[DhanClient] = []
        self._master: InstrumentMaster | None = None
        self._master_stamp: tuple[str, float] | None = None
        self._throttle = TokenBucket(settings.max_orders_per_s)
        self._ledger = OrderLedger(ledger_path(context.data_dir, context.account))
        self._auth_failed = False
        self._health: tuple[float, Health] | None = None
        self._health_lock = asyncio.Lock()
        self._id_locks: dict[str, asyncio.Lock] = {}
        self._dry_runs: dict[str, OrderResult] = {}
        self._log = log.bind(broker="dhan", account=context.account)
        self._tokens: TokenKeeper | None = None
        self._maintenance: asyncio.Task[None] | None = None
        self._refresher = MasterRefresher(
            account=context.account,
            url=settings.instruments_url,
            at=settings.instruments_refresh_at,
            notify=context.notify,
        )
        self._refresh_lock = asyncio.Lock()
        self._master_share_error = ""

    @classmethod
    def from_settings(
        cls,
        settings: Mapping[str, object],
        context: BrokerContext,
        *,
        clock: Callable[[], datetime] | None = None,
    ) -> Self:
        """Validate the account table (`ValueError` naming the key). `clock` (aware, IST) is for tests; the
        server's own is `context.clock`."""
        parsed = parse_settings(settings)
        _refuse_sample_when_live(parsed)
        return cls(parsed, context, clock=clock)

    def __repr__(self) -> str:
        mode = "live" if self._settings.live else "dry-run"
        return f"<DhanBroker account={self._context.account!r} {mode} client_id={self._settings.client_id!r}>"

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities(
            live=self._settings.live,
            positions=True,
            orders=True,
            reconfigure=True,
            instrument_info=True,
            readiness=True,
            token_expiry=self._settings.live,
            brackets=True,
            listings=True,
            funds=True,
        )

    @property
    def settings(self) -> DhanSettings:
        return self._settings

    # lifecycle

    async def start(self) -> None:
        """Load the instrument master and the ledger; in live mode check the token once (an expired one does
        not stop the start: `/health` turns 503 and a SIGHUP with a new token fixes it). A live account whose
        master file does not exist yet downloads it first (`instruments_url`)."""
        if self._settings.live and self._context.cluster.shared and not self._context.cluster.can_share_secrets:
            raise BrokerError(NO_SHARED_KEY)
        if self._settings.live:
            await self._download_missing_master()
        self._master = await self._load_master(self._settings)
        await asyncio.to_thread(self._ledger.load)
        if not self._settings.live and _can_read(self._settings):  # dry-run: reading positions and orders sends nothing
            self._client = DhanClient(self._settings)
        if self._settings.live:
            self._tokens = TokenKeeper(
                self._settings,
                account=self._context.account,
                data_dir=self._context.data_dir,
                clock=self._clock,
                notify=self._context.notify,
                cluster=self._context.cluster,
            )
            await asyncio.to_thread(self._tokens.load)
            await self._tokens.maintain()
            if self._tokens.key_error:
                raise BrokerError(f"account {self._context.account}: {self._tokens.key_error}. {KEY_HELP}")
            self._client = DhanClient(self._with_token(self._settings))
            health = await self.health()
            self._log.info("dhan.started", live=True, token_ok=health.ok, detail=health.detail)
            self._maintenance = asyncio.create_task(self._maintain_every_minute(), name=f"dhan-{self._context.account}")
        else:
            self._log.info("dhan.started", live=False, instruments=len(self._master))

    async def aclose(self) -> None:
        if self._maintenance is not None:
            self._maintenance.cancel()
            await asyncio.gather(self._maintenance, return_exceptions=True)
            self._maintenance = None
        clients = [*self._retired, *([self._client] if self._client else [])]
        self._client = None
        self._retired = []
        await asyncio.gather(*(c.aclose() for c in clients))

    async def reconfigure(self, settings: Mapping[str, object]) -> None:
        """Pick up an edited account table (SIGHUP): a new token, timeout, rate, URL or instrument master.

        Always clears the DH-901 halt (a SIGHUP means "try again"); the next `health()` checks the token.
        `live` cannot change without a restart (the core decides about secrets and routing at start).
        Raises `ValueError` for a bad table, `BrokerError` if a new master cannot be loaded; the running
        configuration is kept whole when it raises."""
        new = parse_settings(settings)
        _refuse_sample_when_live(new)
        old = self._settings
        if new.live != old.live:
            raise ValueError("live: switching between dry-run and live needs a restart")
        master = self._master
        if self._master is None or self._master_changed(new):
            master = await self._load_master(new)
        changed = sorted(f.name for f in attrs.fields(DhanSettings) if getattr(new, f.name) != getattr(old, f.name))
        self._settings = new
        self._master = master
        self._refresher.url, self._refresher.at = new.instruments_url, new.instruments_refresh_at
        if new.max_orders_per_s != old.max_orders_per_s:
            self._throttle = TokenBucket(new.max_orders_per_s)
        if self._tokens is not None:
            changed_token = self._tokens.reconfigure(new)
            await asyncio.to_thread(self._tokens.load, prefer_current=changed_token, reload=True)
        if self._client is not None:
            self._retired.append(self._client)
        if new.live:
            self._client = DhanClient(self._with_token(new))
        else:
            self._client = DhanClient(new) if _can_read(new) else None
        self._auth_failed = False
        self._health = None
        self._log.info("dhan.reconfigured", changed=changed)  # names only: never the values

    # orders

    async def place(self, request: OrderRequest) -> OrderResult:
        cid = request.client_order_id
        check_client_order_id(cid)
        check_supported(self.capabilities, request.leg)
        contract = resolve_contract(request.leg, self._require_master(), today=self._clock().astimezone(IST).date())
        order = build_place_order(request.leg, contract, client_order_id=cid)
        bracket = super_order_kwargs(request.leg, order) if is_bracket(request.leg) else None
        if not self._settings.live:
            return self._dry_run(request, order, bracket)
        if self._auth_failed and self._client is not None:  # a DH-901 seen elsewhere (/health, a lookup)
            await self._recover_token(self._client)
        client = self._live_client()
        async with self._id_locks.setdefault(cid, asyncio.Lock()):
            if self._ledger.get(cid) is not None:
                earlier = await self._lookup_before_retry(client, cid)
                if earlier is not None:
                    return earlier
            await self._throttle.acquire()
            entry = Entry(
                client_order_id=cid,
                symbol=request.leg.symbol.strip().upper(),
                trading_symbol=order.trading_symbol,
                exchange=request.leg.exchange.value,
                side=request.leg.side.value,
                security_id=order.security_id,
                super_order=bracket is not None,
            )
            try:
                await asyncio.to_thread(self._ledger.record, entry)
            except OSError as e:
                raise BrokerUnavailableError(
                    f"cannot record the order before sending it ({e}); nothing was sent"
                ) from e
            # a bracket is one Super Order; anything else a plain order (one path for both, DH-901 included)
            method, kwargs = ("place_super_order", bracket) if bracket is not None else ("place_order", order.kwargs())
            if bracket is not None:
                self._log.info("dhan.super_order.sending", client_order_id=cid, alert_id=request.alert_id, order=kwargs)
            else:
                self._log.info("dhan.order.sending", client_order_id=cid, alert_id=request.alert_id, order=kwargs)
            answer = await client.call(method, **kwargs)
            if answer.error_code == TOKEN_EXPIRED and await self._recover_token(client):
                client = self._live_client()  # DH-901 is a definite refusal: nothing was placed, send it once more
                self._log.info("dhan.order.resending", client_order_id=cid, reason="new token after DH-901")
                await self._throttle.acquire()
                answer = await client.call(method, **kwargs)
            result = await self._placed(client, cid, answer, bracket)
            if result.order_id:
                await self._remember(attrs.evolve(entry, order_id=result.order_id))
            self._log.info("dhan.order.placed", client_order_id=cid, order_id=result.order_id, state=result.state.value)
            return result

    async def instrument_info(self, leg: OrderLeg) -> InstrumentInfo:
        """The contract `place()` would resolve for `leg` and its lot size (`SEM_LOT_UNITS`), from the master
        alone: no HTTP, dry-run or live. tvbridge converts `quantity_unit = "lots"` with it."""
        contract = resolve_contract(leg, self._require_master(), today=self._clock().astimezone(IST).date())
        return InstrumentInfo(
            trading_symbol=contract.trading_symbol, lot_size=contract.lot_size, security_id=contract.security_id
        )

    async def listings(self, leg: OrderLeg) -> Listings:
        """The expiries and strikes the instrument master lists for the leg's underlying: no HTTP."""
        return listings_of(leg, self._require_master())

    async def funds(self) -> Decimal:
        """Dhan's available balance (`get_fund_limits`, the call the health check makes), for `quantity_type:
        percent_of_funds`. Read in dry-run too when the account has its credentials: reading sends nothing."""
        if self._auth_failed:
            raise BrokerAuthError(REAUTH_HELP)
        if self._client is None:
            raise BrokerUnavailableError(
                "cannot read Dhan's fund limits: this account has no client_id and access_token"
            )
        answer = await self._client.call("get_fund_limits")
        if answer.ok and isinstance(answer.data, dict):
            # dhanhq 2.3 passes Dhan's field through as Dhan spells it: `availabelBalance`
            raw = answer.data.get("availabelBalance", answer.data.get("availableBalance"))
            try:
                return Decimal(str(raw))
            except (InvalidOperation, ValueError):
                pass
            raise BrokerUnavailableError(f"Dhan's fund limits carry no available balance (got {raw!r})")
        if answer.error is not None:
            self._check_auth(answer)
            raise answer.error
        raise BrokerUnavailableError(f"cannot read Dhan's fund limits: {answer.ambiguous}")

    async def lookup(self, client_order_id: str) -> OrderResult | None:
        """Dhan's order with this correlation id, or None if Dhan says it has none. Dry-run: the dry-run
        result of this process, if any. Raises `BrokerUnavailableError` when Dhan cannot be asked."""
        if not self._settings.live:
            return self._dry_runs.get(client_order_id)
        return await self._fetch_by_correlation(self._live_client(), client_order_id)

    async def cancel(self, request: CancelRequest) -> list[OrderResult]:
        leg = request.leg
        if leg.order_id is None and not (leg.symbol and leg.symbol.strip()):
            raise BrokerRejectedError("cancel_order needs an order_id or a symbol")
        if not self._settings.live:
            target = f"Dhan order {leg.order_id}" if leg.order_id else f"the open orders placed for {leg.symbol}"
            return [
                OrderResult(order_id=leg.order_id, state=OrderState.DRY_RUN, message=f"dry-run: would cancel {target}")
            ]
        client = self._live_client()
        if leg.order_id is not None:
            bracket = self._super_entry(leg.order_id)
            if bracket is not None:
                return await self._cancel_super(client, bracket)
            return [await self._cancel_one(client, leg.order_id)]
        symbol = (leg.symbol or "").strip().upper()
        results = []
        for entry in self._ledger.entries():
            if symbol not in {entry.symbol, entry.trading_symbol}:
                continue
            if (leg.exchange and leg.exchange.value != entry.exchange) or (leg.side and leg.side.value != entry.side):
                continue
            if entry.super_order:
                results.extend(await self._cancel_super(client, entry))
                continue
            current = await self._current(client, entry)
            if current is None or current.state not in OPEN_STATES or current.order_id is None:
                continue
            results.append(await self._cancel_one(client, current.order_id))
        return results

    async def cancel_brackets(self, leg: OrderLeg) -> list[OrderResult]:
        """Cancel what is still open of every super order this account placed in the contract `leg` names
        (EXIT_ALL, before it reads the position). Dry-run: nothing was placed, nothing to cancel."""
        if not self._settings.live:
            return []
        contract = resolve_contract(leg, self._require_master(), today=self._clock().astimezone(IST).date())
        client = self._live_client()
        mine = [
            e
            for e in self._ledger.entries()
            if e.super_order and e.security_id == contract.security_id and e.exchange == leg.exchange.value
        ]
        if not mine:
            return []
        rows = await self._super_rows(client)  # once for all of them: EXIT_ALL runs inside TradingView's 3 s
        results: list[OrderResult] = []
        for entry in mine:
            results.extend(await self._cancel_super(client, entry, rows))
        return results

    async def positions(self, leg: OrderLeg | None = None) -> list[Position]:
        """Dhan's open positions (`get_positions`), net per security id and product; with `leg`, those of the
        security id the leg resolves to (as `place()` resolves it). Read in dry-run too when the account has its
        credentials: reading sends nothing. Raises `BrokerRejectedError` for a leg that names no contract,
        `BrokerUnavailableError` / `BrokerAuthError` when Dhan cannot be read."""
        master = self._require_master()
        wanted: tuple[str, str] | None = None
        if leg is not None:
            contract = resolve_contract(leg, master, today=self._clock().astimezone(IST).date())
            wanted = (segment_for(leg.exchange, leg.instrument).dhan, contract.security_id)
        found: list[Position] = []
        for row in await self._read_list("get_positions", "positions"):
            if wanted is not None and (str(row.get("exchangeSegment")), str(row.get("securityId"))) != wanted:
                continue
            position = position_of(row, master)
            if isinstance(position, str):
                self._log.warning("dhan.position.not_tradable", detail=position)
            elif position is not None:
                found.append(position)
        return found

    async def open_orders(self) -> list[OpenOrder]:
        """Today's orders at Dhan (`get_order_list`) that can still be cancelled, placed by tvbridge or not."""
        master = self._require_master()
        found: list[OpenOrder] = []
        for row in await self._read_list("get_order_list", "orders"):
            order = open_order_of(row, master)
            if isinstance(order, str):
                self._log.warning("dhan.order.not_tradable", detail=order)
            elif order is not None:
                found.append(order)
        return found

    async def health(self) -> Health:
        """Dry-run: always ok. Live: a fund-limits call (cached for 10 s) proves the token; after a DH-901 it
        stays failed, without calling Dhan, until `reconfigure()`."""
        if not self._settings.live:
            rows = len(self._master) if self._master else 0
            return Health(ok=True, detail=f"dry-run: nothing is sent to Dhan ({rows} instruments loaded)")
        if self._client is None:
            return Health(ok=False, detail="dhan broker not started")
        if self._auth_failed:
            return Health(ok=False, detail=REAUTH_HELP)
        if self._tokens is not None and self._tokens.key_error:
            return Health(ok=False, detail=f"{self._tokens.key_error}. {KEY_HELP}")
        async with self._health_lock:
            if self._health is not None and time.monotonic() - self._health[0] < HEALTH_CACHE_S:
                return self._health[1]
            answer = await self._client.call("get_fund_limits")
            if answer.ok:
                health = Health(ok=True, detail=f"Dhan token valid{self._expiry_text()}{self._role_text()}")
            elif answer.error is not None:
                self._check_auth(answer)
                health = Health(ok=False, detail=str(answer.error))
            else:
                health = Health(ok=False, detail=f"Dhan unreachable: {answer.ambiguous}")
            self._health = (time.monotonic(), health)
            return health

    # the token

    @property
    def token_expires_at(self) -> datetime | None:
        """When the access token in use expires (its JWT `exp`), None when unknown or in dry-run."""
        return self._tokens.expires_at if self._tokens is not None else None

    def state_files(self) -> list[Path]:
        """None for tvbridge to watch (`capabilities.state_files` stays false): the order ledger is created with
        the first order, and when it is lost Dhan's own order book still answers `lookup()` by correlation id."""
        return []

    def token_expiry(self) -> datetime | None:
        """The interface's view of `token_expires_at` (`capabilities.token_expiry`, live accounts)."""
        return self.token_expires_at

    async def maintain(self) -> None:
        """One round of upkeep (at start and every minute): renew or generate the token when due and use a
        new one at once; refresh the instrument master when a trading day's refresh is due. Public so tests
        (and a readiness check) can run a round without waiting."""
        if self._tokens is None:
            return
        changed = await self._tokens.maintain()
        if self._auth_failed and not changed and self._client is not None:
            changed = await self._tokens.recover(self._client.token, again=True)
        if changed:
            self._swap_client()
        await self._refresh_master_if_due()

    async def readiness(self, *, close_at: datetime) -> list[ReadinessCheck]:
        """The pre-open check (`Broker.readiness()`): one upkeep round first (a due renewal or refresh
        happens now rather than being reported), then token, master, Dhan's answer and the clock."""
        if not self._settings.live or self._tokens is None:
            return [ReadinessCheck(name="mode", ok=True, detail="dry-run: nothing is sent to Dhan")]
        for _ in range(2):  # again when Dhan rejects the token now: with PIN + TOTP a new one is generated first
            try:
                await self.maintain()
            except Exception:  # noqa: BLE001 - the checks below report what is still wrong
                self._log.exception("dhan.maintenance_failed")
            self._health = None  # a fresh answer from Dhan, not the 10 s cache
            health = await self.health()
            if not (self._auth_failed and self._tokens.can_generate):
                break
        now = self._clock()
        account = self._context.account
        token = token_check(self._tokens, now=now, close_at=close_at, rejected=self._auth_failed, account=account)
        if self._tokens.key_error:
            token = ReadinessCheck(name="token", ok=False, detail=f"{self._tokens.key_error}. {KEY_HELP}", local=True)
        return [
            token,
            attrs.evolve(master_check(self._refresher, now=now, account=account), local=True),
            health_check(health),
            attrs.evolve(
                await clock_check(self._settings.base_url, now=self._clock(), timeout_s=self._settings.timeout_s),
                local=True,
            ),
        ]

    async def _maintain_every_minute(self) -> None:
        upkeep = self._refresh_master_if_due  # at once: a stale master at start; the token was checked in start()
        cluster = self._context.cluster
        every = cluster.poll_s if cluster.shared else MAINTAIN_EVERY_S
        while True:
            try:
                await upkeep()
            except Exception:  # noqa: BLE001 - upkeep must go on next round
                self._log.exception("dhan.maintenance_failed")
            await asyncio.sleep(every)
            upkeep = self.maintain

    async def _refresh_master_if_due(self) -> None:
        """Live accounts only (a dry-run account may read the shipped sample; refresh it by hand). With several
        instances the leader refreshes on schedule and publishes; a follower downloads when the leader's master
        is newer than its own (`master_refresh`)."""
        if not self._settings.live:
            return
        async with self._refresh_lock:
            now = self._clock()
            cluster = self._context.cluster
            published = await self._published_master() if cluster.shared else None
            if not await cluster.is_leader():
                following = published is not None and self._refresher.follows(published, now)
                if following and await self._install_master(now):
                    # the leader's file, as of its moment: a new leader re-publishing its download time would make
                    # every follower download the same file again
                    self._refresher.followed = self._refresher.refreshed_at = published
                return
            if self._refresher.due(now) is not None:
                await self._install_master(now)
            mine = self._refresher.refreshed_at
            if cluster.shared and mine is not None and (published is None or mine > published):
                await self._publish_master(mine)

    async def _install_master(self, now: datetime) -> bool:
        path = self._master_path(self._settings)
        master = await self._refresher.refresh(now, path, self._master)
        if master is None:
            return False
        self._master = master  # the next resolve uses it; requests in flight keep the old index
        self._master_stamp = (str(path), (await asyncio.to_thread(path.stat)).st_mtime)
        return True

    async def _published_master(self) -> datetime | None:
        """When the leader's master was written, as it published it; None when nothing (readable) was."""
        try:
            shared = await self._context.cluster.load(self._context.account, MASTER_SHARED)
            published = None if shared is None else datetime.fromisoformat(json.loads(shared.value)["refreshed_at"])
        except (ClusterError, ValueError, KeyError, TypeError) as e:
            self._master_share_failed(str(e))
            return None
        self._master_share_error = ""
        return published

    def _master_share_failed(self, error: str) -> None:
        """Logged once per distinct error (a database outage is looked at every few seconds)."""
        if error != self._master_share_error:
            self._master_share_error = error
            self._log.error("dhan.instruments.share_failed", error=error)

    async def _publish_master(self, refreshed_at: datetime) -> None:
        value = json.dumps(
            {"refreshed_at": refreshed_at.isoformat(), "rows": len(self._master) if self._master is not None else 0}
        )
        try:
            version = await self._context.cluster.publish(
                self._context.account, MASTER_SHARED, value, secret=False, expected=None
            )
        except ClusterError as e:
            self._master_share_failed(str(e))
            return
        self._log.info("dhan.instruments.shared", version=version, refreshed_at=refreshed_at.isoformat())

    async def _recover_token(self, client: DhanClient) -> bool:
        """After a DH-901 on `client`: True (and a new client in place) when another token is available."""
        if self._tokens is None or not await self._tokens.recover(client.token):
            return False
        if self._client is None or self._client.token != self._tokens.token:
            self._swap_client()
        return True

    def _swap_client(self) -> None:
        """Use the keeper's token from the next call on; calls in flight finish on the retired client."""
        if self._client is None or self._tokens is None:
            return
        if self._client.token != self._tokens.token:
            self._retired.append(self._client)
            self._client = DhanClient(self._with_token(self._settings))
        self._auth_failed = False
        self._health = None

    def _with_token(self, settings: DhanSettings) -> DhanSettings:
        if self._tokens is None:
            return settings
        return attrs.evolve(settings, access_token=self._tokens.token)

    def _role_text(self) -> str:
        """With several instances: whether this one renews the token and refreshes the master (the leader)."""
        if not self._context.cluster.shared or self._tokens is None or self._tokens.leading is None:
            return ""
        return "; this instance leads the Dhan upkeep" if self._tokens.leading else "; follows the leader's token"

    def _expiry_text(self) -> str:
        expires = self.token_expires_at
        return f"; it expires {expires.astimezone(IST):%Y-%m-%d %H:%M} IST" if expires else ""

    # internals

    def _dry_run(
        self, request: OrderRequest, order: PlaceOrder, bracket: dict[str, object] | None = None
    ) -> OrderResult:
        kwargs = order.kwargs() if bracket is None else bracket
        method = "place_order" if bracket is None else "place_super_order"
        message = (
            f"dry-run: not sent to Dhan; {order.trading_symbol} security_id {order.security_id}: "
            f"{method}({json.dumps(kwargs, separators=(',', ':'))})"
        )
        result = OrderResult(
            order_id=None,
            state=OrderState.DRY_RUN,
            message=message,
            client_order_id=request.client_order_id,
            details={
                "security_id": order.security_id,
                "trading_symbol": order.trading_symbol,
                "lot_size": order.lot_size,
                method: kwargs,
            },
        )
        self._dry_runs[request.client_order_id] = result
        self._log.info("dhan.order.dry_run", client_order_id=request.client_order_id, order=kwargs)
        return result

    async def _read_list(self, method: str, what: str) -> list[dict[str, object]]:
        """The rows of a Dhan list call; "no data" (DH-907) is an empty list."""
        if self._auth_failed:
            raise BrokerAuthError(REAUTH_HELP)
        if self._client is None:
            raise BrokerUnavailableError(
                f"cannot read Dhan's {what}: this account has no client_id and access_token (a dry-run account"
                " needs them to read its positions and orders; reading sends nothing)"
            )
        answer = await self._client.call(method)
        if answer.ok:
            rows = answer.data if isinstance(answer.data, list) else []
            return [row for row in rows if isinstance(row, dict)]
        if answer.error_code == NO_DATA:
            return []
        if answer.error is not None:
            self._check_auth(answer)
            raise answer.error
        raise BrokerUnavailableError(f"cannot read Dhan's {what}: {answer.ambiguous}")

    def _live_client(self) -> DhanClient:
        if self._auth_failed:
            raise BrokerAuthError(REAUTH_HELP)
        if self._client is None:
            raise BrokerUnavailableError("dhan broker not started")
        return self._client

    def _require_master(self) -> InstrumentMaster:
        if self._master is None:
            raise BrokerUnavailableError("dhan broker not started: the instrument master is not loaded")
        return self._master

    def _check_auth(self, answer: Answer) -> None:
        if answer.error_code == TOKEN_EXPIRED and not self._auth_failed:
            self._auth_failed = True
            self._health = None
            self._log.error("dhan.token.rejected", detail=REAUTH_HELP)

    async def _placed(
        self, client: DhanClient, cid: str, answer: Answer, bracket: dict[str, object] | None = None
    ) -> OrderResult:
        if answer.ok and isinstance(answer.data, dict) and answer.data.get("orderId"):
            if bracket is not None:
                return placed_result(answer.data, bracket, client_order_id=cid)
            return to_result(answer.data, client_order_id=cid)
        if answer.error is not None:
            self._check_auth(answer)
            self._log.warning("dhan.order.refused", client_order_id=cid, code=answer.error_code)
            raise answer.error
        reason = answer.ambiguous or "Dhan's answer had no orderId"
        self._log.warning("dhan.order.ambiguous", client_order_id=cid, reason=reason)
        try:
            found = await self._fetch_by_correlation(client, cid)
        except BrokerError as e:
            raise BrokerUnknownOutcomeError(
                f"the order may or may not be at Dhan: placement got {reason}; the lookup by correlation id "
                f"{cid} failed too ({e}). Check Dhan's order book before sending it again."
            ) from e
        if found is None:
            raise BrokerUnknownOutcomeError(
                f"the order may or may not be at Dhan: placement got {reason} and no order with correlation id "
                f"{cid} is there yet (it may still appear). Check Dhan's order book before sending it again."
            )
        self._log.warning("dhan.order.reconciled", client_order_id=cid, order_id=found.order_id)
        return attrs.evolve(
            found, message=f"{found.message}; placement answer lost ({reason}), found by correlation id"
        )

    async def _lookup_before_retry(self, client: DhanClient, cid: str) -> OrderResult | None:
        try:
            found = await self._fetch_by_correlation(client, cid)
        except BrokerError as e:
            raise BrokerUnknownOutcomeError(
                f"client order id {cid} was sent before and Dhan cannot be asked about it now ({e}); not re-sending"
            ) from e
        if found is not None:
            self._log.info("dhan.order.already_placed", client_order_id=cid, order_id=found.order_id)
            return attrs.evolve(
                found, message=f"{found.message}; already placed with this client order id, not sent again"
            )
        return None

    async def _fetch_by_correlation(self, client: DhanClient, cid: str) -> OrderResult | None:
        entry = self._ledger.get(cid)
        if entry is not None and entry.super_order:
            return await self._fetch_super(client, entry)
        answer = await client.call("get_order_by_correlationID", cid)
        if answer.ok:
            orders = answer.data if isinstance(answer.data, list) else [answer.data]
            matching = [o for o in orders if isinstance(o, dict) and o.get("orderId")]
            if len(matching) > 1:
                self._log.error("dhan.order.duplicate_correlation_id", client_order_id=cid, count=len(matching))
            return to_result(matching[0], client_order_id=cid) if matching else None
        if answer.error_code == NO_DATA:
            return None
        if answer.error is not None:
            self._check_auth(answer)
            raise answer.error
        raise BrokerUnavailableError(f"cannot look up correlation id {cid}: {answer.ambiguous}")

    async def _super_rows(self, client: DhanClient) -> list[dict[str, object]]:
        """Dhan's super order list (one call; "no data" is an empty list)."""
        answer = await client.call("get_super_order_list")
        if answer.ok:
            rows = answer.data if isinstance(answer.data, list) else []
            return [row for row in rows if isinstance(row, dict)]
        if answer.error_code == NO_DATA:
            return []
        if answer.error is not None:
            self._check_auth(answer)
            raise answer.error
        raise BrokerUnavailableError(f"cannot read Dhan's super orders: {answer.ambiguous}")

    async def _fetch_super(
        self, client: DhanClient, entry: Entry, rows: list[dict[str, object]] | None = None
    ) -> OrderResult | None:
        """The super order placed under `entry`'s client order id (found by correlationId, or by its order id
        once known) in Dhan's super order list (`rows`, read now when not given); None when Dhan lists none."""
        for row in await self._super_rows(client) if rows is None else rows:
            if row.get("correlationId") == entry.client_order_id or (
                entry.order_id is not None and str(row.get("orderId")) == entry.order_id
            ):
                return super_result(row, client_order_id=entry.client_order_id)
        return None

    def _super_entry(self, order_id: str) -> Entry | None:
        found = [e for e in self._ledger.entries() if e.super_order and e.order_id == order_id]
        return found[0] if found else None

    async def _cancel_super(
        self, client: DhanClient, entry: Entry, rows: list[dict[str, object]] | None = None
    ) -> list[OrderResult]:
        """End a super order: ENTRY_LEG while the entry is open (Dhan cancels every leg), else each exit leg
        still open. Returns the super order as it is afterwards (its parts in `details["bracket"]`), or nothing
        when no part was open. `rows`: the super order list, when the caller read it already."""
        current = await self._fetch_super(client, entry, rows)
        if current is None or current.order_id is None or not has_open_part(parts_of(current.details)):
            return []
        for leg_name in open_legs(current):
            await self._throttle.acquire()
            answer = await client.call("cancel_super_order", current.order_id, leg_name)
            if answer.error is not None:
                self._check_auth(answer)
                raise answer.error
            if not answer.ok:
                raise BrokerUnknownOutcomeError(
                    f"cancel of Dhan super order {current.order_id} {leg_name} got {answer.ambiguous}: check Dhan"
                )
            self._log.info("dhan.super_order.cancelled", order_id=current.order_id, leg=leg_name)
        after = await self._fetch_super(client, entry)
        if after is None:
            raise BrokerUnknownOutcomeError(f"Dhan super order {current.order_id} is no longer listed after its cancel")
        return [attrs.evolve(after, state=OrderState.CANCELLED)]

    async def _current(self, client: DhanClient, entry: Entry) -> OrderResult | None:
        if entry.order_id is None:
            return await self._fetch_by_correlation(client, entry.client_order_id)
        return await self._order_by_id(client, entry.order_id, client_order_id=entry.client_order_id)

    async def _order_by_id(
        self, client: DhanClient, order_id: str, *, client_order_id: str | None
    ) -> OrderResult | None:
        answer = await client.call("get_order_by_id", order_id)
        data = answer.data[0] if answer.ok and isinstance(answer.data, list) and answer.data else answer.data
        if answer.ok and isinstance(data, dict):
            return to_result(data, client_order_id=client_order_id)
        if answer.error_code == NO_DATA:
            return None
        if answer.error is not None:
            self._check_auth(answer)
            raise answer.error
        raise BrokerUnavailableError(f"cannot read Dhan order {order_id}: {answer.ambiguous}")

    async def _cancel_one(self, client: DhanClient, order_id: str) -> OrderResult:
        await self._throttle.acquire()
        answer = await client.call("cancel_order", order_id)
        if answer.ok and isinstance(answer.data, dict):
            return to_result({"orderId": order_id, **answer.data}, client_order_id=None)
        if answer.error is not None:
            self._check_auth(answer)
            raise answer.error
        # the cancel's answer was lost: Dhan's view of the order decides
        try:
            current = await self._order_by_id(client, order_id, client_order_id=None)
        except BrokerError as e:
            raise BrokerUnknownOutcomeError(f"cancel of Dhan order {order_id} got {answer.ambiguous}; {e}") from e
        if current is not None and current.state is OrderState.CANCELLED:
            return current
        state = current.details.get("orderStatus") if current else "not found"
        raise BrokerUnknownOutcomeError(f"cancel of Dhan order {order_id} got {answer.ambiguous}; it is now {state}")

    async def _remember(self, entry: Entry) -> None:
        try:
            await asyncio.to_thread(self._ledger.record, entry)
        except OSError as e:  # the intent line is already there: a retry still looks the order up first
            self._log.warning("dhan.ledger.write_failed", client_order_id=entry.client_order_id, error=str(e))

    async def _download_missing_master(self) -> None:
        path = self._settings.instruments_path or default_instruments_path(self._context.data_dir)
        if await asyncio.to_thread(path.exists):
            return
        url = self._settings.instruments_url
        self._log.info("dhan.instruments.refreshing", url=url, path=str(path))
        try:
            master = await download_master(url, path)
        except RefreshError as e:
            raise BrokerError(
                f"instrument master not found at {path} and its download failed ({e}): "
                "run `tvbridge dhan instruments refresh`"
            ) from e
        self._log.info("dhan.instruments.refreshed", rows=len(master), path=str(path))

    def _master_path(self, settings: DhanSettings) -> Path:
        configured = settings.instruments_path
        path = configured or default_instruments_path(self._context.data_dir)
        if path.exists():
            return path
        if configured is None and not settings.live:
            self._log.warning("dhan.instruments.sample", missing=str(path), using=str(sample_master_path()))
            return sample_master_path()
        raise BrokerError(f"instrument master not found at {path}: run `tvbridge dhan instruments refresh`")

    def _master_changed(self, settings: DhanSettings) -> bool:
        path = self._master_path(settings)
        return self._master_stamp != (str(path), path.stat().st_mtime)

    async def _load_master(self, settings: DhanSettings) -> InstrumentMaster:
        path = self._master_path(settings)
        try:
            master = await asyncio.to_thread(load_master, path)
            self._master_stamp = (str(path), path.stat().st_mtime)
            self._refresher.loaded(path)
        except (OSError, MasterFormatError) as e:
            raise BrokerError(f"cannot load the Dhan instrument master {path}: {e}") from e
        self._log.info("dhan.instruments.loaded", path=str(path), rows=len(master))
        return master


def _can_read(settings: DhanSettings) -> bool:
    return settings.live or bool(settings.client_id and settings.access_token)


def _refuse_sample_when_live(settings: DhanSettings) -> None:
    path = settings.instruments_path
    if settings.live and path is not None and path.resolve() == sample_master_path().resolve():
        raise ValueError("instruments_path: the shipped sample master cannot be used for live orders")
