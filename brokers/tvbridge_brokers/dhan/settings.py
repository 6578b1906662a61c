"""The `[accounts.NAME]` table of a dhan account, validated into one frozen object.

The core hands us the account's TOML table minus `broker` (with the guide's `DHAN_*`/`ENABLE_DHAN` variables
already merged in). A typo must stop the start, so unknown keys and wrong types raise `ValueError` naming the
key. The access token is kept out of `repr` so it never reaches a log line or a traceback.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import math
from datetime import time
from pathlib import Path
from typing import TYPE_CHECKING, Final
from urllib.parse import urlsplit

import attrs

if TYPE_CHECKING:
    from collections.abc import Mapping

DEFAULT_BASE_URL: Final = "https://api.dhan.co/v2"
DEFAULT_INSTRUMENTS_URL: Final = "https://images.dhan.co/api-data/api-scrip-master.csv"
DEFAULT_AUTH_URL: Final = "https://auth.dhan.co"
"""Where Dhan generates a token from PIN + TOTP (dhanhq's `DhanLogin.AUTH_BASE_URL`)."""
DEFAULT_RENEW_BEFORE_S: Final = 3600.0
"""Renew the token when less than an hour remains: a day's first checks (every minute) have time to retry."""
MAX_RENEW_BEFORE_S: Final = 23 * 3600.0
DEFAULT_REFRESH_AT: Final = "08:30"
"""Exchange time of the daily instrument master refresh: after Dhan publishes the day's contracts, before 09:00."""
DEFAULT_TIMEOUT_S: Final = 2.0
"""TradingView gives up after 3 s; a Dhan call must leave time for the lookup and the answer."""
DEFAULT_MAX_ORDERS_PER_S: Final = 10.0
"""Dhan's published order rate limit."""
MAX_TIMEOUT_S: Final = 30.0
INSTRUMENTS_FILE: Final = "dhan-api-scrip-master.csv"

KEYS: Final = frozenset(
    {
        "client_id",
        "access_token",
        "live",
        "base_url",
        "instruments_path",
        "instruments_url",
        "instruments_refresh_at",
        "timeout_s",
        "max_orders_per_s",
        "auth_url",
        "pin",
        "totp_secret",
        "renew_before_s",
    }
)

_TRUE: Final = frozenset({"true", "1", "yes", "on"})
_FALSE: Final = frozenset({"false", "0", "no", "off", ""})


def default_instruments_path(data_dir: Path) -> Path:
    """Where `tvbridge dhan instruments refresh` writes the master and where an account reads it by default."""
    return data_dir / INSTRUMENTS_FILE


@attrs.frozen(kw_only=True)
class DhanSettings:
    client_id: str = ""
    access_token: str = attrs.field(default="", repr=False)
    live: bool = False
    base_url: str = DEFAULT_BASE_URL
    instruments_path: Path | None = None
    """None: `default_instruments_path(data_dir)`, falling back to the shipped sample in dry-run only."""
    instruments_url: str = DEFAULT_INSTRUMENTS_URL
    timeout_s: float = DEFAULT_TIMEOUT_S
    max_orders_per_s: float = DEFAULT_MAX_ORDERS_PER_S
    auth_url: str = DEFAULT_AUTH_URL
    pin: str = attrs.field(default="", repr=False)
    totp_secret: str = attrs.field(default="", repr=False)
    renew_before_s: float = DEFAULT_RENEW_BEFORE_S
    instruments_refresh_at: time = time(8, 30)
    """Exchange time (IST) of the daily refresh of the instrument master, on trading days."""

    @property
    def can_generate(self) -> bool:
        """PIN and TOTP key are both set: an expired or missing token can be generated without a person."""
        return bool(self.pin and self.totp_secret)


def _str(key: str, value: object) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{key}: expected a string, got {type(value).__name__}")
    return value.strip()


def _bool(key: str, value: object) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise ValueError(f"{key}: expected true or false")


def _positive(key: str, value: object, limit: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError(f"{key}: expected a number")
    try:
        number = float(value)
    except ValueError:
        raise ValueError(f"{key}: expected a number, got {value!r}") from None
    if not math.isfinite(number) or number <= 0 or number > limit:
        raise ValueError(f"{key}: must be > 0 and <= {limit:g}, got {value!r}")
    return number


def _url(key: str, value: object) -> str:
    url = _str(key, value).rstrip("/")
    parts = urlsplit(url)
    if parts.scheme not in {"http", "https"} or not parts.hostname:
        raise ValueError(f"{key}: expected an http(s) URL, got {url!r}")
    if parts.scheme == "http" and not _is_loopback(parts.hostname):
        # the access token travels in a header: plain http is only acceptable to a local fake or proxy
        raise ValueError(f"{key}: plain http is only allowed to a loopback host (the token is sent in a header)")
    return url


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def parse_settings(raw: Mapping[str, object]) -> DhanSettings:
    """Validate the account table. Raises `ValueError` naming the first bad or unknown key."""
    unknown = sorted(set(raw) - KEYS)
    if unknown:
        raise ValueError(f"unknown key(s) for a dhan account: {', '.join(unknown)} (known: {', '.join(sorted(KEYS))})")
    settings = DhanSettings(**_values(raw))  # type: ignore[arg-type]  # keys and types checked in _values
    if bool(settings.pin) != bool(settings.totp_secret):
        missing = "totp_secret" if settings.pin else "pin"
        raise ValueError(f"{missing}: pin and totp_secret go together (token generation needs both)")
    if settings.live:
        required = ("client_id",) if settings.can_generate else ("client_id", "access_token")
        for key in required:
            if not getattr(settings, key):
                hint = " or pin + totp_secret" if key == "access_token" else ""
                raise ValueError(f"{key}: required when live = true (set it or DHAN_{key.upper()}{hint})")
    return settings


def _values(raw: Mapping[str, object]) -> dict[str, object]:
    values: dict[str, object] = {}
    for key in ("client_id", "access_token", "pin"):
        if key in raw:
            values[key] = _str(key, raw[key])
    if "live" in raw:
        values["live"] = _bool("live", raw["live"])
    for key in ("base_url", "instruments_url", "auth_url"):
        if key in raw:
            values[key] = _url(key, raw[key])
    if "instruments_path" in raw:
        path = _str("instruments_path", raw["instruments_path"])
        values["instruments_path"] = Path(path).expanduser() if path else None
    if "timeout_s" in raw:
        values["timeout_s"] = _positive("timeout_s", raw["timeout_s"], MAX_TIMEOUT_S)
    if "max_orders_per_s" in raw:
        values["max_orders_per_s"] = _positive("max_orders_per_s", raw["max_orders_per_s"], 1000)
    return values | _upkeep_values(raw)


def _upkeep_values(raw: Mapping[str, object]) -> dict[str, object]:
    """The keys of the unattended day: token renewal and generation, the master's daily refresh."""
    values: dict[str, object] = {}
    if "totp_secret" in raw:
        values["totp_secret"] = _totp_secret(raw["totp_secret"])
    if "renew_before_s" in raw:
        values["renew_before_s"] = _positive("renew_before_s", raw["renew_before_s"], MAX_RENEW_BEFORE_S)
    if "instruments_refresh_at" in raw:
        values["instruments_refresh_at"] = _hhmm("instruments_refresh_at", raw["instruments_refresh_at"])
    return values


def _totp_secret(value: object) -> str:
    """The base32 key behind the authenticator app's QR code; checked here so a typo stops the start."""
    key = _str("totp_secret", value).replace(" ", "").upper()
    try:
        base64.b32decode(key + "=" * (-len(key) % 8), casefold=True)
    except (binascii.Error, ValueError):
        raise ValueError("totp_secret: not a base32 TOTP key (the value is not shown)") from None
    return key


def _hhmm(key: str, value: object) -> time:
    text = _str(key, value)
    try:
        parsed = time.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{key}: expected HH:MM (exchange time), got {text!r}") from None
    if len(text) != 5:
        raise ValueError(f"{key}: expected HH:MM (exchange time), got {text!r}")
    return parsed
