"""The server's own daily refresh of the Dhan instrument master.

Dhan lists the day's new contracts (weekly options, the next future) in its master every morning; a server that
read yesterday's file rejects an alert for a contract listed today. So a live account refreshes the master itself
on every trading day (NSE's calendar) at `instruments_refresh_at` (exchange time, default 08:30, before the
09:00 pre-open), and at start when the file is older than the last such moment. The download and its checks are
`refresh.download_master` (streamed, checked, swapped atomically, indexed in a worker thread), so a request is
never blocked and a bad download never replaces a good file. A failed refresh keeps the old master, logs
`dhan.instruments.refresh_failed`, notifies once for that day's refresh, and is tried again every
`RETRY_EVERY` until it works.

Several instances on one PostgreSQL store (issue 20): the leader refreshes on schedule and publishes when its
master was written (`SHARED_NAME`, through `BrokerContext.cluster`); a follower downloads the same file into
its own data directory when the leader's is newer than its own (`follows`), and notifies its own failure
(once per scheduled refresh, as the leader does: only that instance trades on the old file). The file itself
does not go through the database: it is tens of MB a day per account, which every standby and backup would
copy, when Dhan's own URL serves it to each machine.
"""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta
from typing import TYPE_CHECKING, Final

import structlog

from tvbridge.sessions import EXCHANGE_TZ, Calendar
from tvbridge_brokers.dhan.refresh import RefreshError, download_master

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from tvbridge_brokers.dhan.instruments import InstrumentMaster

log = structlog.get_logger()

RETRY_EVERY: Final = timedelta(minutes=10)
"""A failed download (tens of MB) is not retried every minute."""
LOOK_BACK_DAYS: Final = 14
SHARED_NAME: Final = "instruments"
"""What the leader publishes: `{"refreshed_at": ISO-8601, "rows": N}` (not a secret)."""
CALENDAR_EXCHANGE: Final = "NSE"


def last_scheduled(now: datetime, at: time, calendar: Calendar) -> datetime | None:
    """The latest trading day's refresh moment (`at`, exchange time) at or before `now`."""
    local = now.astimezone(EXCHANGE_TZ)
    for back in range(LOOK_BACK_DAYS):
        day = local.date() - timedelta(days=back)
        moment = datetime.combine(day, at, tzinfo=EXCHANGE_TZ)
        if moment <= local and calendar.closed_reason(CALENDAR_EXCHANGE, day) is None:
            return moment
    return None


class MasterRefresher:
    """When the master of one account is due, and the state of its last refresh (for readiness)."""

    def __init__(
        self,
        *,
        account: str,
        url: str,
        at: time,
        notify: Callable[[str, str], None],
        calendar: Calendar | None = None,
    ) -> None:
        self._account = account
        self.url = url
        self.at = at
        self._notify = notify
        self._calendar = calendar or Calendar()
        self.refreshed_at: datetime | None = None
        """When the master in use was written (its file's mtime at load, the clock at a refresh)."""
        self.last_error = ""
        self.followed: datetime | None = None
        """The leader's publication this (follower) instance last downloaded for."""
        self._retry_at: datetime | None = None
        self._notified_for: datetime | None = None
        self._log = log.bind(broker="dhan", account=account)

    def loaded(self, path: Path) -> None:
        """The master in use now comes from `path` as it is on disk (start, SIGHUP)."""
        self.refreshed_at = datetime.fromtimestamp(path.stat().st_mtime, UTC)

    def due(self, now: datetime) -> datetime | None:
        """The scheduled refresh the master in use misses, or None when it is fresh enough."""
        scheduled = last_scheduled(now, self.at, self._calendar)
        if scheduled is None or (self.refreshed_at is not None and self.refreshed_at >= scheduled):
            return None
        if self._retry_at is not None and now < self._retry_at:
            return None
        return scheduled

    def follows(self, published: datetime, now: datetime) -> bool:
        """A follower's question: is the leader's master (written at `published`) newer than the one in use and
        not one already followed (the two machines' clocks may differ), and is no failed download's retry ahead?"""
        if published == self.followed or (self.refreshed_at is not None and self.refreshed_at >= published):
            return False
        return self._retry_at is None or now >= self._retry_at

    def fresh_today(self, now: datetime) -> bool:
        """Readiness: the master in use was written today (exchange date) or after the last scheduled refresh."""
        if self.refreshed_at is None:
            return False
        scheduled = last_scheduled(now, self.at, self._calendar)
        today = now.astimezone(EXCHANGE_TZ).date()
        return self.refreshed_at.astimezone(EXCHANGE_TZ).date() == today or (
            scheduled is not None and self.refreshed_at >= scheduled
        )

    async def refresh(self, now: datetime, dest: Path, previous: InstrumentMaster | None) -> InstrumentMaster | None:
        """Download and install the master; None (old file kept, logged, notified once per scheduled refresh:
        a follower's too, its stale file is its own) when it fails."""
        scheduled = self.due(now) or last_scheduled(now, self.at, self._calendar) or now  # notified once for it
        self._log.info("dhan.instruments.refreshing", url=self.url, path=str(dest))
        try:
            master = await download_master(self.url, dest, previous=previous, today=now.astimezone(EXCHANGE_TZ).date())
        except RefreshError as e:
            self.last_error = str(e)
            self._retry_at = now + RETRY_EVERY
            self._log.error("dhan.instruments.refresh_failed", error=str(e), path=str(dest), kept="the old file")
            if self._notified_for != scheduled:
                self._notified_for = scheduled
                self._notify(
                    "instruments_refresh_failed",
                    f"Dhan account {self._account}: the daily instrument master refresh failed ({e}); the old file "
                    f"is kept, so contracts listed today are unknown. tvbridge tries again every "
                    f"{int(RETRY_EVERY.total_seconds() // 60)} minutes; by hand: `tvbridge dhan instruments refresh "
                    f"--account {self._account}`.",
                )
            return None
        self.refreshed_at = now
        self.last_error = ""
        self._retry_at = None
        self._log.info("dhan.instruments.refreshed", rows=len(master), path=str(dest))
        return master
