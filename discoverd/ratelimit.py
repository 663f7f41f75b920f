"""Per-client token buckets for `/new`: a burst is throttled with 429 + Retry-After, never broken.

Clients are keyed by address; IPv6 clients by their /64, since one host usually owns a whole
/64. The table is bounded: the least recently seen client is forgotten first.
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
    ) -> None:
        self.rate = rate
        self.burst = burst
        self.trusted = tuple(ipaddress.ip_network(net) for net in trusted_proxies)
        self._clock = clock
        self._max_clients = max_clients
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def check(self, address: str | None) -> None:
        """Take one token for `address`, or raise RateLimited with the seconds to wait."""
        if self.rate <= 0:
            return
        key = client_key(address)
        now = self._clock()
        tokens, last = self._buckets.pop(key, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - last) * self.rate)
        if tokens < 1.0:
            self._buckets[key] = (tokens, now)
            retry_after = (1.0 - tokens) / self.rate
            raise RateLimited(
                f"too many new tokens from this address; retry in {math.ceil(retry_after)}s",
                retry_after=retry_after,
            )
        self._buckets[key] = (tokens - 1.0, now)
        while len(self._buckets) > self._max_clients:
            self._buckets.popitem(last=False)


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
