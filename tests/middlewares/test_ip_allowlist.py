"""The IP allowlist: who the client really is behind trusted proxies, and who may call the webhook."""

from __future__ import annotations

import ipaddress
from typing import Any

import attrs
import pytest
from helpers import ClientFactory, alert
from structlog.contextvars import merge_contextvars
from structlog.testing import capture_logs

from tvbridge.addresses import client_address, parse_networks
from tvbridge.config import TRADINGVIEW_IPS, Config, IpAllowlistConfig
from tvbridge.errors import ConfigError

TRADINGVIEW = "52.89.214.238"
PROXIES = parse_networks(["10.0.0.0/8", "127.0.0.1"])


def allowlist(config: Config, **overrides: Any) -> Config:
    return attrs.evolve(config, ip_allowlist=attrs.evolve(IpAllowlistConfig(enabled=True), **overrides))


@pytest.mark.parametrize(
    ("peer", "headers", "expected"),
    [
        ("203.0.113.9", ["52.89.214.238"], "203.0.113.9"),  # untrusted peer: its header is ignored
        ("10.0.0.2", [], "10.0.0.2"),  # a trusted proxy that says nothing is the client itself
        ("10.0.0.2", ["52.89.214.238"], "52.89.214.238"),
        ("10.0.0.2", ["1.1.1.1, 52.89.214.238, 10.0.0.5"], "52.89.214.238"),  # trusted hops skipped
        ("10.0.0.2", ["52.89.214.238, 203.0.113.9"], "203.0.113.9"),  # the rightmost untrusted hop wins
        ("10.0.0.2", ["52.89.214.238", "203.0.113.9"], "203.0.113.9"),  # header lines read as one list
        ("10.0.0.2", ["10.0.0.7, 10.0.0.5"], "10.0.0.7"),  # all trusted: the leftmost
        ("10.0.0.2", ["52.89.214.238:4711"], "52.89.214.238"),  # a port is dropped
        ("10.0.0.2", ["[2001:db8::1]:443"], "2001:db8::1"),
        ("::ffff:10.0.0.2", ["::ffff:52.89.214.238"], "52.89.214.238"),  # IPv4-mapped is IPv4
    ],
)
def test_client_address(peer: str, headers: list[str], expected: str) -> None:
    """X-Forwarded-For counts only from a trusted peer, read right to left past trusted hops."""
    address, _how = client_address(peer, headers, PROXIES)
    assert address == ipaddress.ip_address(expected)


def test_garbage_in_the_header_means_unknown() -> None:
    """A hop that is not an address, before any untrusted hop, leaves the client unknown."""
    assert client_address("10.0.0.2", ["52.89.214.238, nonsense"], PROXIES)[0] is None
    assert client_address("10.0.0.2", ["nonsense, 52.89.214.238"], PROXIES)[0] == ipaddress.ip_address(TRADINGVIEW)


async def test_spoofed_header_from_an_untrusted_peer_is_refused(make_client: ClientFactory, config: Config) -> None:
    """A caller that writes TradingView's address into X-Forwarded-For itself is still refused (403)."""
    client = await make_client(allowlist(config))
    with capture_logs(processors=[merge_contextvars]) as events:
        response = await client.post("/webhook", json=alert(), headers={"X-Forwarded-For": TRADINGVIEW})
    body = await response.json()
    assert response.status == 403
    assert body["message"] == "source address 127.0.0.1 is not allowed"
    [refusal] = [e for e in events if e["event"] == "ip_allowlist.refused"]
    assert refusal["source"] == "127.0.0.1"
    assert refusal["reason"]
    assert refusal["alert_id"] == body["alert_id"]


async def test_same_header_from_a_trusted_proxy_is_believed(make_client: ClientFactory, config: Config) -> None:
    """Behind a trusted proxy the forwarded address is the client: TradingView's address gets through."""
    client = await make_client(allowlist(config, trusted_proxies=("127.0.0.1/32",)))
    with capture_logs() as events:
        response = await client.post("/webhook", json=alert(), headers={"X-Forwarded-For": TRADINGVIEW})
    assert response.status == 200
    [access] = [e for e in events if e["event"] == "http.request"]
    assert access["source"] == TRADINGVIEW


async def test_client_prepended_address_behind_a_proxy_is_refused(make_client: ClientFactory, config: Config) -> None:
    """Behind the proxy, a client that prepends TradingView's address is judged by its own (rightmost) one."""
    client = await make_client(allowlist(config, trusted_proxies=("127.0.0.1/32",)))
    response = await client.post("/webhook", json=alert(), headers={"X-Forwarded-For": f"{TRADINGVIEW}, 203.0.113.9"})
    assert response.status == 403
    assert (await response.json())["message"] == "source address 203.0.113.9 is not allowed"


async def test_off_by_default_but_the_source_is_still_found(make_client: ClientFactory, config: Config) -> None:
    """The first-run config has no allowlist; with trusted proxies set the logs still name the real client."""
    assert config.ip_allowlist.enabled is False
    assert config.ip_allowlist.allow == TRADINGVIEW_IPS
    config = attrs.evolve(config, ip_allowlist=IpAllowlistConfig(trusted_proxies=("127.0.0.1",)))
    client = await make_client(config)
    with capture_logs() as events:
        response = await client.post("/webhook", json=alert(), headers={"X-Forwarded-For": "198.51.100.4"})
    assert response.status == 200
    assert {e["source"] for e in events if e["event"] == "http.request"} == {"198.51.100.4"}


async def test_other_routes_are_not_guarded(make_client: ClientFactory, config: Config) -> None:
    """The allowlist protects the webhook only: a monitor may still read /health."""
    client = await make_client(allowlist(config))
    assert (await client.get("/health")).status == 200


async def test_a_cidr_on_the_list_admits_its_addresses(make_client: ClientFactory, config: Config) -> None:
    """`allow` takes networks as well as addresses."""
    client = await make_client(allowlist(config, allow=("127.0.0.0/8",)))
    assert (await client.post("/webhook", json=alert())).status == 200


def test_a_bad_entry_stops_the_start(converter: object, tmp_path: object) -> None:
    """A typo in `allow` or `trusted_proxies` is a config error, not an open door."""
    from tvbridge.config import load_config  # noqa: PLC0415 - only this test loads config by itself
    from tvbridge.parsing import make_converter  # noqa: PLC0415

    env = {"TVBRIDGE_IP_ALLOWLIST__ALLOW": '["52.89.214.238", "52.89.214"]'}
    with pytest.raises(ConfigError, match=r"ip_allowlist: allow: '52.89.214' is not an IP address"):
        load_config(None, make_converter(), env, tmp_path)  # type: ignore[arg-type]  # tmp_path is a Path
