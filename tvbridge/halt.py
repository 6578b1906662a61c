"""The kill switch: one file in the data directory that says trading is halted.

Why a file: the server and the `tvbridge halt` command are separate processes, and an operator in a hurry may not
have either at hand. A file is written atomically by both (`POST /admin/halt`, `tvbridge halt`), survives a restart,
and can even be made by hand (`touch <data_dir>/HALTED`). The server looks at it on every webhook and before
every order it sends (one `stat()`, microseconds), so a CLI halt takes effect on the next alert, with no signal
and no restart. Anything unreadable in the file still means halted: when in doubt, trade nothing.

Resume deletes the file. Queued alerts stay queued while halted and are sent at their next window after a resume
(`tvbridge queue cancel` first if they should not be).
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Final

import attrs

if TYPE_CHECKING:
    from pathlib import Path

HALT_FILE: Final = "HALTED"


@attrs.frozen(kw_only=True)
class Halt:
    reason: str
    since: str
    by: str


def halt_path(data_dir: Path) -> Path:
    return data_dir / HALT_FILE


def read_halt(path: Path) -> Halt | None:
    """The halt in force, or None. A file that exists but cannot be read or parsed is still a halt."""
    try:
        path.stat()  # the usual answer, no file, in one system call: this runs on every webhook and order
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError as e:
        return Halt(reason=f"halt file unreadable ({e.strerror})", since="", by="")
    try:
        raw = json.loads(text)
        return Halt(reason=str(raw.get("reason", "")), since=str(raw.get("since", "")), by=str(raw.get("by", "")))
    except (ValueError, AttributeError):
        return Halt(reason=text.strip()[:200] or "halted by hand", since="", by="")


def set_halt(path: Path, *, reason: str, by: str) -> Halt:
    """Write the halt file atomically (temp file, fsync, rename); return what was written."""
    return write_halt(path, Halt(reason=reason or "halted", since=datetime.now(UTC).isoformat(), by=by))


def write_halt(path: Path, halt: Halt) -> Halt:
    """Write `halt` as the halt file atomically (also a halt set on another instance: `tvbridge/halt_sync.py`)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with tmp.open("w", encoding="utf-8") as f:
        json.dump(attrs.asdict(halt), f)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)
    return halt


def clear_halt(path: Path) -> bool:
    """Remove the halt file; True if there was one."""
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    return True
