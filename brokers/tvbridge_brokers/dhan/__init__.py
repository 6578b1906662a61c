"""The `dhan` broker plugin: TradingView legs as real orders on Dhan through the official dhanhq client.

Registered under the `tvbridge.brokers` entry point group as `dhan`. The public surface is `DhanBroker` (the
plugin class), `refresh_instruments` (for `tvbridge dhan instruments refresh`) and the defaults the CLI needs.
See `docs/dhan.md` for the behaviour a trader relies on.
"""

from tvbridge_brokers.dhan.broker import DhanBroker
from tvbridge_brokers.dhan.refresh import RefreshError, refresh_instruments
from tvbridge_brokers.dhan.settings import DEFAULT_INSTRUMENTS_URL, DhanSettings, default_instruments_path

__all__ = [
    "DEFAULT_INSTRUMENTS_URL",
    "DhanBroker",
    "DhanSettings",
    "RefreshError",
    "default_instruments_path",
    "refresh_instruments",
]
