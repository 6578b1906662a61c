"""The admin token on read-only operator endpoints (`/metrics`, `/status`): as a Bearer token, or as the
password of HTTP Basic auth (any user name), so a browser's login prompt and Prometheus' `authorization` both
work. Compared in constant time. The webhook secret never opens these endpoints.
"""

from __future__ import annotations

import base64
import hmac
from typing import TYPE_CHECKING

from tvbridge.keys import CREDENTIALS

if TYPE_CHECKING:
    from aiohttp import web


def presented_token(request: web.Request) -> str | None:
    """The token in `Authorization` (Bearer, or Basic's password), or None."""
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "bearer":
        return value.strip()
    if scheme.lower() == "basic":
        try:
            decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
        except ValueError:  # not base64 (binascii.Error), not ASCII, not UTF-8 inside: not the token
            return None
        return decoded.partition(":")[2]
    return None


def has_admin_token(request: web.Request) -> bool:
    expected = request.app[CREDENTIALS].admin_token
    given = presented_token(request)
    if not expected or given is None:
        return False
    return same_token(given, expected)


def same_token(given: str, expected: str) -> bool:
    """Constant-time comparison of text as the client sent it: header bytes that are not UTF-8 reach us as
    lone surrogates (aiohttp decodes with `surrogateescape`), which `surrogatepass` encodes instead of raising,
    so odd bytes are a wrong token (401), never a 500."""
    return hmac.compare_digest(given.encode("utf-8", "surrogatepass"), expected.encode("utf-8", "surrogatepass"))
