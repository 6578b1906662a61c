"""Turning cattrs' validation errors into the lines people read: `path: message`, one per problem.

Shared by the alert parser (422 bodies) and the config loader (the one line printed when the start is
refused), so both speak the same way.
"""

from __future__ import annotations

import cattrs
from cattrs.errors import ClassValidationError, ForbiddenExtraKeysError, IterableValidationError


def format_exception(exc: BaseException, type_: type | None) -> str:
    """Our hooks raise ValueErrors whose text is written for the reader: use it as it is."""
    if isinstance(exc, KeyError):
        return "required field missing"
    if isinstance(exc, ForbiddenExtraKeysError):
        return f"unknown keys: {', '.join(sorted(exc.extra_fields))}"
    if isinstance(exc, ValueError | TypeError) and str(exc):
        return str(exc)
    return cattrs.v.format_exception(exc, type_)


def validation_messages(exc: BaseException, root: str) -> list[str]:
    """`path: message` lines; `root` names the top level (`alert`, `(top level)`)."""
    if isinstance(exc, ClassValidationError | IterableValidationError):
        lines = cattrs.transform_error(exc, path="", format_exception=format_exception)
    else:
        lines = [f"{format_exception(exc, None)} @ "]
    out = []
    for line in lines:
        message, _, where = line.rpartition(" @ ")
        out.append(f"{where.lstrip('.') or root}: {message}")
    return out
