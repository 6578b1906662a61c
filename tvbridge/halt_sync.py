"""The kill switches across instances: on a PostgreSQL store, a halt on any instance halts them all.

The switches are all trading's (`HALTED`) and each strategy's (`HALTED.<name>`, `tvbridge/strategies.py`); each
works the same way. Every reader of a switch stays as it is: its halt file in each instance's data directory
(`tvbridge/halt.py`, one `stat()` per webhook and order). This module keeps each instance's files and the store's
shared rows (one per switch) in step, every `SYNC_EVERY_S`, with one read of all rows per round:

- the file changed here since the last look (`POST /admin/halt` or `/admin/resume` on this instance, the
  status page, `tvbridge halt` on this machine, a `touch HALTED`): the change goes to the store;
- else the store's row changed (another instance did one of those): the file here is written or removed, and
  on a resume the closed-market queue is woken (`on_resume`), so the alerts it kept for the halt go out now.

At start a halt on either side wins (when in doubt, trade nothing), before the first request. An instance
cut off from the database keeps its file as it is; its alerts are refused anyway (the journal is unwritable).
Between a halt on one instance and the others' files there are at most two rounds (0.4 s): an alert in that
window on another instance is still traded. On SQLite (one instance) nothing runs.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import TYPE_CHECKING, Final

import attrs
import structlog

from tvbridge.errors import JournalError
from tvbridge.halt import Halt, clear_halt, halt_path, read_halt, write_halt
from tvbridge.strategies import strategy_halt_path

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Mapping

    from aiohttp import web

    from tvbridge.config import Config
    from tvbridge.store import Store

log = structlog.get_logger()

SYNC_EVERY_S: Final = 0.2


@attrs.define
class _Switch:
    """One kill switch: its file here and what this instance last knew of it."""

    name: str
    """'' for all trading (`HALTED`), else the strategy's (`HALTED.<name>`): its row in the store."""
    path: Path
    local: Halt | None = None
    version: int = -1
    """The shared row's version at the last look; -1 before the first."""


class HaltSync:
    """One instance's halt files (all trading's, each strategy's) and the store's shared switches, kept in step by
    `once()`: one read of every shared switch per round, each switch then on its own."""

    def __init__(self, paths: Mapping[str, Path], store: Store, on_resume: Callable[[], object] = lambda: None) -> None:
        self._switches = [_Switch(name, path) for name, path in paths.items()]
        self._store = store
        self._on_resume = on_resume

    async def once(self) -> None:
        """One round. A switch's `local` becomes what this round read from its file or wrote to it, never a
        re-read after the database's awaits: a halt written meanwhile (`tvbridge halt` on this machine) differs
        from it, so the next round shares it instead of taking it for the file as already synced."""
        files = [read_halt(switch.path) for switch in self._switches]
        rows = await self._store.shared_halts()
        for switch, local in zip(self._switches, files, strict=True):
            await self._step(switch, local, *rows.get(switch.name, (0, None)))

    async def _step(self, switch: _Switch, local: Halt | None, version: int, shared: Halt | None) -> None:
        """One switch's part of a round: its file read as `local`, its shared row at `version` says `shared`."""
        if switch.version < 0:  # the first look: a halt on either side is a halt on both
            if local is not None and shared is None:
                version, local = await self._share(switch, local, version)
            elif shared is not None and local != shared:
                local = self._write_file(switch, shared)
        elif local != switch.local:  # changed here: tell the others
            version, local = await self._share(switch, local, version)
        elif version != switch.version:  # changed on another instance
            if shared is None and read_halt(switch.path) != local:
                # halted here while the database was read: keep this halt (a halt wins); the next round shares
                # it over the other's resume, since the file differs from what this round took as synced
                return
            local = self._write_file(switch, shared)
            log.warning(
                "halt.synced",
                halted=shared is not None,
                reason=shared.reason if shared else None,
                halted_strategy=switch.name or None,
            )
            if shared is None:
                self._on_resume()
        switch.local = local
        switch.version = version

    async def _share(self, switch: _Switch, local: Halt | None, version: int) -> tuple[int, Halt | None]:
        """Share this file's state if the shared row is still at `version` (compare-and-set): when another
        instance changed it meanwhile, a halt on either side wins (when in doubt, trade nothing), and a resume
        here over a halt there is not applied (the file takes the other's halt)."""
        scope = switch.name or None
        shared_version = await self._store.share_halt(local, expected=version, switch=switch.name)
        if shared_version is not None:
            log.warning(
                "halt.shared", halted=local is not None, reason=local.reason if local else None, halted_strategy=scope
            )
            return shared_version, local
        version, shared = (await self._store.shared_halts()).get(switch.name, (0, None))
        if shared is None and local is not None:  # the other resumed: this halt still stands
            return await self._share(switch, local, version)
        log.warning(
            "halt.share_conflict",
            halted=shared is not None,
            reason=shared.reason if shared else None,
            halted_strategy=scope,
        )
        return version, self._write_file(switch, shared)

    @staticmethod
    def _write_file(switch: _Switch, shared: Halt | None) -> Halt | None:
        """The switch's file set to `shared`; returns what the file says now (written, so read back at once)."""
        if shared is None:
            clear_halt(switch.path)
        else:
            write_halt(switch.path, shared)
        return read_halt(switch.path)

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
            except Exception as e:  # noqa: BLE001 - a halt file this round could not write (disk full...): the next
                # round tries again; ending the loop would leave this instance trading while the others are halted
                log.error("halt.sync_failed", error=f"{type(e).__name__}: {e}")
                failing = True


def switches(config: Config) -> dict[str, Path]:
    """Every kill switch this instance keeps in step: all trading's, and each `[strategies.NAME]`'s."""
    data_dir = config.server.data_dir
    return {"": halt_path(data_dir)} | {name: strategy_halt_path(data_dir, name) for name in config.strategies}


async def halt_sync_ctx(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx (after the journal's): on a shared store, sync once before serving, then keep in step."""
    from tvbridge.keys import CONFIG, JOURNAL, SCHEDULER  # noqa: PLC0415 - keys imports the store's types

    store = app[JOURNAL]
    if not store.shared:
        yield
        return

    def wake_queue() -> None:  # the scheduler starts after this context; a resume before it has nothing to wake
        if (scheduler := app.get(SCHEDULER)) is not None:
            scheduler.wake.set()

    sync = HaltSync(switches(app[CONFIG]), store, on_resume=wake_queue)
    await sync.once()
    task = asyncio.create_task(sync.loop(), name="halt-sync")
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
