"""Client addresses: parsing them as proxies write them, finding the real client behind trusted proxies, and
the key per-address limits count by.

Shared by `middlewares.ip_allowlist` (the allowlist and `request[SOURCE_IP]`), `middlewares.rate_limit`,
`connections` (caps per address) and `refusals` (log sampling per address), so all of them agree on what one
source is: an IPv4 address, or an IPv6 network of `limits.ipv6_prefix` bits.
"""

from __future__ import annotations

import functools
import ipaddress
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(entries: Iterable[str]) -> tuple[IPNetwork, ...]:
    """Addresses and CIDRs as networks (a lone address is a /32 or /128); config has validated them."""
    return tuple(ipaddress.ip_network(entry.strip(), strict=False) for entry in entries)


@functools.lru_cache(maxsize=4096)
def parse_address(text: str) -> IPAddress | None:
    """An address as proxies write it (`1.2.3.4`, `1.2.3.4:5678`, `[2001:db8::1]:443`); None if it is none.

    Cached: it runs for every request, and the addresses that call are few (TradingView's four, a proxy)."""
    text = text.strip().strip('"')
    if text.startswith("["):
        text = text[1:].partition("]")[0]
    elif text.count(":") == 1:
        text = text.partition(":")[0]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def contains(networks: Sequence[IPNetwork], address: IPAddress) -> bool:
    return any(address in network for network in networks)


@functools.lru_cache(maxsize=4096)
def source_key(address: IPAddress, ipv6_prefix: int) -> str:
    """What per-address limits count by: an IPv4 address, or the IPv6 network of `ipv6_prefix` bits around
    it (`limits.ipv6_prefix`): one IPv6 host usually owns a whole /64 and can pick any address in it."""
    if isinstance(address, ipaddress.IPv6Address):
        return str(ipaddress.IPv6Network((address, ipv6_prefix), strict=False))
    return str(address)


def source_key_of(text: str, ipv6_prefix: int) -> str:
    """`source_key` of an address as text; the text itself when it is no address (it is counted as given)."""
    address = parse_address(text)
    return text if address is None else source_key(address, ipv6_prefix)


def client_address(
    peer: str | None, forwarded_for: Sequence[str], trusted: Sequence[IPNetwork]
) -> tuple[IPAddress | None, str]:
    """The real client address and how it was found (a log reason); None when it cannot be known.

    `forwarded_for` is every `X-Forwarded-For` header line, in order; they read as one list.
    """
    address = parse_address(peer or "")
    if address is None:
        return None, "the TCP peer has no IP address"
    if not trusted or not contains(trusted, address):
        return address, "tcp peer"
    hops = [hop for line in forwarded_for for hop in line.split(",") if hop.strip()]
    if not hops:
        return address, "trusted proxy sent no X-Forwarded-For"
    for hop in reversed(hops):
        hop_address = parse_address(hop)
        if hop_address is None:
            return None, "X-Forwarded-For holds something that is not an IP address"
        if not contains(trusted, hop_address):
            return hop_address, "X-Forwarded-For, rightmost untrusted hop"
        address = hop_address
    return address, "X-Forwarded-For, every hop a trusted proxy: the leftmost"
