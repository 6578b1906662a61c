"""The configuration: its shape, its defaults, and where values come from.

Sources, later ones winning: the defaults below, `config.toml` (or `--config FILE` / `TVBRIDGE_CONFIG`), a `.env`
file in the working directory, the process environment. In the last two, the guide's variables
(`WEBHOOK_SECRET`, `WEBHOOK_HOST`, `WEBHOOK_PORT`, `ENABLE_DHAN`, `DHAN_CLIENT_ID`, `DHAN_ACCESS_TOKEN`, `DHAN_PIN`,
`DHAN_TOTP_SECRET`) and any
key as `TVBRIDGE_<SECTION>__<KEY>` (values are read as TOML values when they parse as one, else as strings).

Unknown keys stop the start (a typo must not silently leave a guard off). Secrets are `repr=False` and are
masked by `effective_settings()`; the broker accounts' tables are validated by their own plugins.
"""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
from collections.abc import Mapping
from datetime import date
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal

import attrs
import cattrs
from dotenv import dotenv_values

from tvbridge.errors import ConfigError
from tvbridge.models import QuantityUnit
from tvbridge.validation import validation_messages

if TYPE_CHECKING:
    from collections.abc import Iterator

TRADINGVIEW_IPS: Final = ("52.89.214.238", "34.212.75.30", "54.218.53.128", "52.32.178.7")
SECRET_KEYS: Final = frozenset(
    {"secret", "path_token", "admin_token", "access_token", "api_key", "api_secret", "password", "token", "totp_secret"}
    | {"pin"}  # a Dhan account's login PIN (token generation with totp_secret)
    | {"urls"}  # notify.urls: apprise URLs carry bot tokens and passwords
    | {"url"}  # journal.url: a PostgreSQL URL carries the database password
)
"""Keys whose values are never printed, logged or answered, wherever they appear (see `is_secret_key`)."""
SECRET_SUFFIXES: Final = ("token", "secret", "password", "passphrase", "private_key", "api_key", "secret_key")


def is_secret_key(name: str) -> bool:
    """True for a key that holds a secret: ours, and a plugin's (`client_secret`, `refresh_token`, ...)."""
    lowered = name.lower()
    return lowered in SECRET_KEYS or lowered.endswith(SECRET_SUFFIXES)


def _non_negative(_instance: object, attribute: attrs.Attribute[float], value: float) -> None:
    if value < 0:
        raise ValueError(f"{attribute.name} must be >= 0, got {value}")


def _positive(_instance: object, attribute: attrs.Attribute[float], value: float) -> None:
    if value <= 0:
        raise ValueError(f"{attribute.name} must be > 0, got {value}")


def _positive_int(_instance: object, attribute: attrs.Attribute[int], value: int) -> None:
    if value <= 0:
        raise ValueError(f"{attribute.name} must be > 0, got {value}")


def _ipv6_prefix(_instance: object, attribute: attrs.Attribute[int], value: int) -> None:
    if not 1 <= value <= 128:
        raise ValueError(f"{attribute.name} must be 1..128, got {value}")


def _database_url(_instance: object, attribute: attrs.Attribute[str], value: str) -> None:
    if value and not value.startswith(("postgresql://", "postgres://")):
        # never the value itself: it may carry a password
        raise ValueError(f"{attribute.name} must be a postgresql:// URL (or empty: the SQLite journal at path)")


def _port(_instance: object, attribute: attrs.Attribute[int], value: int) -> None:
    if not 0 <= value <= 65535:
        raise ValueError(f"{attribute.name} must be 0..65535, got {value}")


@attrs.frozen(kw_only=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = attrs.field(default=8080, validator=_port)
    data_dir: Path = Path()
    response_deadline_s: float = attrs.field(default=2.5, validator=_positive)
    shutdown_grace_s: float = attrs.field(default=10.0, validator=_non_negative)
    admin_token: str = attrs.field(default="", repr=False)
    tls_cert: str = ""
    """PEM certificate chain: serve HTTPS directly (TradingView calls only ports 80 and 443). Empty: plain HTTP."""
    tls_key: str = ""
    """PEM private key of `tls_cert` (empty: the key is in the `tls_cert` file)."""
    event_loop: Literal["auto", "uvloop", "asyncio"] = "auto"
    """`auto`: uvloop when installed, else asyncio's own loop (`tvbridge/eventloop.py`)."""


@attrs.frozen(kw_only=True)
class AuthConfig:
    secret: str = attrs.field(default="", repr=False)
    path_token: str = attrs.field(default="", repr=False)
    require_client_cert: bool = False
    """Webhook callers must present a verified client certificate with CN `TradingView Webhooks` (needs
    `server.tls_cert`; behind a proxy, let the proxy check it: docs/guards.md)."""
    client_ca_file: str = ""
    """PEM CA bundle that client certificates must chain to; empty: the system's trusted CAs."""


@attrs.frozen(kw_only=True)
class LimitsConfig:
    max_body_bytes: int = attrs.field(default=65536, validator=_positive_int)
    read_timeout_s: float = attrs.field(default=10.0, validator=_positive)
    """A client that has not sent its whole body by then is cut off (slow-client protection)."""
    header_timeout_s: float = attrs.field(default=5.0, validator=_positive)
    """A new connection must have sent its request line and headers by then, or it is closed (slowloris)."""
    keepalive_timeout_s: float = attrs.field(default=15.0, validator=_positive)
    """A connection without a request in progress is closed after this long idle (after an answer, too)."""
    max_connections: int = attrs.field(default=1000, validator=_positive_int)
    """Open connections in all; lowered at start to what the descriptor limit (`LimitNOFILE`) leaves room for."""
    max_connections_per_ip: int = attrs.field(default=256, validator=_positive_int)
    """Open connections per source address (IPv6: per `ipv6_prefix`); the addresses in `ip_allowlist.allow`
    (TradingView's) and `ip_allowlist.trusted_proxies` count only toward `max_connections`."""
    ipv6_prefix: int = attrs.field(default=64, validator=_ipv6_prefix)
    """IPv6 sources are counted per network of this prefix length (one host usually owns a whole /64), by
    `max_connections_per_ip` and the per-address rate limits."""


def _networks(_instance: object, attribute: attrs.Attribute[tuple[str, ...]], value: tuple[str, ...]) -> None:
    """Every entry must be an IP address or a CIDR network, checked at start (a typo must not open the door)."""
    for entry in value:
        try:
            ipaddress.ip_network(entry.strip(), strict=False)
        except ValueError:
            raise ValueError(f"{attribute.name}: {entry!r} is not an IP address or CIDR network") from None


@attrs.frozen(kw_only=True)
class IpAllowlistConfig:
    enabled: bool = False
    allow: tuple[str, ...] = attrs.field(default=TRADINGVIEW_IPS, validator=_networks)
    trusted_proxies: tuple[str, ...] = attrs.field(default=(), validator=_networks)
    """Proxies whose `X-Forwarded-For` is believed; applies even when `enabled` is false (the logged source)."""


@attrs.frozen(kw_only=True)
class RateLimitConfig:
    enabled: bool = True
    per_strategy_per_s: float = attrs.field(default=5.0, validator=_positive)
    per_strategy_burst: int = attrs.field(default=20, validator=_positive_int)
    per_ip_per_s: float = attrs.field(default=5.0, validator=_positive)
    per_ip_burst: int = attrs.field(default=20, validator=_positive_int)
    global_per_s: float = attrs.field(default=200.0, validator=_positive)
    global_burst: int = attrs.field(default=2000, validator=_positive_int)
    """Authenticated alerts all strategies may send at once: above the largest TradingView plan's alert count
    firing on one bar close, so a trader's fan-out is never refused (TradingView does not resend a 429)."""
    auth_failures_per_min: int = attrs.field(default=10, validator=_positive_int)


@attrs.frozen(kw_only=True)
class DedupeConfig:
    enabled: bool = True
    window_s: float = attrs.field(default=60.0, validator=_non_negative)


@attrs.frozen(kw_only=True)
class AlertsConfig:
    max_age_s: float = attrs.field(default=300.0, validator=_positive)
    on_leg_failure: Literal["stop", "continue"] = "stop"


@attrs.frozen(kw_only=True)
class LoggingConfig:
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["auto", "json", "console"] = "auto"
    file: str = "webhook_server.log"
    """Relative paths are under `server.data_dir`; an empty string turns the file off (stdout only)."""


@attrs.frozen(kw_only=True)
class OrderLogConfig:
    file: str = "webhook_orders.csv"


@attrs.frozen(kw_only=True)
class JournalConfig:
    path: str = "tvbridge.sqlite3"
    url: str = attrs.field(default="", repr=False, validator=_database_url)
    """`postgresql://user:password@host:port/database`: the shared store of several instances (docs/postgresql.md)
    instead of the SQLite file at `path`. Also `DATABASE_URL`; empty: SQLite."""
    leader_lease_s: float = attrs.field(default=10.0, validator=_positive)
    """PostgreSQL only: an instance that stops renewing its lease for this long (killed, cut off) is dead: another
    finishes its unfinished alerts and, if it led, takes over the scheduled work. Keep it above every account's
    `broker_timeout_s`, so a send in flight has ended before its alert is taken over."""
    shared_secret_key: str = attrs.field(default="", repr=False)
    """PostgreSQL only: the Fernet key (`tvbridge db new-key`) that encrypts a broker token the leader shares
    with the other instances through the database (docs/postgresql.md). The same on every instance, never in
    the database; a live Dhan account on PostgreSQL refuses to start without it."""
    synchronous: Literal["normal", "full"] = "normal"
    """normal: a 2xx answer survives a crash of the process (kill -9), not of the machine; full: also a power cut,
    at one fsync per commit (group commit shares it between concurrent alerts)."""


@attrs.frozen(kw_only=True)
class MetricsConfig:
    """`GET /metrics` (docs/operations.md): who may scrape without the admin token."""

    enabled: bool = True
    require_token: bool = False
    """true: every scrape needs the admin token (Bearer, or Basic's password), also from `allow`."""
    allow: tuple[str, ...] = ("127.0.0.1/32", "::1/128")
    """Addresses (IPs or CIDRs) that may scrape without the token; loopback by default."""


NOTIFY_KINDS: Final = (
    "leg_failed",
    "unknown_outcome",
    "token_expired",
    "halted",
    "resumed",
    "queued_sent",
    "journal_error",
    "order_filled",
    "order_rejected",
    "token_expiring",
    "instruments_refresh_failed",
    "not_ready",
)
"""Every kind of notification (`tvbridge/notify.py` raises them; docs/operations.md describes them); all are on
by default once `notify.urls` is set."""


def _notify_kinds(_instance: object, attribute: attrs.Attribute[tuple[str, ...]], value: tuple[str, ...]) -> None:
    unknown = [kind for kind in value if kind not in NOTIFY_KINDS]
    if unknown:
        raise ValueError(f"{attribute.name}: unknown event {unknown[0]!r}; known: {', '.join(NOTIFY_KINDS)}")


@attrs.frozen(kw_only=True)
class NotifyConfig:
    """Notifications through apprise (docs/operations.md); off while `urls` is empty."""

    urls: tuple[str, ...] = attrs.field(default=(), repr=False)
    """apprise URLs (tgram://, discord://, slack://, mailto://, json://...); they hold tokens: kept secret."""
    events: tuple[str, ...] = attrs.field(default=NOTIFY_KINDS, validator=_notify_kinds)
    min_interval_s: float = attrs.field(default=60.0, validator=_non_negative)
    """Per kind, events within this long after a message are folded into one message with their count."""


@attrs.frozen(kw_only=True)
class FollowupConfig:
    """Order follow-up (docs/durability.md): every order a broker accepted is looked up until it is final."""

    enabled: bool = True
    first_interval_s: float = attrs.field(default=1.0, validator=_positive)
    """The first look-up comes this long after placement; the wait doubles after each look-up that finds no
    change, up to `max_interval_s`, and starts over after a change."""
    max_interval_s: float = attrs.field(default=30.0, validator=_positive)
    max_lookups_per_s: float = attrs.field(default=2.0, validator=_positive)
    """Per account: look-ups are spaced at least 1/this apart (Dhan allows 20 non-order requests a second)."""
    lookup_timeout_s: float = attrs.field(default=10.0, validator=_positive)
    """A look-up that takes longer counts as failed; the order is asked about again later."""


@attrs.frozen(kw_only=True)
class RoutingConfig:
    accounts: tuple[str, ...] = ()
    """Empty means the default: `["dhan"]` when `DHAN_CLIENT_ID` is set, else `["paper"]`."""


AMO_TIMES: Final = ("OPEN", "OPEN_30", "OPEN_60")
"""When an after-market order goes to the exchange. Dhan also documents PRE_OPEN, but dhanhq 2.3 refuses it."""
WHEN_CLOSED: Final = ("queue", "amo", "reject")
_HHMM: Final = re.compile(r"^([01]\d|2[0-3]):[0-5]\d$")


def _amo_time(_instance: object, attribute: attrs.Attribute[str], value: str) -> None:
    if value.upper() == "PRE_OPEN":
        raise ValueError(
            f"{attribute.name} PRE_OPEN is refused by the Dhan client (dhanhq 2.3): use OPEN, OPEN_30 or OPEN_60"
        )
    if value not in AMO_TIMES:
        raise ValueError(f"{attribute.name} must be one of {', '.join(AMO_TIMES)}, got {value!r}")


def _hhmm(_instance: object, attribute: attrs.Attribute[str], value: str) -> None:
    if not _HHMM.match(value):
        raise ValueError(f"{attribute.name} must be a time HH:MM (exchange time, 24 h), got {value!r}")


def _exchanges(_instance: object, attribute: attrs.Attribute[tuple[str, ...]], value: tuple[str, ...]) -> None:
    known = ("NSE", "BSE", "NFO", "BFO", "MCX")
    unknown = [e for e in value if e not in known]
    if unknown or not value:
        raise ValueError(f"{attribute.name} must list exchanges from {', '.join(known)}, got {list(value)}")


@attrs.frozen(kw_only=True)
class ExtraSession:
    """A one-off session (Muhurat trading): open `open`..`close` on `date` for `exchanges`, even on a holiday."""

    date: date
    open: str = attrs.field(validator=_hhmm)
    close: str = attrs.field(validator=_hhmm)
    exchanges: tuple[str, ...] = attrs.field(default=("NSE", "BSE", "NFO", "BFO", "MCX"), validator=_exchanges)
    name: str = "special session"

    def __attrs_post_init__(self) -> None:
        if self.close <= self.open:
            raise ValueError(f"close {self.close} must be after open {self.open} (sessions end the same day)")


@attrs.frozen(kw_only=True)
class SessionsConfig:
    """Exchange hours (see `tvbridge/calendar.py` and docs/trading-days.md)."""

    enabled: bool = True
    """Off: every alert is sent at once, whatever the time (the behaviour before sessions existed)."""
    when_closed: Literal["queue", "amo", "reject"] = "queue"
    """What an alert does when its exchange is closed; also settable per account in `[accounts.NAME]`."""
    amo_time: str = attrs.field(default="OPEN", validator=_amo_time)
    amo_brokers: tuple[str, ...] = ("dhan",)
    """Brokers (entry point names) that take after-market orders; for others `amo` waits in the queue instead."""
    extra_holidays: tuple[date, ...] = ()
    extra_sessions: tuple[ExtraSession, ...] = ()
    readiness_at: str = attrs.field(default="08:45", validator=_hhmm)
    """Exchange time (HH:MM) of the pre-open readiness check on trading days (`tvbridge/readiness.py`)."""


def _limit(_instance: object, attribute: attrs.Attribute[Any], value: int | Decimal | None) -> None:
    if value is not None and value <= 0:
        raise ValueError(f"{attribute.name} must be > 0, got {value}")


@attrs.frozen(kw_only=True)
class RiskConfig:
    """Per-order limits, checked before anything is sent (see `tvbridge/risk.py`); unset means no limit.

    Each key may also be set in an `[accounts.NAME]` table, where it replaces the `[risk]` value for that account.
    """

    max_qty_per_order: int | None = attrs.field(default=None, validator=_limit)
    max_notional_per_order: Decimal | None = attrs.field(default=None, validator=_limit)
    max_orders_per_day: int | None = attrs.field(default=None, validator=_limit)
    allowed_symbols: tuple[str, ...] = ()
    """Empty: every symbol is allowed (unless blocked)."""
    blocked_symbols: tuple[str, ...] = ()


STRATEGY_NAME: Final = re.compile(r"^[A-Za-z0-9_-]{1,40}$")
DEFAULT_STRATEGY: Final = "default"
"""The strategy of an alert authenticated by `auth.secret` / `auth.path_token` (no `[strategies.NAME]` table)."""
ALLOWED_SIDES: Final = ("both", "long_only", "short_only")
_WINDOW: Final = re.compile(r"^([01]\d|2[0-3]):[0-5]\d-([01]\d|2[0-3]):[0-5]\d$")


def _entry_window(_instance: object, attribute: attrs.Attribute[str], value: str) -> None:
    if value and (not _WINDOW.match(value) or value[6:] <= value[:5]):
        raise ValueError(
            f"{attribute.name} must be HH:MM-HH:MM (exchange time, start before end, e.g. 09:20-15:00), got {value!r}"
        )


def _optional_hhmm(instance: object, attribute: attrs.Attribute[str], value: str) -> None:
    if value:
        _hhmm(instance, attribute, value)


@attrs.frozen(kw_only=True)
class StrategyConfig:
    """One `[strategies.NAME]` table (`tvbridge/strategies.py`): an alert whose secret or path token is this
    strategy's runs under it, with its own accounts, sides, symbols, hours, square-off, risk limits and halt."""

    secret: str = attrs.field(default="", repr=False)
    path_token: str = attrs.field(default="", repr=False)
    accounts: tuple[str, ...] = ()
    """Accounts this strategy's alerts go to; empty: `routing.accounts`."""
    allowed_sides: Literal["both", "long_only", "short_only"] = "both"
    """An entry on the other side is refused; exits (that only reduce the strategy's own position) never are."""
    symbols: tuple[str, ...] = ()
    """Allowlist of symbols (as alerts name them); empty: any."""
    entry_window: str = attrs.field(default="", validator=_entry_window)
    """`HH:MM-HH:MM` exchange time in which entries are sent; exits always are. Empty: any time."""
    square_off_at: str = attrs.field(default="", validator=_optional_hhmm)
    """`HH:MM` exchange time: on every trading day, the intraday positions this strategy opened are closed and
    its open orders cancelled (through flatten), once a day. Empty: never."""
    max_qty_per_order: int | None = attrs.field(default=None, validator=_limit)
    max_notional_per_order: Decimal | None = attrs.field(default=None, validator=_limit)
    max_orders_per_day: int | None = attrs.field(default=None, validator=_limit)
    """Orders this strategy sent today, over all its accounts (counted from the journal: restart-safe)."""
    allowed_symbols: tuple[str, ...] = ()
    blocked_symbols: tuple[str, ...] = ()

    def risk(self) -> RiskConfig:
        """This strategy's own `[risk]` limits, checked besides the account's (both must pass)."""
        return RiskConfig(
            max_qty_per_order=self.max_qty_per_order,
            max_notional_per_order=self.max_notional_per_order,
            max_orders_per_day=self.max_orders_per_day,
            allowed_symbols=self.allowed_symbols,
            blocked_symbols=self.blocked_symbols,
        )


QUANTITY_UNITS: Final = tuple(unit.value for unit in QuantityUnit)
DEFAULT_BROKER_TIMEOUT_S: Final = 2.5
"""`[accounts.NAME] broker_timeout_s`: the host's bound on every call into the account's plugin (see
`tvbridge/pluginguard.py`); under TradingView's 3 s, like `server.response_deadline_s`."""

ACCOUNT_KEYS: Final = frozenset(
    {*attrs.fields_dict(RiskConfig), "when_closed", "quantity_unit", "broker_timeout_s", "quantity_multiplier"}
)
MAX_QUANTITY_MULTIPLIER: Final = 1000
"""Keys of `[accounts.NAME]` that tvbridge itself reads; they are removed before the table reaches the plugin."""


@attrs.frozen(kw_only=True)
class Config:
    server: ServerConfig = ServerConfig()
    auth: AuthConfig = AuthConfig()
    limits: LimitsConfig = LimitsConfig()
    ip_allowlist: IpAllowlistConfig = IpAllowlistConfig()
    rate_limit: RateLimitConfig = RateLimitConfig()
    dedupe: DedupeConfig = DedupeConfig()
    alerts: AlertsConfig = AlertsConfig()
    logging: LoggingConfig = LoggingConfig()
    order_log: OrderLogConfig = OrderLogConfig()
    journal: JournalConfig = JournalConfig()
    routing: RoutingConfig = RoutingConfig()
    metrics: MetricsConfig = MetricsConfig()
    notify: NotifyConfig = NotifyConfig()
    followup: FollowupConfig = FollowupConfig()
    sessions: SessionsConfig = SessionsConfig()
    risk: RiskConfig = RiskConfig()
    accounts: Mapping[str, Mapping[str, Any]] = attrs.field(factory=dict)
    strategies: Mapping[str, StrategyConfig] = attrs.field(factory=dict)
    """`[strategies.NAME]` (`tvbridge/strategies.py`); the global secret's alerts run as `default`."""

    def data_path(self, name: str) -> Path:
        """`name` resolved against the data directory (absolute paths stay as they are)."""
        return self.server.data_dir / Path(name).expanduser()

    def broker_of(self, account: str) -> str:
        """The entry point name an account uses: its `broker` key, or the account's own name."""
        return str(self.accounts.get(account, {}).get("broker", account))

    @property
    def used_accounts(self) -> tuple[str, ...]:
        """Every account an alert can go to: `routing.accounts`, then the strategies' own ones."""
        extra = [a for s in self.strategies.values() for a in s.accounts]
        return tuple(dict.fromkeys([*self.routing.accounts, *extra]))

    def accounts_of(self, strategy: str) -> tuple[str, ...]:
        """The accounts a strategy's alerts go to: its own `accounts`, else `routing.accounts`."""
        own = self.strategies.get(strategy)
        return own.accounts if own is not None and own.accounts else self.routing.accounts

    def when_closed(self, account: str) -> str:
        """The account's `when_closed`, else `[sessions] when_closed`."""
        return str(self.accounts.get(account, {}).get("when_closed", self.sessions.when_closed))

    def quantity_unit(self, account: str) -> QuantityUnit:
        """What the account's alert quantities count when a leg does not say: `units` (the default: what the
        guide sends and dhanhq takes) or `lots` (Dhan's own TradingView panel). See `tvbridge/lots.py`."""
        return QuantityUnit(self.accounts.get(account, {}).get("quantity_unit", QuantityUnit.UNITS))

    def broker_timeout_of(self, account: str) -> float:
        """The account's `broker_timeout_s` (default 2.5); `ConfigError` unless it is a number > 0."""
        value = self.accounts.get(account, {}).get("broker_timeout_s", DEFAULT_BROKER_TIMEOUT_S)
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= 3600:
            raise ConfigError(
                f"accounts.{account}.broker_timeout_s: must be a number of seconds, > 0 and <= 3600, got {value!r}"
            )
        return float(value)

    def quantity_multiplier(self, account: str) -> Decimal:
        """The account's `quantity_multiplier` (default 1): scales every alert quantity and target position on it
        before rounding down to whole lots (`tvbridge/sizing.py`); `ConfigError` unless a number > 0."""
        value = self.accounts.get(account, {}).get("quantity_multiplier", 1)
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= MAX_QUANTITY_MULTIPLIER:
            raise ConfigError(
                f"accounts.{account}.quantity_multiplier: must be a number > 0 and <= {MAX_QUANTITY_MULTIPLIER},"
                f" got {value!r}"
            )
        return Decimal(str(value))  # str(): a TOML 1.5 is Decimal("1.5"), not its binary expansion

    def risk_of(self, account: str, converter: cattrs.Converter) -> RiskConfig:
        """`[risk]` with the account's own risk keys laid over it; `ConfigError` names a bad key."""
        table = self.accounts.get(account, {})
        own = {k: v for k, v in table.items() if k in attrs.fields_dict(RiskConfig)}
        if not own:
            return self.risk
        merged = {**converter.unstructure(self.risk), **own}
        try:
            return converter.structure({k: v for k, v in merged.items() if v is not None}, RiskConfig)
        except cattrs.BaseValidationError as e:
            raise ConfigError("; ".join(validation_messages(e, root=f"accounts.{account}"))) from None
        except (ValueError, TypeError) as e:
            raise ConfigError(f"accounts.{account}: {e}") from None

    @property
    def live_accounts(self) -> list[str]:
        return [name for name in self.used_accounts if _truthy(self.accounts.get(name, {}).get("live", False))]


def _truthy(value: object) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in {"1", "true", "yes", "on"}
    return bool(value)


def _parse_env_value(raw: str) -> object:
    """`"30"` -> 30, `"false"` -> False, `'["a"]'` -> ["a"]; anything that is not a TOML value stays a string."""
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw


def _set_path(tree: dict[str, Any], path: list[str], value: object) -> None:
    for part in path[:-1]:
        node = tree.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"{'.'.join(path)}: cannot set a key under {part}, which is not a table")
        tree = node
    tree[path[-1]] = value


def _environment_overrides(env: Mapping[str, str]) -> Iterator[tuple[list[str], object, str]]:
    """(key path, value, variable name) for every variable that sets a config key."""
    guide: dict[str, list[str]] = {
        "WEBHOOK_SECRET": ["auth", "secret"],
        "WEBHOOK_HOST": ["server", "host"],
        "WEBHOOK_PORT": ["server", "port"],
        "DHAN_CLIENT_ID": ["accounts", "dhan", "client_id"],
        "DHAN_ACCESS_TOKEN": ["accounts", "dhan", "access_token"],
        "DHAN_PIN": ["accounts", "dhan", "pin"],
        "DHAN_TOTP_SECRET": ["accounts", "dhan", "totp_secret"],
    }
    for name, path in guide.items():
        if env.get(name):
            # secrets and ids stay strings even when they look like numbers
            value: object = env[name] if path[-1] != "port" else _parse_env_value(env[name])
            yield path, value, name
    if env.get("DATABASE_URL") and not env.get("TVBRIDGE_JOURNAL__URL"):  # the platforms' name for it
        yield ["journal", "url"], env["DATABASE_URL"], "DATABASE_URL"
    if "ENABLE_DHAN" in env:
        yield ["accounts", "dhan", "live"], _truthy(env["ENABLE_DHAN"]), "ENABLE_DHAN"
    for name, raw in env.items():
        if name.startswith("TVBRIDGE_") and "__" in name:
            parts = [p.lower() for p in name.removeprefix("TVBRIDGE_").split("__")]
            if all(parts):
                value = _text_or_list(raw) if _keep_as_text(parts) else _parse_env_value(raw)
                yield parts, value, name


def _text_or_list(raw: str) -> object:
    """A secret or an id stays the text it is, unless it is a TOML array (`notify.urls = '["tgram://..."]'`):
    then the list, so a list-valued secret key is never taken as a string and split into its characters."""
    if raw.lstrip().startswith("["):
        parsed = _parse_env_value(raw)
        if isinstance(parsed, list):
            return parsed
    return raw


BOOLEAN_KEYS: Final = frozenset({"require_token"})
"""Keys that end like a secret's name (`..._token`) but hold a switch: read as true/false, shown unmasked."""


def _keep_as_text(path: list[str]) -> bool:
    """Secrets and ids stay strings even when they look like numbers (a Dhan client id is all digits)."""
    key = path[-1]
    if key in BOOLEAN_KEYS:
        return False
    return is_secret_key(key) or key.endswith("_id") or key in {"host", "broker", "symbol"}


def read_config_tree(path: Path | None, env: Mapping[str, str], cwd: Path) -> dict[str, Any]:
    """The merged raw TOML tree (file, then `.env`, then the environment), before validation."""
    tree: dict[str, Any] = {}
    if path is not None:
        try:
            tree = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {path}") from None
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{path}: not valid TOML: {e}") from None
    dotenv = cwd / ".env"
    merged_env: dict[str, str] = {}
    if dotenv.is_file():
        merged_env.update({k: v for k, v in dotenv_values(dotenv).items() if v is not None})
    merged_env.update(env)
    dhan_from_env = bool(merged_env.get("DHAN_CLIENT_ID"))
    for key_path, value, _name in _environment_overrides(merged_env):
        _set_path(tree, key_path, value)
    accounts = tree.get("accounts")
    if dhan_from_env and isinstance(accounts, dict) and isinstance(accounts.get("dhan"), dict):
        accounts["dhan"].setdefault("broker", "dhan")
        routing = tree.setdefault("routing", {})
        if isinstance(routing, dict) and not routing.get("accounts"):
            routing["accounts"] = ["dhan"]
    return tree


def _finish(config: Config) -> Config:
    """Fill in the defaults that depend on other keys, and check the cross-key rules."""
    accounts = {name: dict(table) for name, table in config.accounts.items()}
    routes = config.routing.accounts or ("paper",)
    strategy_accounts = [a for s in config.strategies.values() for a in s.accounts]
    if "paper" in (*routes, *strategy_accounts) and "paper" not in accounts:
        accounts["paper"] = {"broker": "paper"}
    missing = [name for name in routes if name not in accounts]
    if missing:
        raise ConfigError(f"routing.accounts: no [accounts.{missing[0]}] table for account {missing[0]!r}")
    for name, table in accounts.items():
        if not isinstance(table.get("broker", name), str):
            raise ConfigError(f"accounts.{name}.broker: must be a string (the broker plugin's name)")
    if config.auth.require_client_cert and not config.server.tls_cert:
        raise ConfigError(
            "auth.require_client_cert: needs server.tls_cert (tvbridge can only check a certificate"
            " on a TLS connection it terminates; behind a proxy, let the proxy check it)"
        )
    if config.server.tls_key and not config.server.tls_cert:
        raise ConfigError("server.tls_key: set server.tls_cert too")
    _check_strategies(config, accounts)
    return attrs.evolve(config, routing=RoutingConfig(accounts=tuple(routes)), accounts=accounts)


def _check_strategies(config: Config, accounts: Mapping[str, object]) -> None:
    """Names usable in files and URLs, a credential each, credentials unique, accounts that exist."""
    seen: dict[str, str] = {}
    if config.auth.secret:
        seen[config.auth.secret] = "auth.secret"
    if config.auth.path_token:
        seen[config.auth.path_token] = "auth.path_token"
    for name, strategy in config.strategies.items():
        where = f"strategies.{name}"
        if not STRATEGY_NAME.match(name) or name == DEFAULT_STRATEGY:
            raise ConfigError(
                f"{where}: a strategy name is 1-40 letters, digits, '_' or '-', and not {DEFAULT_STRATEGY!r}"
            )
        if not strategy.secret and not strategy.path_token:
            raise ConfigError(f"{where}: needs a secret or a path_token (that is how an alert picks its strategy)")
        for key, value in (("secret", strategy.secret), ("path_token", strategy.path_token)):
            if not value:
                continue
            if value in seen:  # which one is never said: the message must not help guess a secret
                raise ConfigError(f"{where}.{key}: is already used by another strategy or by [auth]; use its own")
            seen[value] = f"{where}.{key}"
        missing = [a for a in strategy.accounts if a not in accounts]
        if missing:
            raise ConfigError(f"{where}.accounts: no [accounts.{missing[0]}] table for account {missing[0]!r}")


def load_config(
    path: Path | None,
    converter: cattrs.Converter,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> Config:
    """The validated config; raises `ConfigError` with one line naming the first bad key."""
    tree = read_config_tree(path, os.environ if env is None else env, cwd or Path.cwd())
    try:
        config = converter.structure(tree, Config)
    except cattrs.BaseValidationError as e:
        raise ConfigError("; ".join(validation_messages(e, root="(top level)"))) from None
    except (ValueError, TypeError) as e:
        raise ConfigError(str(e)) from None
    config = _finish(config)
    for account in config.accounts:
        config.risk_of(account, converter)  # a bad per-account limit stops the start, like any bad key
        config.broker_timeout_of(account)
        config.quantity_multiplier(account)
        if config.when_closed(account) not in WHEN_CLOSED:
            raise ConfigError(f"accounts.{account}.when_closed: must be one of {', '.join(WHEN_CLOSED)}")
        unit = config.accounts[account].get("quantity_unit", QuantityUnit.UNITS)
        if not isinstance(unit, str) or unit not in QUANTITY_UNITS:
            raise ConfigError(
                f"accounts.{account}.quantity_unit: must be one of {', '.join(QUANTITY_UNITS)}, got {unit!r}"
            )
    _check_lease(config)
    return config


def _check_lease(config: Config) -> None:
    """Several instances: a send in flight must end before its alert can be taken over (a second sender), so
    the lease outlasts the slowest broker call (`PostgresStore.mark_sending` extends it before each send)."""
    if not config.journal.url:
        return
    slowest = max((config.broker_timeout_of(account) for account in config.accounts), default=0.0)
    if config.journal.leader_lease_s <= slowest:
        raise ConfigError(
            f"journal.leader_lease_s: must exceed the largest accounts.*.broker_timeout_s ({slowest:g} s), got"
            f" {config.journal.leader_lease_s:g}"
        )


def find_config_file(explicit: str | None, env: Mapping[str, str], cwd: Path) -> Path | None:
    """`--config`, else `TVBRIDGE_CONFIG`, else `./config.toml` if it exists, else none (defaults only)."""
    if explicit:
        return Path(explicit)
    if env.get("TVBRIDGE_CONFIG"):
        return Path(env["TVBRIDGE_CONFIG"])
    default = cwd / "config.toml"
    return default if default.is_file() else None


def mask(value: object) -> object:
    return "********" if value else ""


def effective_settings(config: Config, converter: cattrs.Converter) -> dict[str, Any]:
    """The config as plain data with every secret masked, for `tvbridge check-config`."""
    tree: dict[str, Any] = converter.unstructure(config)

    def scrub(node: object) -> object:
        if isinstance(node, dict):
            return {k: mask(v) if is_secret_key(k) and not isinstance(v, bool) else scrub(v) for k, v in node.items()}
        if isinstance(node, list | tuple):
            return [scrub(v) for v in node]
        return node

    scrubbed = scrub(tree)
    assert isinstance(scrubbed, dict)  # noqa: S101 - scrub keeps a dict a dict
    return scrubbed
