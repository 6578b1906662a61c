"""The kill switch across instances: on a PostgreSQL store, a halt on any instance halts them all.

Every reader of the switch stays as it is: the halt file in each instance's data directory (`tvbridge/halt.py`,
one `stat()` per webhook and order). This module keeps each instance's file and the store's one shared row in
step, every `SYNC_EVERY_S`:

- the file changed here since the last look (`POST /admin/halt` or `/admin/resume` on this instance, the
  status page, `tvbridge halt` on this machine, a `touch HALTED`): the change goes to the store;
- else the store's row changed (another instance did one of those): the file here is written or removed.

At start a halt on either side wins (when in doubt, trade nothing), before the first request. An instance
cut off from the database keeps its file as it is; its alerts are refused anyway (the journal is unwritable).
Between a halt on one instance and the others' files there are at most two rounds (0.4 s): an alert in that
window on another instance is still traded. On SQLite (one instance) nothing runs.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING, Final

import structlog

from tvbridge.errors import JournalError
from tvbridge.halt import clear_halt, halt_path, read_halt, write_halt

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

    from aiohttp import web

    from tvbridge.halt import Halt
    from tvbridge.store import Store

log = structlog.get_logger()

SYNC_EVERY_S: Final = 0.2


class HaltSync:
    """One instance's halt file and the store's shared halt, kept in step by `once()`."""

    def __init__(self, path: Path, store: Store) -> None:
        self._path = path
        self._store = store
        self._local: Halt | None = None
        self._version = -1
        """The shared row's version at the last look; -1 before the first."""

    async def once(self) -> None:
        """One round. `_local` becomes what this round read from the file or wrote to it, never a re-read after
        the database's awaits: a halt written meanwhile (`tvbridge halt` on this machine) differs from it, so the
        next round shares it instead of taking it for the file as already synced."""
        local = read_halt(self._path)
        version, shared = await self._store.shared_halt()
        if self._version < 0:  # the first look: a halt on either side is a halt on both
            if local is not None and shared is None:
                version, local = await self._share(local, version)
            elif shared is not None and local != shared:
                local = self._write_file(shared)
        elif local != self._local:  # changed here: tell the others
            version, local = await self._share(local, version)
        elif version != self._version:  # changed on another instance
            local = self._write_file(shared)
            log.warning("halt.synced", halted=shared is not None, reason=shared.reason if shared else None)
        self._local = local
        self._version = version

    async def _share(self, local: Halt | None, version: int) -> tuple[int, Halt | None]:
        """Share this file's state if the shared row is still at `version` (compare-and-set): when another
        instance changed it meanwhile, a halt on either side wins (when in doubt, trade nothing), and a resume
        here over a halt there is not applied (the file takes the other's halt)."""
        shared_version = await self._store.share_halt(local, expected=version)
        if shared_version is not None:
            log.warning("halt.shared", halted=local is not None, reason=local.reason if local else None)
            return shared_version, local
        version, shared = await self._store.shared_halt()
        if shared is None and local is not None:  # the other resumed: this halt still stands
            return await self._share(local, version)
        log.warning("halt.share_conflict", halted=shared is not None, reason=shared.reason if shared else None)
        return version, self._write_file(shared)

    def _write_file(self, shared: Halt | None) -> Halt | None:
        """This instance's file set to `shared`; returns what the file says now (written, so read back at once)."""
        if shared is None:
            clear_halt(self._path)
        else:
            write_halt(self._path, shared)
        return read_halt(self._path)

    async def loop(self) -> None:
        failing = False
        while True:
            await asyncio.sleep(SYNC_EVERY_S)
            try:
                await self.once()
                failing = False
            except JournalError:  # the database is away: the journal's own failures say so, once is enough here
                if not failing:
                    log.warning("halt.sync_failed")
                failing = True


async def halt_sync_ctx(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx (after the journal's): on a shared store, sync once before serving, then keep in step."""
    from tvbridge.keys import CONFIG, JOURNAL  # noqa: PLC0415 - keys imports the store's types

    store = app[JOURNAL]
    if not store.shared:
        yield
        return
    sync = HaltSync(halt_path(app[CONFIG].server.data_dir), store)
    await sync.once()
    task = asyncio.create_task(sync.loop(), name="halt-sync")
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
