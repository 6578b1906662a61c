"""Download a fresh Dhan instrument master without ever leaving a broken one in place.

Derivative contracts expire every week, so the master must be refreshed (`tvbridge dhan instruments refresh`,
typically daily before the open). The download goes to a temporary file next to the destination, is checked (Dhan's
header, every row parseable, at least `min_rows` tradable rows), and only then replaces the old file with
`os.replace`, which is atomic on one filesystem. Any failure leaves the old file untouched and raises.
A running broker picks the new file up on `reconfigure()` (SIGHUP).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
from pathlib import Path
from typing import Final

import aiohttp

from tvbridge_brokers.dhan.instruments import load_master

DOWNLOAD_TIMEOUT_S: Final = 120.0
CHUNK: Final = 1 << 16


class RefreshError(Exception):
    """The download or its validation failed; the old master is unchanged."""


async def refresh_instruments(url: str, dest: Path, *, min_rows: int = 1, timeout_s: float = DOWNLOAD_TIMEOUT_S) -> int:
    """Download the master at `url` into `dest` atomically; return its number of tradable rows.

    Raises `RefreshError` (with the reason) when the download fails or the file is not a Dhan master."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    tmp = Path(name)
    try:
        with os.fdopen(fd, "wb") as out:
            try:
                timeout = aiohttp.ClientTimeout(total=timeout_s)
                async with aiohttp.ClientSession(timeout=timeout) as session, session.get(url) as response:
                    if response.status != 200:
                        raise RefreshError(f"download of {url} failed: HTTP {response.status}")
                    async for chunk in response.content.iter_chunked(CHUNK):
                        out.write(chunk)
            except (aiohttp.ClientError, TimeoutError) as e:
                raise RefreshError(f"download of {url} failed: {type(e).__name__} {e}") from e
            out.flush()
            os.fsync(out.fileno())
        try:
            master = await asyncio.to_thread(load_master, tmp, cache=False)
        except (ValueError, OSError, UnicodeDecodeError) as e:
            raise RefreshError(f"{url} is not a usable Dhan instrument master: {e}") from e
        rows = len(master)
        _check_rows(url, rows, min_rows)
        await asyncio.to_thread(_install, tmp, dest)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)  # noqa: PTH108 - one unlink of a file we created, on the failure path
        raise
    return rows


def _check_rows(url: str, rows: int, min_rows: int) -> None:
    if rows < min_rows:
        raise RefreshError(f"{url} has {rows} tradable rows, fewer than the {min_rows} expected")


def _install(tmp: Path, dest: Path) -> None:
    tmp.chmod(0o644)
    tmp.replace(dest)  # atomic on one filesystem: readers see the old file or the new one, never half
