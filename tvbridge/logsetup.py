"""Logging, configured once by the CLI: structlog events rendered through the standard library's handlers.

The log file always gets one JSON object per line (what a collector tails); stdout gets a human console format
on a terminal and JSON otherwise (`logging.format`). The file handler is a `WatchedFileHandler`, so logrotate's
move-and-create is followed without a signal. Keys that name secrets, and the configured secret values
themselves wherever they appear, are replaced before anything is rendered.
"""

from __future__ import annotations

import logging
import logging.handlers
import sys
from typing import TYPE_CHECKING, Any, Final

import structlog

from tvbridge.config import is_secret_key

if TYPE_CHECKING:
    from collections.abc import Iterable
    from pathlib import Path

    from structlog.typing import EventDict, Processor, WrappedLogger

REDACTED: Final = "[redacted]"


class Redactor:
    """A structlog processor that removes secrets by key and by value."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self.secrets = [s for s in secrets if s]

    def __call__(self, _logger: WrappedLogger, _name: str, event_dict: EventDict) -> EventDict:
        return {key: self._clean(key, value) for key, value in event_dict.items()}

    def _clean(self, key: str, value: Any) -> Any:
        if is_secret_key(key):
            return REDACTED
        if isinstance(value, str):
            for secret in self.secrets:
                if secret in value:
                    value = value.replace(secret, REDACTED)
            return value
        if isinstance(value, dict):
            return {k: self._clean(k, v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self._clean("", v) for v in value]
        return value


class RenderOnceFormatter(structlog.stdlib.ProcessorFormatter):
    """Renders a record once, however many handlers (file, stdout) share this formatter."""

    def format(self, record: logging.LogRecord) -> str:
        line: str | None = getattr(record, "_tvbridge_json", None)
        if line is None:
            line = super().format(record)
            record._tvbridge_json = line  # noqa: SLF001 - our own cache attribute on the record
        return line


def configure_logging(
    *,
    level: str,
    fmt: str,
    file: Path | None,
    secrets: Iterable[str] = (),
    stream: Any = None,
    cache: bool = True,
) -> None:
    """Configure structlog and the root logger; call once per process, before the first event.

    `cache=False` is for tests that configure logging more than once in a process.
    """
    stream = stream or sys.stdout
    redact = Redactor(secrets)
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    # Tracebacks without frame locals (they hold the secret being compared, the raw body, the request), and
    # redaction after the traceback is rendered, as the last step before the renderer: nothing gets past it.
    json_formatter = RenderOnceFormatter(
        foreign_pre_chain=shared,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.ExceptionRenderer(structlog.tracebacks.ExceptionDictTransformer(show_locals=False)),
            redact,
            structlog.processors.JSONRenderer(),
        ],
    )
    console = fmt == "console" or (fmt == "auto" and stream.isatty())
    stream_formatter = (
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,  # plain text, no locals, and redacted below
                redact,
                structlog.dev.ConsoleRenderer(colors=False),
            ],
        )
        if console
        else json_formatter
    )
    handlers: list[logging.Handler] = []
    stream_handler = logging.StreamHandler(stream)
    stream_handler.setFormatter(stream_formatter)
    handlers.append(stream_handler)
    if file is not None:
        file.parent.mkdir(parents=True, exist_ok=True)
        file_handler = logging.handlers.WatchedFileHandler(file, encoding="utf-8")
        file_handler.setFormatter(json_formatter)
        handlers.append(file_handler)

    root = logging.getLogger()
    for old in root.handlers[:]:
        root.removeHandler(old)
        old.close()
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level.upper())
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)  # our own http.request event replaces it

    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelNamesMapping()[level.upper()]),
        cache_logger_on_first_use=cache,
    )


def reopen_log_files() -> list[str]:
    """SIGHUP: reopen every log file that logrotate moved away, so the next line goes to the new file.

    `WatchedFileHandler` notices a move by itself before each line; this makes the reopen happen now (the old
    file is closed at once, as `postrotate ... kill -HUP` expects). A file still in place is left open: nothing
    is lost or written twice either way.
    """
    reopened: list[str] = []
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.handlers.WatchedFileHandler):
            handler.reopenIfNeeded()
            reopened.append(handler.baseFilename)
    return reopened
