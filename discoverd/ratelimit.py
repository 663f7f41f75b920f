"""Per-client token buckets for `/new`: a burst is throttled with 429 + Retry-After, never broken.

Two limits, each a token bucket. The rate limit keys clients by address (IPv6 clients by their
/64, since one host usually owns a whole /64). The hourly cap keys them by network, a /24 for
IPv4 and a /64 for IPv6, so that a host with many addresses (60 loopback addresses, a cloud
subnet) cannot multiply its share: at most `per_hour` tokens per network per hour, refilled
evenly. The tables are bounded: the least recently seen client is forgotten first.
"""

from __future__ import annotations

import ipaddress
import math
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence

from discoverd.errors import RateLimited

MAX_CLIENTS = 100_000
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class RateLimiter:
    """`rate` requests per second per client, with bursts of up to `burst`; rate 0 = off."""

    def __init__(
        self,
        rate: float,
        burst: int,
        clock: Callable[[], float] = time.monotonic,
        max_clients: int = MAX_CLIENTS,
        trusted_proxies: Sequence[str] = (),
        *,
        per_hour: int = 0,
    ) -> None:
        self.rate = rate
        self.burst = burst
        self.per_hour = per_hour
        self.trusted = tuple(ipaddress.ip_network(net) for net in trusted_proxies)
        self._clock = clock
        self._max_clients = max_clients
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()
        self._networks: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def check(self, address: str | None) -> None:
        """Take one token for `address` from both limits, or raise RateLimited with the
        seconds to wait (then neither limit is charged)."""
        now = self._clock()
        limits = []
        if self.rate > 0:
            limits.append((self._buckets, client_key(address), self.rate, float(self.burst),
                           "from this address"))  # fmt: skip
        if self.per_hour > 0:
            limits.append((self._networks, network_key(address), self.per_hour / 3600,
                           float(self.per_hour), "from this network this hour"))  # fmt: skip
        taken: list[tuple[OrderedDict[str, tuple[float, float]], str]] = []
        for table, key, rate, burst, what in limits:
            tokens, last = table.pop(key, (burst, now))
            tokens = min(burst, tokens + (now - last) * rate)
            if tokens < 1.0:
                table[key] = (tokens, now)
                for undo_table, undo_key in taken:  # refund the limit already charged
                    left, when = undo_table[undo_key]
                    undo_table[undo_key] = (left + 1.0, when)
                retry_after = (1.0 - tokens) / rate
                raise RateLimited(
                    f"too many new tokens {what}; retry in {math.ceil(retry_after)}s",
                    retry_after=retry_after,
                )
            table[key] = (tokens - 1.0, now)
            taken.append((table, key))
            while len(table) > self._max_clients:
                table.popitem(last=False)


def client_address(
    peer: str | None, forwarded: str | None, trusted: Sequence[IPNetwork]
) -> str | None:
    """The client's address: the peer, or, when the peer is a trusted proxy, the nearest
    untrusted address of X-Forwarded-For (read from the right: the left is the client's own
    claim and can be forged)."""
    if not peer or not forwarded or not _within(peer, trusted):
        return peer
    for hop in reversed([part.strip() for part in forwarded.split(",") if part.strip()]):
        if not _within(hop, trusted):
            return hop
    return peer


def _within(address: str, networks: Sequence[IPNetwork]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in net for net in networks)


def client_key(address: str | None) -> str:
    if not address:
        return "unknown"
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if ip.version == 6:
        mapped = ip.ipv4_mapped
        if mapped is not None:
            return str(mapped)
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


def network_key(address: str | None) -> str:
    """The network a client's hourly cap is counted on: its /24 (IPv4) or /64 (IPv6)."""
    key = client_key(address)
    try:
        network = ipaddress.ip_network(key, strict=False)
    except ValueError:
        return key
    if network.version == 4:
        return str(ipaddress.ip_network(f"{network.network_address}/24", strict=False))
    return str(network)
