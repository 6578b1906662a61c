"""Cutting text that came from outside to a bounded length before it is echoed in an answer or a log line.

Issue 23: a value a client sent (a path, a field, a bad header) must not let one request write kilobytes into
the log or an error body; what is cut says how much was left out.
"""

from __future__ import annotations

from typing import Final

ECHO_LIMIT: Final = 200
"""Characters of an outside value kept in an answer or a log line."""


def bounded(text: str, limit: int = ECHO_LIMIT) -> str:
    """`text` when it is at most `limit` characters, else its start and how many characters were cut."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}...[{len(text) - limit} more characters]"
