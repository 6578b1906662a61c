"""Which event loop `tvbridge serve` runs on (`server.event_loop`).

uvloop (libuv under asyncio's interface) when it is installed, the standard library's loop otherwise: the
server's CPU per alert is lower on uvloop (bench/README.md, issue 22: measured in alternated runs), and nothing
in tvbridge depends on which loop runs it. `asyncio` forces the standard loop (to compare, or to rule uvloop out
when chasing a problem); `uvloop` makes a missing uvloop a start-up error instead of a silent fallback.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from tvbridge.errors import ConfigError

if TYPE_CHECKING:
    import asyncio
    from collections.abc import Callable


def loop_factory(choice: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The factory for `asyncio.Runner(loop_factory=)`; None: the standard library's loop."""
    if choice == "asyncio":
        return None
    try:
        uvloop = importlib.import_module("uvloop")
    except ImportError:
        if choice == "uvloop":
            raise ConfigError(
                'server.event_loop = "uvloop" but uvloop is not installed (pip install uvloop, or "auto")'
            ) from None
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def loop_name(loop: asyncio.AbstractEventLoop) -> str:
    """`uvloop` or `asyncio`, for the `server.started` line."""
    return "uvloop" if type(loop).__module__.startswith("uvloop") else "asyncio"
