"""Download a fresh Dhan instrument master without ever leaving a broken one in place.

Derivative contracts expire every week, so the master must be refreshed each trading day: the server does it
itself (`master_refresh.py`, at `instruments_refresh_at`), and `tvbridge dhan instruments refresh` does it by hand.
The download is streamed to a temporary file next to the destination (aiohttp reads, aiofiles writes in a worker
thread: the event loop answering TradingView never waits on the disk), then checked: Dhan's header, every row
parseable, at least `min_rows` tradable rows, not far fewer rows than the file it replaces, and contracts that
have not expired yet. Only then it replaces the old file with `os.replace`, which is atomic on one filesystem.
Any failure leaves the old file untouched and raises `RefreshError`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Final

import aiofiles
import aiohttp

from tvbridge_brokers.dhan.instruments import MasterFormatError, load_master

if TYPE_CHECKING:
    from datetime import date

    from tvbridge_brokers.dhan.instruments import InstrumentMaster

DOWNLOAD_TIMEOUT_S: Final = 120.0
CHUNK: Final = 1 << 16
MIN_ROW_RATIO: Final = 0.8
"""A new master with fewer than 80% of the previous one's rows is taken for a cut-short or partial file."""


class RefreshError(Exception):
    """The download or its validation failed; the old master is unchanged."""


async def refresh_instruments(url: str, dest: Path, *, min_rows: int = 1, timeout_s: float = DOWNLOAD_TIMEOUT_S) -> int:
    """Download the master at `url` into `dest` atomically; return its number of tradable rows.

    Raises `RefreshError` (with the reason) when the download fails or the file is not a Dhan master."""
    master = await download_master(url, dest, min_rows=min_rows, timeout_s=timeout_s)
    return len(master)


async def download_master(
    url: str,
    dest: Path,
    *,
    previous: InstrumentMaster | None = None,
    today: date | None = None,
    min_rows: int = 1,
    timeout_s: float = DOWNLOAD_TIMEOUT_S,
) -> InstrumentMaster:
    """Download, check and install the master at `dest`; return it indexed (built off the event loop).

    `previous` (the master in use) sets the row floor; with `today`, the new file must list futures or options
    expiring today or later when the previous one did."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        await _download(url, tmp, timeout_s)
        try:
            master = await asyncio.to_thread(load_master, tmp, cache=False)
        except (MasterFormatError, ValueError, OSError, UnicodeDecodeError) as e:
            raise RefreshError(f"{url} is not a usable Dhan instrument master: {e}") from e
        _check(url, master, previous=previous, today=today, min_rows=min_rows)
        await asyncio.to_thread(_install, tmp, dest)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)  # noqa: PTH108 - one unlink of a file we created, on the failure path
        raise
    master.source = str(dest)
    return master


async def _download(url: str, tmp: Path, timeout_s: float) -> None:
    try:
        timeout = aiohttp.ClientTimeout(total=timeout_s)
        async with (
            aiohttp.ClientSession(timeout=timeout) as session,
            session.get(url) as response,
            aiofiles.open(tmp, "wb") as out,
        ):
            if response.status != 200:
                raise RefreshError(f"download of {url} failed: HTTP {response.status}")
            async for chunk in response.content.iter_chunked(CHUNK):
                await out.write(chunk)
            await out.flush()
            await asyncio.to_thread(os.fsync, out.fileno())
    except (aiohttp.ClientError, TimeoutError) as e:
        raise RefreshError(f"download of {url} failed: {type(e).__name__} {e}") from e


def _check(
    url: str, master: InstrumentMaster, *, previous: InstrumentMaster | None, today: date | None, min_rows: int
) -> None:
    rows = len(master)
    if previous is not None:
        min_rows = max(min_rows, int(len(previous) * MIN_ROW_RATIO))
    if rows < min_rows:
        raise RefreshError(f"{url} has {rows} tradable rows, fewer than the {min_rows} expected")
    if (
        today is not None
        and previous is not None
        and previous.derivatives_from(today)
        and not (master.derivatives_from(today))
    ):
        raise RefreshError(f"{url} lists no futures or options expiring on or after {today}: an outdated file")


def _install(tmp: Path, dest: Path) -> None:
    tmp.chmod(0o644)
    tmp.replace(dest)  # atomic on one filesystem: readers see the old file or the new one, never half
