"""The admin token, wherever it opens something: `GET /alerts/<id>`, `POST /admin/halt` and `/admin/resume`
(Bearer), `GET /status` and `GET /metrics` with `metrics.require_token` (Bearer, or Basic's password); and the
two values the status page derives from it: the event stream's `key` and the controls' CSRF token.

Only the exact token opens them: a token with something after it, one character short, with a changed character,
or only its beginning is a 401 and changes nothing, so a compare that checks a prefix (or lets a prefix pass)
fails here.
"""

from __future__ import annotations

import base64
import re
from typing import TYPE_CHECKING

import attrs
from helpers import alert, leg

from tvbridge.config import MetricsConfig

if TYPE_CHECKING:
    from aiohttp import web
    from aiohttp.test_utils import TestClient
    from helpers import ClientFactory

    from tvbridge.config import Config

ADMIN_TOKEN = "admin-token-0123456789abcdef"


def near_misses(value: str) -> dict[str, str]:
    return {
        "one character more": value + "0",
        "anything after it": value + "-and-more",
        "one character less": value[:-1],
        "last character changed": value[:-1] + chr(ord(value[-1]) ^ 1),
        "first character changed": chr(ord(value[0]) ^ 1) + value[1:],
        "only a prefix": value[:8],
        "a single character": value[0],
    }


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def basic(token: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"operator:{token}".encode()).decode()}


async def admin_client(make_client: ClientFactory, config: Config) -> TestClient[web.Request, web.Application]:
    server = attrs.evolve(config.server, admin_token=ADMIN_TOKEN)
    return await make_client(attrs.evolve(config, server=server, metrics=MetricsConfig(require_token=True)))


async def test_an_admin_token_that_is_almost_right_reads_nothing(make_client: ClientFactory, config: Config) -> None:
    """`GET /alerts/<id>`, `/status` and `/metrics` answer 401 to every near miss, as Bearer and as Basic's
    password; the exact token reads them."""
    client = await admin_client(make_client, config)
    alert_id = (await (await client.post("/webhook", json=alert())).json())["alert_id"]
    reads = [(f"/alerts/{alert_id}", [bearer]), ("/status", [bearer, basic]), ("/metrics", [bearer, basic])]
    for path, schemes in reads:
        for scheme in schemes:
            for name, guess in near_misses(ADMIN_TOKEN).items():
                response = await client.get(path, headers=scheme(guess))
                assert response.status == 401, (path, scheme.__name__, name)
                assert alert_id not in await response.text(), (path, name)
            assert (await client.get(path, headers=scheme(ADMIN_TOKEN))).status == 200, (path, scheme.__name__)


async def test_an_admin_token_that_is_almost_right_cannot_halt_or_resume(
    make_client: ClientFactory, config: Config
) -> None:
    """`POST /admin/halt` and `/admin/resume` answer 401 to every near miss and trading stays as it was: alerts
    are still placed after the refused halts, still refused after the refused resumes."""
    client = await admin_client(make_client, config)
    for name, guess in near_misses(ADMIN_TOKEN).items():
        assert (await client.post("/admin/halt", headers=bearer(guess))).status == 401, name
    assert (await client.post("/webhook", json=alert())).status == 200
    assert (await client.post("/admin/halt", headers=bearer(ADMIN_TOKEN))).status == 200
    for name, guess in near_misses(ADMIN_TOKEN).items():
        assert (await client.post("/admin/resume", headers=bearer(guess))).status == 401, name
    response = await client.post("/webhook", json=alert(leg(symbol="INFY")))  # not a duplicate of the first
    assert response.status == 503
    assert (await response.json())["message"].startswith("trading halted")


async def test_an_admin_token_with_spaces_and_colons_opens_as_configured(
    make_client: ClientFactory, config: Config
) -> None:
    """A passphrase token (spaces, a colon) is the whole token: after the scheme's one space for Bearer, after
    the user name's colon for Basic; the same token cut at its last space or colon is a 401."""
    token = "correct horse: battery staple"
    server = attrs.evolve(config.server, admin_token=token)
    client = await make_client(attrs.evolve(config, server=server, metrics=MetricsConfig(require_token=True)))
    for scheme in (bearer, basic):
        assert (await client.get("/status", headers=scheme(token))).status == 200, scheme.__name__
        assert (await client.get("/status", headers=scheme("battery staple"))).status == 401, scheme.__name__
        assert (await client.get("/status", headers=scheme(" battery staple"))).status == 401, scheme.__name__


async def test_basic_credentials_with_bytes_outside_base64_are_a_401(
    make_client: ClientFactory, config: Config
) -> None:
    """Basic's credentials must be strict base64: the right token with stray characters mixed into its encoding
    (which a lenient decoder would skip) is a 401; the clean encoding opens `/status`."""
    client = await admin_client(make_client, config)
    encoded = base64.b64encode(f"operator:{ADMIN_TOKEN}".encode()).decode()
    for stray in ("!", "*", "-", "_", "."):
        mixed = encoded[:8] + stray + encoded[8:]
        assert (await client.get("/status", headers={"Authorization": f"Basic {mixed}"})).status == 401, stray
    assert (await client.get("/status", headers={"Authorization": f"Basic {encoded}"})).status == 200


async def test_the_status_streams_key_and_the_csrf_token_take_no_near_miss(
    make_client: ClientFactory, config: Config
) -> None:
    """The page's event stream (`/status/events?key=`, opened by the browser without a header) answers 401 to
    every near miss of its key, and its controls (`POST /status/actions/halt`, with the admin token) answer 403
    to every near miss of the CSRF token, trading staying open; the exact values open the stream and halt."""
    client = await admin_client(make_client, config)
    page = await (await client.get("/status", headers=bearer(ADMIN_TOKEN))).text()
    key = page.split("/status/events?key=", 1)[1].split('"', 1)[0]
    found = re.search(r'const CSRF = "([0-9a-f]{64})";', page)
    assert found is not None
    csrf = found.group(1)
    for name, guess in near_misses(key).items():
        async with client.get("/status/events", params={"key": guess}) as response:
            assert response.status == 401, name
    for name, guess in near_misses(csrf).items():
        headers = {**bearer(ADMIN_TOKEN), "X-CSRF-Token": guess}
        response = await client.post("/status/actions/halt", json={"reason": "x"}, headers=headers)
        assert response.status == 403, name
    assert (await client.post("/webhook", json=alert())).status == 200
    async with client.get("/status/events", params={"key": key}) as response:
        assert response.status == 200
    halted = await client.post(
        "/status/actions/halt", json={"reason": "x"}, headers={**bearer(ADMIN_TOKEN), "X-CSRF-Token": csrf}
    )
    assert halted.status == 200
    assert (await client.post("/webhook", json=alert(leg(symbol="INFY")))).status == 503
