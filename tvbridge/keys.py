"""Every AppKey and RequestKey: the typed state of the application and of one request, in one place."""

from __future__ import annotations

from typing import TYPE_CHECKING

import cattrs
from aiohttp import web

if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any

    from tvbridge.broker import Broker
    from tvbridge.config import Config
    from tvbridge.journal import Journal
    from tvbridge.lifecycle import ServiceState
    from tvbridge.orderlog import OrderLog
    from tvbridge.executor import Executor
    from tvbridge.secretstore import Credentials

CONFIG = web.AppKey["Config"]("config")
CONVERTER = web.AppKey[cattrs.Converter]("converter")
CREDENTIALS = web.AppKey["Credentials"]("credentials")
JOURNAL = web.AppKey["Journal"]("journal")
ORDER_LOG = web.AppKey["OrderLog"]("order_log")
BROKERS = web.AppKey["Mapping[str, Broker]"]("brokers")
EXECUTOR = web.AppKey["Executor"]("executor")
STATE = web.AppKey["ServiceState"]("state")

ALERT_ID = web.RequestKey[str]("alert_id")
RAW_ALERT = web.RequestKey["dict[str, Any]"]("raw_alert")
"""The body decoded as a JSON object, once, by whichever step needs it first (see `parsing.raw_alert`)."""
SOURCE_IP = web.RequestKey[str]("source_ip")
