"""Step 3: bound the body's size and the time a client may take to send it.

A declared `Content-Length` over `limits.max_body_bytes` is refused before anything is read; a chunked body is
read only until it passes the limit. A client that sends too slowly is cut off after `limits.read_timeout_s`.
A body that does not decode as its `Content-Encoding` says (gzip with garbage), or whose connection is lost
midway, is a 400 like any other bad body, counted against its source (issue 23: it was a 500).
The bytes are kept for later steps (`body_of`), so the body is read once.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Final

import structlog
from aiohttp import web
from aiohttp.web_protocol import RequestPayloadError

from tvbridge.errors import BadRequestError, PayloadTooLargeError
from tvbridge.refusals import should_log

if TYPE_CHECKING:
    from tvbridge.config import LimitsConfig

BODY: Final = web.RequestKey[bytes]("body")
log = structlog.get_logger()


def body_of(request: web.Request) -> bytes:
    body: bytes = request.get(BODY, b"")
    return body


async def read_limited(request: web.Request, limit: int) -> bytes:
    if request.content_length is not None and request.content_length > limit:
        if should_log(request, 413):
            log.warning("body_limit.refused", reason="declared Content-Length over the limit", limit=limit)
        raise PayloadTooLargeError(f"body too large: {request.content_length} bytes, the limit is {limit}")
    chunks: list[bytes] = []
    size = 0
    while chunk := await request.content.read(65536):
        size += len(chunk)
        if size > limit:
            if should_log(request, 413):
                log.warning("body_limit.refused", reason="body over the limit while reading", limit=limit)
            raise PayloadTooLargeError(f"body too large: over {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def read_body(config: LimitsConfig, request: web.Request) -> None:
    """Read the whole body within the limits into `BODY` (see the module docstring), or refuse (413, 400)."""
    try:
        if request.content.is_eof():  # the whole body came with the headers (an alert's usual ~600 bytes):
            request[BODY] = await read_limited(request, config.max_body_bytes)  # read without waiting: no timer
            return
        async with asyncio.timeout(config.read_timeout_s):
            request[BODY] = await read_limited(request, config.max_body_bytes)
    except TimeoutError:
        if should_log(request, 400):
            log.warning("body_limit.refused", reason="body not received in time")
        raise BadRequestError(f"body not received within {config.read_timeout_s} s") from None
    except RequestPayloadError:
        # a body that does not decode as its Content-Encoding says (gzip with garbage), or a broken chunk
        if should_log(request, 400):
            log.warning("body_limit.refused", reason="body does not decode")
        raise BadRequestError("body could not be read: it does not match its Content-Encoding") from None
    except ConnectionError:
        if should_log(request, 400):
            log.warning("body_limit.refused", reason="connection closed before the body was sent")
        raise BadRequestError("connection closed before the whole body was sent") from None
