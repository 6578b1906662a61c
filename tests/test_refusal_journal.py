"""Refused webhook requests are kept (bounded) so the status page and `GET /alerts/<id>` can say why; 401s are
only counted; `GET /alerts/<id>` answers a page to a browser and JSON to everyone else."""

from __future__ import annotations

import base64
from typing import TYPE_CHECKING, Any

import pytest
from helpers import SECRET, alert, leg

from tvbridge import refusal_journal
from tvbridge.keys import CREDENTIALS, JOURNAL

if TYPE_CHECKING:
    from aiohttp import web
    from aiohttp.test_utils import TestClient

    Client = TestClient[web.Request, web.Application]

TYPO = "order_legs[0].quantity: must be a whole number, got 'ten'"


def bearer(client: Client) -> dict[str, str]:
    assert client.app is not None
    return {"Authorization": f"Bearer {client.app[CREDENTIALS].admin_token}"}


def basic(client: Client) -> dict[str, str]:
    assert client.app is not None
    token = client.app[CREDENTIALS].admin_token
    return {"Authorization": "Basic " + base64.b64encode(f"trader:{token}".encode()).decode()}


async def summary(client: Client) -> dict[str, Any]:
    response = await client.get("/status", headers={**bearer(client), "Accept": "application/json"})
    assert response.status == 200
    data: dict[str, Any] = await response.json()
    return data


async def test_a_refused_alert_is_listed_with_its_reason(client: Client) -> None:
    """A 422 (a typo in the Pine message), a 400 (not JSON) and an accepted alert are all on the status page, newest
    first, the refusals with their status and the reason in the words the sender was answered with."""
    typo = await client.post("/webhook", json=alert(leg(quantity="ten")))
    assert typo.status == 422
    typo_id = (await typo.json())["alert_id"]
    garbled = await client.post("/webhook", data=b"{not json", headers={"Content-Type": "text/plain"})
    assert garbled.status == 400
    ok = await (await client.post("/webhook", json=alert())).json()
    data = await summary(client)
    listed = [(a["alert_id"], a["status"], a.get("http_status"), a["reason"]) for a in data["alerts"]]
    assert listed[0] == (ok["alert_id"], "success", None, "")
    assert listed[2] == (typo_id, "refused", 422, TYPO)
    assert listed[1][1:3] == ("refused", 400)
    assert listed[1][3].startswith("body is not JSON")
    assert {(p["outcome"], p["count"]) for p in data["per_minute"]} >= {("refused", 2), ("success", 1)}


async def test_401s_are_counted_not_kept(client: Client) -> None:
    """A wrong secret is counted on the page and never journaled: an unauthenticated caller is not the trader."""
    assert (await client.post("/webhook", json=alert(secret="wrong-secret-0123456789"))).status == 401
    data = await summary(client)
    assert data["alerts"] == []
    assert data["server"]["unauthenticated"] == 1
    assert client.app is not None
    [[rows]] = await client.app[JOURNAL].fetch("SELECT count(*) FROM refusals")
    assert rows == 0


async def test_refused_alert_record_as_json_and_as_a_page(client: Client) -> None:
    """`GET /alerts/<id>` of a refused alert: JSON (Bearer) for API clients, with the errors and the payload
    without its secret; a page for a browser (Basic login, `Accept: text/html`) with the reason."""
    typo_id = (await (await client.post("/webhook", json=alert(leg(quantity="ten")))).json())["alert_id"]
    response = await client.get(f"/alerts/{typo_id}", headers=bearer(client))
    assert response.status == 200
    record = await response.json()
    assert (record["status"], record["http_status"], record["errors"]) == ("refused", 422, [TYPO])
    assert record["payload"]["order_legs"][0]["quantity"] == "ten"
    assert "secret" not in record["payload"]
    browser = {**basic(client), "Accept": "text/html,application/xhtml+xml,*/*;q=0.8"}
    page = await client.get(f"/alerts/{typo_id}", headers=browser)
    assert page.status == 200
    assert page.headers["Content-Type"].startswith("text/html")
    text = await page.text()
    assert '<strong id="outcome">refused 422</strong>' in text
    assert "order_legs[0].quantity: must be a whole number, got &#x27;ten&#x27;" in text
    assert SECRET not in text


async def test_alert_json_stays_for_api_clients(client: Client) -> None:
    """Without `text/html` preferred the answer is JSON as before, and Basic does not open it (Bearer only);
    a browser without the token gets the 401 that asks for a login."""
    sent = await (await client.post("/webhook", json=alert())).json()
    for accept in ("", "*/*", "application/json", "application/json, text/html;q=0.5"):
        response = await client.get(f"/alerts/{sent['alert_id']}", headers={**bearer(client), "Accept": accept})
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("application/json")
        assert (await response.json())["status"] == "success"
    assert (await client.get(f"/alerts/{sent['alert_id']}", headers=basic(client))).status == 401
    page = await client.get(f"/alerts/{sent['alert_id']}", headers={"Accept": "text/html"})
    assert page.status == 401
    assert page.headers["WWW-Authenticate"].startswith("Basic ")
    html = await (
        await client.get(f"/alerts/{sent['alert_id']}", headers={**basic(client), "Accept": "text/html"})
    ).text()
    assert "<th>order state</th>" in html
    assert "RELIANCE" in html


async def test_refusals_are_bounded(client: Client, monkeypatch: pytest.MonkeyPatch) -> None:
    """Only the newest `MAX_ROWS` refusals stay in the journal, and at most `MAX_WRITES_PER_S` a second are
    written (the rest counted), so a flood of bad requests costs neither disk nor the journal's writer."""
    monkeypatch.setattr(refusal_journal, "MAX_ROWS", 3)
    monkeypatch.setattr(refusal_journal, "MAX_WRITES_PER_S", 1000)
    for _ in range(5):
        assert (await client.post("/webhook", json=alert(leg(quantity="ten")))).status == 422
    assert client.app is not None
    journal = client.app[JOURNAL]
    assert [tuple(row) for row in await journal.fetch("SELECT count(*) FROM refusals")] == [(3,)]
    monkeypatch.setattr(refusal_journal, "MAX_WRITES_PER_S", 0)
    assert (await client.post("/webhook", json=alert(leg(quantity="ten")))).status == 422
    assert (await summary(client))["server"]["refusals_not_journaled"] == 1
