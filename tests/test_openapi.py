"""`GET /openapi.json`: a valid OpenAPI 3.1 document that describes exactly the routes the app serves."""

from __future__ import annotations

from typing import Any

from helpers import ClientFactory, alert
from openapi_spec_validator import validate

from tvbridge.config import Config

METHODS = {"get", "post", "put", "patch", "delete"}


async def fetch(make_client: ClientFactory, config: Config) -> tuple[dict[str, Any], set[tuple[str, str]]]:
    client = await make_client(config)
    response = await client.get("/openapi.json")
    assert response.status == 200
    assert client.app is not None
    routes = {
        (route.method.lower(), route.resource.canonical)
        for route in client.app.router.routes()
        if route.resource is not None and route.method.lower() in METHODS
    }
    document: dict[str, Any] = await response.json()
    return document, routes


async def test_the_document_is_valid_openapi(make_client: ClientFactory, config: Config) -> None:
    """openapi-spec-validator accepts the served document as OpenAPI 3.1."""
    document, _ = await fetch(make_client, config)
    assert document["openapi"].startswith("3.1")
    validate(document)


async def test_every_route_is_described_and_nothing_else(make_client: ClientFactory, config: Config) -> None:
    """Each route the app serves has an operation in the document, and the document has no other operation:
    a new endpoint without a description fails here."""
    document, routes = await fetch(make_client, config)
    described = {(method, path) for path, item in document["paths"].items() for method in item if method in METHODS}
    assert routes - described == set(), "routes missing from tvbridge/openapi.py"
    assert described - routes == set(), "operations in tvbridge/openapi.py that the app does not serve"


async def test_webhook_describes_the_alert_and_every_answer(make_client: ClientFactory, config: Config) -> None:
    """POST /webhook takes the Alert schema (JSON or text/plain) and lists every status of the contract with
    its body: results for 200/202, the error body for refusals, Retry-After on 429."""
    document, _ = await fetch(make_client, config)
    webhook = document["paths"]["/webhook"]["post"]
    assert webhook["requestBody"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Alert"}
    assert "text/plain" in webhook["requestBody"]["content"]
    assert set(webhook["responses"]) == {"200", "202", "400", "401", "403", "404", "413", "422", "429", "500", "503"}
    assert "Retry-After" in webhook["responses"]["429"]["headers"]
    schemas = document["components"]["schemas"]
    assert schemas["Alert"]["required"] == ["secret", "alertType", "order_legs"]
    assert set(schemas["Leg"]["properties"]["orderType"]["enum"]) >= {"MKT", "LMT", "SL", "SL-M"}
    assert set(alert()["order_legs"][0]) <= set(schemas["Leg"]["properties"])  # the guide's template is covered


def test_the_full_description_is_valid_too() -> None:
    """The document before it is cut to the app's routes (it also describes the market clock and the admin
    endpoints of the trading-day code) is valid OpenAPI, so no build serves an invalid one."""
    from tvbridge.openapi import full_document  # noqa: PLC0415 - only here

    document = full_document()
    validate(document)
    assert {"/market", "/admin/halt", "/admin/resume", "/admin/flatten", "/status", "/status/events"} <= set(
        document["paths"]
    )
