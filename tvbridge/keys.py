"""Every AppKey and RequestKey: the typed state of the application and of one request, in one place."""

from __future__ import annotations

from typing import TYPE_CHECKING

import cattrs
from aiohttp import web

if TYPE_CHECKING:  # the keys name these types as strings: importing them at runtime would be circular
    from collections.abc import Callable, Mapping  # noqa: F401
    from datetime import datetime  # noqa: F401
    from typing import Any  # noqa: F401

    from tvbridge.accessline import Access  # noqa: F401
    from tvbridge.alertqueue import Scheduler  # noqa: F401
    from tvbridge.alerts.plan import Checks  # noqa: F401
    from tvbridge.broker import Broker, JournalJoiner  # noqa: F401
    from tvbridge.config import Config  # noqa: F401
    from tvbridge.executor import Executor  # noqa: F401
    from tvbridge.fileid import FileIdentity, Unchanged  # noqa: F401
    from tvbridge.followup import FollowUp  # noqa: F401
    from tvbridge.lifecycle import ServiceState  # noqa: F401
    from tvbridge.metrics import Metrics  # noqa: F401
    from tvbridge.middlewares.dedupe import Deduper  # noqa: F401
    from tvbridge.middlewares.rate_limit import RateLimiter  # noqa: F401
    from tvbridge.notify import Notifier  # noqa: F401
    from tvbridge.orderlog import OrderLog  # noqa: F401
    from tvbridge.refusal_journal import RefusalJournal  # noqa: F401
    from tvbridge.refusals import RefusalLog  # noqa: F401
    from tvbridge.secretstore import Credentials  # noqa: F401
    from tvbridge.sessions import Calendar  # noqa: F401
    from tvbridge.squareoff import SquareOff  # noqa: F401
    from tvbridge.store import Store  # noqa: F401
    from tvbridge.strategies import StrategyBook  # noqa: F401

CONFIG = web.AppKey["Config"]("config")
CONVERTER = web.AppKey[cattrs.Converter]("converter")
CREDENTIALS = web.AppKey["Credentials"]("credentials")
JOURNAL = web.AppKey["Store"]("journal")
ORDER_LOG = web.AppKey["OrderLog"]("order_log")
BROKERS = web.AppKey["Mapping[str, Broker]"]("brokers")
PLUGIN_FILES = web.AppKey["tuple[FileIdentity, ...]"]("plugin_files")
"""The state files of accounts whose plugin declares `state_files` (`registry.brokers_ctx`): `/webhook` answers 503
once one is deleted or replaced, as for the journal (`handlers._check_records`)."""
JOINED = web.AppKey["Mapping[str, JournalJoiner]"]("joined")
"""Per account whose plugin joined the SQLite journal (`JournalJoiner.join_journal`, `registry.offer_journal`), the
plugin itself: the executor books its first legs in the alert's commit (`alerts/joined.py`)."""
RECORD_DIRS = web.AppKey["Unchanged"]("record_dirs")
"""The record files' directories as last found in order (`fileid.Unchanged`, used by `flow.check_records`)."""
EXECUTOR = web.AppKey["Executor"]("executor")
FOLLOWUP = web.AppKey["FollowUp"]("followup")
"""Order follow-up (`tvbridge/followup.py`): the executor hands it every finished alert's open orders."""
STATE = web.AppKey["ServiceState"]("state")
METRICS = web.AppKey["Metrics"]("metrics")
"""The app's own Prometheus registry and metrics (never the process-global default registry)."""
NOTIFIER = web.AppKey["Notifier"]("notifier")
NOW = web.AppKey["Callable[[], datetime]"]("now")
"""The wall clock as an aware datetime: exchange sessions, the queue and the daily risk count ask it (never the
machine directly), so tests stand at any moment of the exchange week. `CLOCK` below is the guards' monotonic one."""
CALENDAR = web.AppKey["Calendar"]("calendar")
STRATEGY_BOOK = web.AppKey["StrategyBook"]("strategy_book")
"""Each strategy's own position, from the journal's fills (`tvbridge/strategies.py`)."""
SQUARE_OFF = web.AppKey["SquareOff"]("square_off")
"""The strategies' daily square-off (`tvbridge/squareoff.py`)."""
SCHEDULER = web.AppKey["Scheduler"]("scheduler")
PLAN_CHECKS = web.AppKey["Checks"]("plan_checks")
"""The planner's per-alert checks (`alerts/plan.Checks`: risk limits, reference prices, capabilities), built once at
start from the config and the brokers, which do not change while the server runs."""
REFUSAL_JOURNAL = web.AppKey["RefusalJournal"]("refusal_journal")
"""Webhook requests refused before anything ran (`tvbridge/refusal_journal.py`): what the status page lists with the
accepted alerts."""

ALERT_ID = web.RequestKey[str]("alert_id")
ARRIVED = web.RequestKey[float]("arrived")
"""`time.perf_counter()` when the request reached the first step: the arrival-to-broker histogram starts here."""
ACCESS = web.RequestKey["Access"]("access")
"""A webhook request's access facts (`tvbridge/accessline.py`): the executor hands its `alert.done` to it, and
`request_id` writes it with the answer's status instead of a second info line."""
RAW_ALERT = web.RequestKey["dict[str, Any]"]("raw_alert")
"""The body decoded as a JSON object, once, by whichever step needs it first (see `parsing.raw_alert`)."""
SOURCE_IP = web.RequestKey[str]("source_ip")
AUTHENTICATED = web.RequestKey[bool]("authenticated")
"""Set by `auth` once the secret or path token matched; `rate_limit` charges failures to the source address."""
STRATEGY = web.RequestKey[str]("strategy")
"""Set by `auth`: the strategy whose secret or path token the alert carried (`default`: the global one)."""
DEDUPE_KEY = web.RequestKey[str]("dedupe_key")
"""Set by `dedupe` on the first copy of an alert; the webhook handler journals it with the alert."""

CLOCK = web.AppKey["Callable[[], float]"]("clock")
"""Monotonic seconds for the guards' token buckets; `time.monotonic` unless a test moves time itself."""
RATE_LIMITER = web.AppKey["RateLimiter"]("rate_limiter")
DEDUPER = web.AppKey["Deduper"]("deduper")
REFUSALS = web.AppKey["RefusalLog"]("refusals")
"""Which refused requests are logged in full, and the count of the rest (`tvbridge.refusals`)."""
REFUSAL_LOGGED = web.RequestKey[bool]("refusal_logged")
"""Whether this refused request's log lines are written: decided at its first line, kept for the others."""
