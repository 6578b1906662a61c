"""The errors middleware: one shape for every error answer, and no details of a bug."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from tvbridge.errors import RateLimitedError
from tvbridge.middlewares.errors import errors
from tvbridge.middlewares.request_id import request_id


def tiny_app(handler: Any) -> web.Application:
    app = web.Application(middlewares=[request_id(), errors()])
    app.router.add_post("/x", handler)
    return app


async def test_a_bug_is_500_without_details(aiohttp_client: Any) -> None:
    async def broken(_: web.Request) -> web.Response:
        raise RuntimeError("internal detail: /etc/secret-path")

    client = await aiohttp_client(tiny_app(broken))
    response = await client.post("/x")
    body = await response.json()
    assert response.status == 500
    assert body == {
        "status": "error",
        "message": "internal error: see the server log for this alert id",
        "alert_id": response.headers["X-Request-ID"],
    }
    assert "secret-path" not in await response.text()


async def test_rate_limited_answers_carry_retry_after(aiohttp_client: Any) -> None:
    async def limited(_: web.Request) -> web.Response:
        raise RateLimitedError("rate limited", retry_after_s=2.2)

    client = await aiohttp_client(tiny_app(limited))
    response = await client.post("/x")
    assert response.status == 429
    assert response.headers["Retry-After"] == "3"


async def test_aiohttp_errors_get_the_same_shape(aiohttp_client: Any) -> None:
    async def ok(_: web.Request) -> web.Response:
        return web.Response()

    client = await aiohttp_client(tiny_app(ok))
    response = await client.get("/x")
    assert response.status == 405
    assert (await response.json())["message"] == "Method Not Allowed"
