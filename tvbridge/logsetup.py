"""Logging, configured once by the CLI: structlog events rendered and written by tvbridge itself.

The log file always gets one JSON object per line (what a collector tails); stdout gets a human console format
on a terminal and JSON otherwise (`logging.format`). A structlog event never goes through the standard library's
logging: its last processor renders the line (JSON once, however many outputs take JSON), and `LineLogger`
writes it with one unbuffered write per output, so a line is in the file (and seen by `tail -f`) when the call
returns. The standard library's handler chain cost ~90-150 µs of CPU a line; `bench/log_cost.py` measures this.

Lines of libraries that use the standard library's `logging` (aiohttp, asyncio, dhanhq) reach the same outputs
through `ForeignRecordHandler`, the root logger's one handler (off the hot path). The log file follows
logrotate's move-and-create by itself (`LogFile`: a move is noticed within `MOVE_CHECK_S`) and at once on SIGHUP
(`reopen_log_files`). Keys that name secrets, and the configured secret values themselves wherever they appear,
are replaced as the last step before rendering.

Owns: the processor chain, the outputs and the root logger's handlers. Leaves to others: binding request keys
(`middlewares/request_id.py`), the SIGHUP handler (`cli.py`).
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import sys
import threading
import time
from typing import TYPE_CHECKING, Any, Final, TextIO

import structlog

from tvbridge.config import is_secret_key
from tvbridge.filemode import create_private

if TYPE_CHECKING:
    import io
    from collections.abc import Callable, Iterable, Sequence
    from pathlib import Path

    from structlog.typing import EventDict, Processor, WrappedLogger

REDACTED: Final = "[redacted]"
# how often, at most, a line first checks whether logrotate moved the file away (one stat(2)): a move is noticed
# before the first line written this long after the previous check, and SIGHUP reopens at once
MOVE_CHECK_S: Final = 0.1
_SCALARS: Final = frozenset({str, int, float, bool, type(None)})
_KNOWN_KEYS: Final = 4096  # keys a Redactor remembers; they come from the code, but also from broker payloads


class Redactor:
    """A structlog processor that removes secrets by key and by value.

    A key that names a secret (`tvbridge.config.is_secret_key`) gets `[redacted]` for its value, at any depth of
    dicts; a configured secret value is replaced inside every string, also in nested dicts and lists (tuples
    become lists). It runs on every line, so it is cheap when there is nothing to do: the keys known not to
    name a secret are remembered, and a string shorter than the shortest secret is not searched.
    """

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        # longest first: a secret that contains another is replaced whole, not around the shorter one
        self.secrets = sorted({s for s in secrets if s}, key=len, reverse=True)
        self._shortest = min(map(len, self.secrets), default=0)
        self._plain_keys: set[str] = set()  # keys that do not name a secret, up to _KNOWN_KEYS of them
        self._is_secret_key: Callable[[str], bool] = functools.lru_cache(maxsize=_KNOWN_KEYS)(is_secret_key)

    def __call__(self, _logger: WrappedLogger, _name: str, event_dict: EventDict) -> EventDict:
        values = event_dict.values()
        shortest = self._shortest
        # the common line (scalars, known keys) costs a look at the value types, one search per secret in the
        # strings long enough to hold one, joined, and a look at the keys; a line with nested values (`alert.done`
        # and its legs) is walked once without copying, and copied clean only when something must change
        dirty = False
        if shortest:
            long = [value for value in values if type(value) is str and len(value) >= shortest]
            dirty = bool(long) and self._any_secret_in("\0".join(long))
        if not dirty and not _SCALARS.issuperset(map(type, values)):
            dirty = any(self._dirty(value) for value in values if type(value) not in _SCALARS)
        if dirty:
            self._clean_values(event_dict)
        if not self._plain_keys.issuperset(event_dict):
            for key in self._secret_keys(event_dict):
                event_dict[key] = REDACTED
        return event_dict

    def _any_secret_in(self, text: str) -> bool:
        return any(map(text.__contains__, self.secrets))

    def _clean_values(self, event_dict: EventDict) -> None:
        changed: dict[str, Any] = {}
        for key, value in event_dict.items():
            if isinstance(value, str | dict | list | tuple):
                clean = self._clean("", value)
                if clean is not value:
                    changed[key] = clean
        event_dict.update(changed)

    def _secret_keys(self, event_dict: EventDict) -> set[str]:
        """The keys of this event that name a secret; the others are remembered as plain."""
        found = set()
        for key in event_dict.keys() - self._plain_keys:
            if self._is_secret_key(key):
                found.add(key)
            elif len(self._plain_keys) < _KNOWN_KEYS:
                self._plain_keys.add(key)
        return found

    def _dirty(self, value: Any) -> bool:
        """Whether `_clean` would change `value`: a secret in a string, a key naming a secret at any depth, or a
        tuple (it becomes a list)."""
        if isinstance(value, str):
            return bool(self._shortest) and len(value) >= self._shortest and self._any_secret_in(value)
        if isinstance(value, dict):
            plain = self._plain_keys
            return any(
                (isinstance(key, str) and key not in plain and self._is_secret_key(key)) or self._dirty(item)
                for key, item in value.items()
            )
        if isinstance(value, list):
            return any(map(self._dirty, value))
        return isinstance(value, tuple)

    def _clean_str(self, value: str) -> str:
        for secret in self.secrets:
            if secret in value:
                value = value.replace(secret, REDACTED)
        return value

    def _clean(self, key: str, value: Any) -> Any:
        if key and self._is_secret_key(key):
            return REDACTED
        if isinstance(value, str):
            return self._clean_str(value) if self._shortest and len(value) >= self._shortest else value
        if isinstance(value, dict):
            return {k: self._clean(k if isinstance(k, str) else "", v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self._clean("", v) for v in value]
        return value


def _json_fallback(value: object) -> object:
    """What JSON cannot hold is written as its `__structlog__()` or `repr()`, as structlog's JSONRenderer does."""
    structlog_repr = getattr(value, "__structlog__", None)
    return structlog_repr() if callable(structlog_repr) else repr(value)


def _make_encode() -> Callable[[object], str]:
    """`json.dumps(value, default=...)` with the encoder built once rather than once per line."""
    return json.JSONEncoder(default=_json_fallback).encode


def _repr(value: object) -> str:
    try:
        return repr(value)
    except Exception:  # noqa: BLE001 - a broken __repr__ must not cost the line
        return f"<{type(value).__name__} without a repr>"


class JsonLine:
    """The last processor for JSON: the event as one JSON object and a newline (the text `json.dumps` gives).

    A value that JSON refuses (a dict with tuple keys, a failing `__structlog__`) must not fail the code that
    logs: the line is then written with each value that is not a plain scalar as its `repr()`.
    """

    def __init__(self) -> None:
        self._encode = _make_encode()

    def __call__(self, _logger: WrappedLogger, _name: str, event_dict: EventDict) -> str:
        try:
            return self._encode(event_dict) + "\n"
        except Exception:  # noqa: BLE001 - see the class docstring
            safe = {str(k): v if type(v) in _SCALARS else _repr(v) for k, v in event_dict.items()}
            return self._encode(safe) + "\n"


class ConsoleAndJson:
    """The last processor when stdout is a terminal: the console text for stdout and, for the log file, the JSON
    line, each with its own exception rendering and redaction (they differ: text for humans, frames for JSON)."""

    def __init__(self, console: Sequence[Processor], json_line: Sequence[Processor] | None) -> None:
        self._console = console
        self._json = json_line

    def __call__(self, logger: WrappedLogger, name: str, event_dict: EventDict) -> dict[str, str | None]:
        line: Any = None
        if self._json is not None:
            line = dict(event_dict)  # each rendering takes `exc_info` out of its own copy
            for processor in self._json:
                line = processor(logger, name, line)
        text: Any = event_dict
        for processor in self._console:
            text = processor(logger, name, text)
        return {"line": line, "console": f"{text}\n"}


class LogFile:
    """One log file, appended to without a buffer: each line is one write(2), in the file when `write` returns.

    logrotate moves the file away and creates a new one: before a line, at most every `MOVE_CHECK_S`, the path is
    compared with the open file (device and inode) and reopened when they differ, so lines written before the
    check go to the moved file and none is lost or written twice. `reopen_if_moved` checks at once (SIGHUP).
    Not thread-safe by itself: `LineLogger` holds the lock.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file, self._identity = self._open()
        self._next_check = time.monotonic() + MOVE_CHECK_S

    def _open(self) -> tuple[io.FileIO, tuple[int, int]]:
        create_private(self.path)  # 0600 whatever the umask (tvbridge/filemode.py)
        file = self.path.open("ab", buffering=0)
        try:
            stat = os.fstat(file.fileno())
        except BaseException:
            file.close()
            raise
        return file, (stat.st_dev, stat.st_ino)

    def write(self, data: bytes) -> None:
        now = time.monotonic()
        if now >= self._next_check:
            self._next_check = now + MOVE_CHECK_S
            try:
                self.reopen_if_moved()
            except OSError as e:  # the new file cannot be opened: this line still goes to the old one
                _report(str(self.path), e)
        written = self._file.write(data)
        while written < len(data):  # a short write (a full disk, a signal): the rest, not a lost tail
            data = data[written:]
            written = self._file.write(data)

    def reopen_if_moved(self) -> bool:
        """Reopen if the path no longer names the open file (moved or deleted); True if it did."""
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            pass
        else:
            if (stat.st_dev, stat.st_ino) == self._identity:
                return False
        new, self._identity = self._open()  # an error keeps the old file open: its lines still go somewhere
        old, self._file = self._file, new
        old.close()
        return True

    def close(self) -> None:
        self._file.close()


class LineLogger:
    """structlog's logger: writes the line(s) the last processor rendered, once per output, as they come.

    The JSON line goes to the log file (if configured) and, when stdout takes JSON, to stdout; a console line
    (a terminal) goes to stdout only. Each output gets one write(2) per line: on a real stdout the JSON line
    goes straight to its file descriptor, bypassing the stream's buffer; an in-memory stream (tests) is written
    and flushed. One lock (brokers log from worker threads). A failed write is reported on stderr and the other
    output still gets the line: logging never raises into the code that logs. Once closed, it writes nothing.
    Every level method is the same: the level is in the line, and the bound logger did the filtering.
    """

    def __init__(self, file: LogFile | None, stream: TextIO) -> None:
        self.file = file
        self.stream = stream
        self._stream_fd = _file_descriptor(stream)
        self.lock = threading.RLock()  # reentrant: a warning raised while writing may log through here again
        self._closed = False

    def msg(self, line: str | None = None, console: str | None = None) -> None:
        """Write the JSON `line` to the file, and `console` (or else `line`) to stdout."""
        with self.lock:
            if self._closed:
                return
            data = line.encode() if line is not None else b""
            if data and self.file is not None:
                try:
                    self.file.write(data)
                except (OSError, ValueError) as e:
                    _report(str(self.file.path), e)
            try:
                if console is not None:
                    self.stream.write(console)
                    self.stream.flush()
                elif self._stream_fd is not None and not self.stream.closed:  # closed: its number may be reused
                    _write_all(self._stream_fd, data)
                elif line is not None:
                    self.stream.write(line)  # on a closed stream: ValueError, reported below
                    self.stream.flush()
            except (OSError, ValueError) as e:
                _report("stdout", e)

    log = debug = info = warn = warning = msg
    fatal = failure = err = error = critical = exception = msg

    def reopen(self) -> list[str]:
        """Reopen the log file now if it was moved; the paths of the log files (the file left in place too)."""
        with self.lock:
            if self.file is None or self._closed:
                return []
            try:
                self.file.reopen_if_moved()
            except OSError as e:
                _report(str(self.file.path), e)
            return [str(self.file.path)]

    def close(self) -> None:
        """Close the log file (not the stream: stdout is not ours)."""
        with self.lock:
            self._closed = True
            if self.file is not None:
                self.file.close()


def _file_descriptor(stream: TextIO) -> int | None:
    """The file descriptor under a real stream, after flushing what it holds; None for an in-memory one."""
    try:
        fd = stream.fileno()
        stream.flush()  # what was written before goes out before our first line
    except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation is both an OSError and a ValueError
        return None
    return fd


def _write_all(fd: int, data: bytes) -> None:
    written = os.write(fd, data)
    while written < len(data):  # a short write (a full pipe on a signal, a full disk): the rest, not a lost tail
        data = data[written:]
        written = os.write(fd, data)


def _report(output: str, error: BaseException) -> None:
    with contextlib.suppress(Exception):  # stderr itself may be gone; there is nowhere left to say it
        sys.stderr.write(f"tvbridge: a log line could not be written to {output}: {error!r}\n")


class ForeignRecordHandler(logging.Handler):
    """The root logger's handler: a record from a library's stdlib logger becomes a line on the same outputs,
    through structlog's `ProcessorFormatter` with the events' level, timestamp, exception rendering and redaction.

    It owns the outputs: closing it (a new `configure_logging`, a test's teardown) closes the log file.
    """

    def __init__(
        self, outputs: LineLogger, json_formatter: logging.Formatter | None, console_formatter: logging.Formatter | None
    ) -> None:
        self.outputs = outputs  # before the base __init__, which calls createLock
        super().__init__()
        self._json = json_formatter
        self._console = console_formatter

    def createLock(self) -> None:  # noqa: N802 - logging's name
        # the outputs' lock: one (reentrant) lock whichever path a line takes, so neither can wait on the other
        self.lock = self.outputs.lock

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self._json.format(record) if self._json is not None else None
            console = f"{self._console.format(record)}\n" if self._console is not None else None
            self.outputs.msg(line, console)
        except RecursionError:
            raise
        except Exception:  # noqa: BLE001 - logging's contract: report on stderr, never raise into the caller
            self.handleError(record)

    def close(self) -> None:
        self.outputs.close()
        super().close()


def configure_logging(
    *,
    level: str,
    fmt: str,
    file: Path | None,
    secrets: Iterable[str] = (),
    stream: TextIO | None = None,
    cache: bool = True,
) -> None:
    """Configure structlog and the root logger; call once per process, before the first event.

    Calling it again replaces the previous configuration and closes its log file. `cache=False` is for tests
    that configure logging more than once in a process; they undo it with `reset_logging()`. Raises `OSError`
    when the log file cannot be opened.
    """
    stream = stream or sys.stdout
    console = fmt == "console" or (fmt == "auto" and stream.isatty())
    redact = Redactor(secrets)
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    # Tracebacks without frame locals (they hold the secret being compared, the raw body, the request), and
    # redaction after the traceback is rendered, as the last step before the renderer: nothing gets past it.
    json_tail: list[Processor] = [
        structlog.processors.ExceptionRenderer(structlog.tracebacks.ExceptionDictTransformer(show_locals=False)),
        redact,
        JsonLine(),
    ]
    console_tail: list[Processor] = [
        structlog.processors.format_exc_info,  # plain text, no locals, and redacted below
        redact,
        structlog.dev.ConsoleRenderer(colors=False),
    ]
    render: list[Processor] = (
        [ConsoleAndJson(console_tail, json_tail if file is not None else None)] if console else json_tail
    )

    logger = LineLogger(LogFile(file) if file is not None else None, stream)  # OSError: the previous one stays
    reset_logging()  # closes the previous log file
    meta = structlog.stdlib.ProcessorFormatter.remove_processors_meta
    handler = ForeignRecordHandler(
        logger,
        json_formatter=(
            structlog.stdlib.ProcessorFormatter(foreign_pre_chain=shared, processors=[meta, *json_tail])
            if file is not None or not console
            else None
        ),
        console_formatter=(
            structlog.stdlib.ProcessorFormatter(foreign_pre_chain=shared, processors=[meta, *console_tail])
            if console
            else None
        ),
    )
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(level.upper())
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)  # our own http.request event replaces it

    def logger_factory(*_args: object) -> LineLogger:
        return logger

    structlog.configure(
        processors=[*shared, *render],
        logger_factory=logger_factory,
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelNamesMapping()[level.upper()]),
        cache_logger_on_first_use=cache,
    )


def reset_logging() -> None:
    """Undo `configure_logging`: close the log file, take the root logger's handlers away, structlog's defaults.

    For tests, and for `configure_logging` itself before it configures again.
    """
    root = logging.getLogger()
    for handler in root.handlers[:]:
        root.removeHandler(handler)
        handler.close()
    structlog.reset_defaults()


def reopen_log_files() -> list[str]:
    """SIGHUP: reopen the log file now if logrotate moved it away, so the next line goes to the new file.

    Without a signal a move is noticed anyway, before the first line written `MOVE_CHECK_S` after the previous
    check; this makes it happen now (the old file is closed at once, as `postrotate ... kill -HUP` expects). A
    file still in place is left open: nothing is lost or written twice either way. Returns the log files' paths.
    """
    reopened: list[str] = []
    for handler in logging.getLogger().handlers:
        if isinstance(handler, ForeignRecordHandler):
            reopened += handler.outputs.reopen()
    return reopened
